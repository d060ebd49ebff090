"""onnxruntime against this project's PyTorch path on the CPU, on the same input, in one run.

    python benchmarks/bench_onnx.py                  # weights/srgan_x4.pth, a 256x256 input
    python benchmarks/bench_onnx.py --sizes 256 512 --repeat 5

(a) PyTorch: test_image.py's default path (utils.inference_model and super_resolve: BatchNorm
    folded, channels_last, bf16 autocast where the CPU has it, tiles from utils.pick_tile).
(b) onnxruntime: the fp32 file scripts/export_onnx.py writes, CPUExecutionProvider, default
    graph optimisations, the same tiles as (a) (whole image when (a) runs it whole).
Both use the same number of threads. Runs alternate (a), (b), (a), ... so both see the same
load on a shared machine; the best of --repeat counts. The ratio printed is (a)'s time over
(b)'s: above 1, onnxruntime is faster. Inputs are bicubic downscales of mosaics of skimage's
sample photos (bench_inference.hr_mosaic); the two outputs are compared (PSNR-Y on 8 bits).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import export_onnx  # noqa: E402
import utils  # noqa: E402
from bench_inference import hr_mosaic  # noqa: E402

SCALE = 4
SHIPPED = os.path.join(ROOT, 'weights', 'srgan_x4.pth')


class OnnxModel:
    """An onnxruntime session called like the PyTorch model: (N, 3, h, w) float32 tensors."""

    def __init__(self, path: str, threads: int):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lr = x.float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {'lr': lr})[0])


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            info = dict(line.split(':', 1) for line in f if ':' in line)
    except OSError:
        return 'unknown CPU'
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = info.get('flags', '').split()
    isa = '/'.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags)
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}; {isa or 'no AVX2'})")


def compare(size: int, torch_model, onnx_model: OnnxModel, repeat: int) -> dict:
    """Best-of-`repeat` seconds of (a) and (b) on one size x size input, and their outputs."""
    lr = utils.downscale(hr_mosaic(size * SCALE), SCALE)
    device = torch.device('cpu')
    dtype = utils.autocast_dtype('auto', device)
    tile = utils.pick_tile(size, size, utils.max_tile(SCALE, device, dtype), utils.TILE_OVERLAP)

    def run_a() -> torch.Tensor:
        return utils.super_resolve(torch_model, lr, SCALE, tile, utils.TILE_OVERLAP, dtype)

    def run_b() -> torch.Tensor:
        return utils.tiled_forward(onnx_model, lr[None], SCALE, tile, utils.TILE_OVERLAP)[0]

    runs = {'a': run_a, 'b': run_b}
    for run in runs.values():  # one-time set-up (oneDNN primitives, ORT allocations) unmeasured
        run()
    times = {name: [] for name in runs}
    outputs = {}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {'tile': tile, 'precision': 'bf16' if dtype else 'fp32',
            'a': min(times['a']), 'b': min(times['b']),
            'psnr': utils.psnr(utils.to_uint8(outputs['a']), utils.to_uint8(outputs['b']),
                               SCALE),
            'max_diff': float((outputs['a'] - outputs['b']).abs().max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--weight', default=SHIPPED, help='x4 generator weights '
                                                     '(default: weights/srgan_x4.pth)')
    p.add_argument('--sizes', type=int, nargs='+', default=[256],
                   help='LR input sizes, multiples of 32 (default 256)')
    p.add_argument('--repeat', type=int, default=3, help='timed runs of each (best counts)')
    p.add_argument('--threads', type=int, default=None,
                   help='CPU threads for both (default: torch\'s, one per core)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    generator = utils.load_generator(args.weight, SCALE)
    torch_model = utils.inference_model(generator, torch.device('cpu'))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'generator.onnx')
        export_onnx.export(args.weight, path)
        onnx_model = OnnxModel(path, threads)
        import onnxruntime as ort
        print(f'{cpu_name()}, {threads} threads, load average {os.getloadavg()[0]:.1f}; '
              f'torch {torch.__version__}, onnxruntime {ort.__version__}; {args.weight}')
        header = (f"{'input':>9}  {'(a) PyTorch':>12} {'(b) onnxruntime':>16} "
                  f"{'(a)/(b)':>8}  {'layout, precision':<24} {'(a) vs (b)':>10}")
        print(header + '\n' + '-' * len(header))
        for size in args.sizes:
            r = compare(size, torch_model, onnx_model, args.repeat)
            layout = f"tiles of {r['tile']}" if r['tile'] else 'whole image'
            print(f"{size:>4}x{size:<4}  {r['a']:10.2f} s {r['b']:14.2f} s "
                  f"{r['a'] / r['b']:7.2f}x  {layout + ', ' + r['precision']:<24} "
                  f"{r['psnr']:7.1f} dB  (max |a-b| {r['max_diff']:.1e})", flush=True)
    print(f'load average after: {os.getloadavg()[0]:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
