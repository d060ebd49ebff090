"""Inference speed and memory, in one run: x4 super-resolution of a 256x256 and a 1024x1024
input, the way most SRGAN repos run it against this project's test_image.py path.

    python benchmarks/bench_inference.py                 # a few minutes on a 2-core CPU
    python benchmarks/bench_inference.py --weight weights/srresnet_x4.pth --sizes 256

(a) baseline: the unfused Generator, fp32, NCHW, whole image in one forward, torch.no_grad();
(b) this project: test_image.py's path: BatchNorm folded into the convolutions, channels_last,
    bf16 autocast where the CPU/GPU has it (--amp auto), the default tiles and overlap.
Inputs are bicubic downscales (utils.downscale) of HR mosaics cut from skimage's sample photos,
so both outputs are also measured against the HR (PSNR-Y, border 4). Each input size runs in a
fresh subprocess that alternates (a) and (b) (best of --repeat each, so both see the same load
on a shared machine) and reads its peak resident memory (the whole process) after (b)'s first
run and after (a)'s. Generator: weights/srresnet_x4.pth when it exists (or --weight), else
random init.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402
from model import Generator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 4
REALISTIC = os.path.join(ROOT, 'weights', 'srresnet_x4.pth')


def hr_mosaic(size: int, crop: int = 128) -> torch.Tensor:
    """A (3, size, size) HR image tiled with crop x crop patches of skimage's colour photos
    (size: a multiple of `crop`)."""
    from skimage import data
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(),
              data.hubble_deep_field(), data.retina(), data.stereo_motorcycle()[0]]
    crops = [p[t:t + crop, l:l + crop] for p in photos
             for t in range(0, p.shape[0] - crop + 1, crop)
             for l in range(0, p.shape[1] - crop + 1, crop)]
    n = size // crop
    rows = [np.concatenate([crops[(r * n + c) % len(crops)] for c in range(n)], axis=1)
            for r in range(n)]
    return torch.from_numpy(np.concatenate(rows, axis=0).copy()).permute(2, 0, 1).float() / 255


def generator(weight: str) -> tuple:
    """(Generator, description) from `weight`, or random init when there is none."""
    if weight:
        g = utils.load_generator(weight, SCALE)
        return g, f'weights from {weight}'
    torch.manual_seed(0)
    return Generator(SCALE).eval(), 'RANDOM INIT (no weights/srresnet_x4.pth): speed is ' \
                                    'representative, PSNR against HR is not'


def conv_flops_per_pixel(g: Generator) -> float:
    """FLOPs of one forward per LR pixel (convolutions; 2 per multiply-add), counted by
    torch.utils.flop_counter on a 32x32 input: conv work is linear in the pixel count."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        g(torch.rand(1, 3, 32, 32))
    return counter.get_total_flops() / (32 * 32)


# ---------------------------------------------------------------------------------------------
# One measurement, in a child process
# ---------------------------------------------------------------------------------------------

def project_tile(size: int, dtype) -> int:
    """The tile test_image.py picks for a size x size input on the CPU (0 = whole image)."""
    largest = utils.max_tile(SCALE, torch.device('cpu'), dtype)
    return utils.pick_tile(size, size, largest, utils.TILE_OVERLAP)


def proc_bytes(path: str, key: str) -> int:
    """A '<key>: N kB' entry of a /proc file, in bytes; 0 where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """Bytes: this process's peak resident set. Linux's VmHWM, which starts afresh at exec;
    getrusage's ru_maxrss (the fallback) keeps the parent's peak from before the fork."""
    return (proc_bytes('/proc/self/status', 'VmHWM')
            or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # KiB on Linux


def child(size: int, weight: str, repeat: int, with_a: bool, out_dir: str) -> dict:
    """Time (b) and, if with_a, (a) on one input size, alternating their runs so that both
    see the same machine load; save the outputs as uint8 .npy files in out_dir.

    (b) runs first at full size, so the peak RSS read after it is (b)'s alone."""
    g, _ = generator(weight)
    lr = utils.downscale(hr_mosaic(size * SCALE), SCALE)
    dtype = utils.autocast_dtype('auto', torch.device('cpu'))
    model = utils.inference_model(g, torch.device('cpu'))
    tile = project_tile(size, dtype)

    def run_a(x):
        with torch.no_grad():
            return g(x[None])[0]

    def run_b(x):
        return utils.super_resolve(model, x, SCALE, tile, utils.TILE_OVERLAP, dtype)

    methods = {'b': run_b, **({'a': run_a} if with_a else {})}
    for run in methods.values():  # one-time set-up (oneDNN primitives) is not measured
        run(lr[:, :64, :64])
    result = {'tile': tile, 'precision': 'bf16' if dtype else 'fp32'}
    times = {name: [] for name in methods}
    for round_ in range(repeat):
        for name, run in methods.items():
            start = time.perf_counter()
            sr = run(lr)
            times[name].append(time.perf_counter() - start)
            if round_ == 0:
                result[f'rss_{name}'] = peak_rss()
                np.save(os.path.join(out_dir, f'{name}.npy'), utils.to_uint8(sr))
            del sr
    result.update({f'seconds_{name}': min(t) for name, t in times.items()})
    return result


def measure(size: int, with_a: bool, args: argparse.Namespace, out_dir: str) -> dict:
    """child() in a fresh process, so that the peak memory it reads is its own."""
    repeat = args.repeat if size <= 256 else 1
    cmd = [sys.executable, os.path.abspath(__file__), '--child', str(int(with_a)),
           '--sizes', str(size), '--repeat', str(repeat), '--out', out_dir,
           '--threads', str(torch.get_num_threads())]
    cmd += ['--weight', args.weight] if args.weight else []
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f'the run at {size} failed:\n{res.stderr[-2000:]}')
    result = json.loads(res.stdout.strip().splitlines()[-1])
    return {name: {'seconds': result[f'seconds_{name}'], 'max_rss': result[f'rss_{name}'],
                   'tile': result['tile'] if name == 'b' else 0,
                   'precision': result['precision'] if name == 'b' else 'fp32',
                   'sr': np.load(os.path.join(out_dir, f'{name}.npy'))}
            for name in ('a', 'b') if f'seconds_{name}' in result}


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------

def baseline_peak_bytes(size: int) -> int:
    """Peak memory of (a): in the last upsampler the conv output (256 channels at half the
    output size) and its pixel-shuffled copy (64 channels at the output size) are alive
    together, fp32; plus ~1 GB for the process and the smaller maps."""
    out = size * SCALE
    return 2 * 64 * out * out * 4 + (1 << 30)


def row(size: int, name: str, r: dict, flops: float) -> str:
    sec, mp = r['seconds'], (size * SCALE) ** 2 / 1e6
    return (f"{size:>4}x{size:<4}  {name:<36} {sec:8.2f} {mp / sec:9.2f} "
            f"{flops * size * size / sec / 1e12:8.3f} {r['max_rss'] / 2**30:6.2f} GB "
            f"{r['psnr_hr']:9.2f} dB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[256, 1024],
                   help='LR input sizes (multiples of 32; default 256 1024)')
    p.add_argument('--weight', default=REALISTIC if os.path.isfile(REALISTIC) else None,
                   help='x4 generator weights (default: weights/srresnet_x4.pth if present)')
    p.add_argument('--repeat', type=int, default=5,
                   help='timed runs of each method for inputs up to 256 px, best counts '
                        '(larger inputs: 1)')
    p.add_argument('--threads', type=int, default=None,
                   help='CPU threads for both methods (default: torch\'s, one per core)')
    p.add_argument('--child', choices=['0', '1'], help=argparse.SUPPRESS)
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.sizes[0], args.weight, args.repeat, args.child == '1',
                               args.out)))
        return 0

    g, what = generator(args.weight)
    flops = conv_flops_per_pixel(g)
    print(f'x{SCALE} SRResNet (16 blocks), {what}')
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 '
          f'(amx_bf16/avx512_bf16): {"yes" if utils.cpu_has_bf16() else "no"}; '
          f'load average {os.getloadavg()[0]:.1f}')
    print(f'conv work: {flops / 1e6:.2f} MFLOP per LR pixel (FlopCounterMode); TFLOP/s below '
          'counts the whole image once (tile overlaps are extra work)\n')
    header = (f"{'input':>9}  {'method':<36} {'seconds':>8} {'MP/s out':>9} {'TFLOP/s':>8} "
              f"{'peak RSS':>9} {'PSNR-Y vs HR':>12}")
    print(header + '\n' + '-' * len(header))
    per_pixel_a = None  # (a)'s seconds per input pixel, to extrapolate when it cannot run
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            hr8 = utils.to_uint8(hr_mosaic(size * SCALE))
            name_a = '(a) fp32 NCHW unfused, whole image'
            room = min(16 << 30, proc_bytes('/proc/meminfo', 'MemAvailable') - (2 << 30))
            with_a = baseline_peak_bytes(size) <= room
            runs = measure(size, with_a, args, tmp)
            a, b = runs.get('a'), runs['b']
            for r in runs.values():
                r['psnr_hr'] = utils.psnr(r['sr'], hr8, SCALE)
            if a is not None:
                per_pixel_a = a['seconds'] / size ** 2
                print(row(size, name_a, a, flops), flush=True)
            else:
                print(f'{size:>4}x{size:<4}  {name_a:<36} skipped: needs '
                      f'~{baseline_peak_bytes(size) / 2**30:.0f} GB, '
                      f'{max(room, 0) / 2**30:.0f} GB to spare')
            layout = f"tiles of {b['tile']}" if b['tile'] else 'whole image'
            print(row(size, f"(b) fused CL {b['precision']}, {layout}", b, flops), flush=True)
            if a is not None:
                print(f"{'':11}speed-up (a)/(b): {a['seconds'] / b['seconds']:.2f}x;  "
                      f"PSNR-Y of (b) against (a): {utils.psnr(b['sr'], a['sr'], SCALE):.2f} dB;  "
                      f"PSNR-Y vs HR differs by {abs(a['psnr_hr'] - b['psnr_hr']):.3f} dB")
            elif per_pixel_a is not None:
                est = per_pixel_a * size ** 2
                print(f"{'':11}speed-up over (a) extrapolated from the smaller input "
                      f"({est:.1f} s): {est / b['seconds']:.2f}x")
            if size * SCALE >= 4096:
                verdict = 'under' if b['max_rss'] < 2.5 * 2**30 else 'OVER'
                print(f"{'':11}peak RSS of (b) with a {size * SCALE}x{size * SCALE} output: "
                      f"{b['max_rss'] / 2**30:.2f} GB ({verdict} the 2.5 GB target)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
