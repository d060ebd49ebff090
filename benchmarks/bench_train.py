"""Training-step speed, three ways in one run, on the same batches from the same initial weights:

    (a) fp32 eager NCHW, PyTorch's default Adam: how other SRGAN repositories train;
    (b) this project's default before the device path: channels_last + bf16 autocast (where
        supported), batches made on the host (as DataLoader workers deliver them) and copied
        to the device each step, PyTorch's default Adam;
    (c) the new path (train.py --device_batches on, the default on CUDA with --cache): batches
        cut on the device by utils.DeviceCrops (crops, flips, bicubic LR), Adam fused on CUDA
        (foreach on the CPU), and on CUDA torch.compile(mode='reduce-overhead'), i.e. CUDA
        graphs (train.py --compile --compile_mode reduce-overhead).

    python benchmarks/bench_train.py                # CPU: batch 16; (c) without torch.compile
    python benchmarks/bench_train.py --cuda         # GPU: batches 16 and 64, % of peak bf16

Each path runs its warm-up steps, then its timed steps back to back with one device sync at
the end (no sync per step, as in training); (c)'s time includes cutting its batches, (a)'s and
(b)'s the host-to-device copy of theirs. The loss trajectories must agree to within bf16 noise:
the script says so, and exits 1 when they do not.
"""
import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import utils  # noqa: E402

SCALE = 4
# (c) and (b) against (a): bf16 autocast changes the losses by well under this
LOSS_TOLERANCE = 0.02


def make_state(mode: str, amp: str, channels_last: bool, cuda: bool, batch: int, crop: int,
               num_blocks: int, new_path: bool = False, compile_mode: str = None):
    """(args, runtime, TrainState) as train.py builds them; outside the new path the optimizers
    are PyTorch's default Adam, as before fused/foreach Adam."""
    argv = ['--mode', mode, '--amp', amp, '--vgg_weights', 'random', '--batch_size', str(batch),
            '--crop_size', str(crop), '--num_blocks', str(num_blocks), '--log_every', '1000000']
    if compile_mode:
        argv += ['--compile', '--compile_mode', compile_mode]
    args = train.get_args(argv + (['--cuda'] if cuda else []))
    rt = train.Runtime(args)
    # the random-VGG and no-pretrain warnings: expected in a benchmark
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        s = train.build(args, rt)
    if not new_path:
        s.opt_g = torch.optim.Adam(s.G.parameters(), args.lr, betas=(0.9, 0.999))
        if s.D is not None:
            s.opt_d = torch.optim.Adam(s.D.parameters(), args.lr, betas=(0.9, 0.999))
    train.wrap(args, rt, s)
    if not channels_last:
        for net in (s.G, s.D, s.vgg):
            if net is not None:
                net.to(memory_format=torch.contiguous_format)
    return args, rt, s


def sync(device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(step, batches, warmup: int, device) -> tuple:
    """Run step(batch) over `batches` (an iterable); the losses (floats) of every step and the
    seconds per step over those after `warmup`, with no host sync between timed steps."""
    losses = []
    it = iter(batches)
    for _ in range(warmup):
        losses.append(step(next(it)))
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        losses.append(step(batch))
        n += 1
    sync(device)
    seconds = (time.perf_counter() - t0) / n
    return torch.stack(losses).tolist(), seconds


def host_path(args, rt, s, batches, channels_last: bool, warmup: int) -> tuple:
    """(a) and (b): host batches copied to the device each step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    recipe = train.Recipe.from_args(args)

    def step(batch):
        lr, hr = (x.to(rt.device, non_blocking=True).contiguous(memory_format=fmt)
                  for x in batch)
        return train.train_step(recipe, rt, s, lr, hr)['loss_g']
    return timed(step, batches, warmup, rt.device)


def device_path(args, rt, s, crops, order, seed: int, warmup: int) -> tuple:
    """(c): batches cut on the device from `order`, the same ones as host_path's."""
    crops.generator.manual_seed(seed)
    recipe = train.Recipe.from_args(args)

    def step(batch):
        lr, hr = (x.contiguous(memory_format=torch.channels_last) for x in batch)
        return train.train_step(recipe, rt, s, lr, hr)['loss_g']
    return timed(step, crops.batches(order, args.batch_size), warmup, rt.device)


def step_flops(args, rt, s, lr, hr) -> int:
    """FLOPs of one training step (forward, backward), counted by PyTorch on the eager path."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        train.train_step(train.Recipe.from_args(args), rt, s, lr.to(rt.device),
                         hr.to(rt.device))
    return counter.get_total_flops()


def write_images(folder: str, n: int, size: int = 480) -> None:
    """n smooth random RGB images (noise blown up 8x), the size of prepared sub-images."""
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(
            os.path.join(folder, f'{i}.png'), compress_level=1)


def train_images_per_second(mode: str = 'adversarial', cuda: bool = False, batch: int = 16,
                            crop: int = 96, steps: int = 3, warmup: int = 1) -> float:
    """Images/s that the default training step consumes here (what data loading must feed)."""
    batches = [(torch.rand(batch, 3, crop // SCALE, crop // SCALE),
                torch.rand(batch, 3, crop, crop)) for _ in range(steps + warmup)]
    args, rt, s = make_state(mode, 'auto', True, cuda, batch, crop, 16)
    _, sec = host_path(args, rt, s, batches, True, warmup)
    return batch / sec


def device_name(cuda: bool) -> str:
    if cuda:
        return f'cuda:0 {torch.cuda.get_device_name(0)}'
    model = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        model = names[0] if names else model
    return f'cpu {model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cuda', action='store_true')
    p.add_argument('--batch_sizes', default=None,
                   help='comma-separated (default 16 on the CPU, 16,64 on CUDA)')
    p.add_argument('--crop_size', type=int, default=96)
    p.add_argument('--num_blocks', type=int, default=16)
    p.add_argument('--steps', type=int, default=None, help='timed steps (default 4 CPU, 30 GPU)')
    p.add_argument('--warmup', type=int, default=None,
                   help='untimed steps (default 2 CPU, 10 GPU; CUDA graphs record in these)')
    p.add_argument('--modes', default='generator,adversarial')
    p.add_argument('--images', type=int, default=16, help='480x480 synthetic training images')
    compile_group = p.add_mutually_exclusive_group()
    compile_group.add_argument('--compile', action='store_true',
                               help='(c) under torch.compile on the CPU too (minutes to compile)')
    compile_group.add_argument('--no_compile', action='store_true',
                               help='(c) without torch.compile on CUDA too')
    p.add_argument('--peak_tflops', type=float, default=None,
                   help='peak dense bf16 TFLOP/s (default: 989 for H100/H200; none on the CPU)')
    a = p.parse_args(argv)
    try:
        utils.device_for(a.cuda)
    except utils.UsageError as e:
        p.error(str(e))
    steps = a.steps or (30 if a.cuda else 4)
    warmup = a.warmup if a.warmup is not None else (10 if a.cuda else 2)
    sizes = [int(b) for b in (a.batch_sizes or ('16,64' if a.cuda else '16')).split(',')]
    compile_mode = None
    if (a.cuda and not a.no_compile) or a.compile:
        compile_mode = 'reduce-overhead' if a.cuda else 'default'
    device = device_name(a.cuda)
    peak = a.peak_tflops or (989.0 if a.cuda and ('H100' in device or 'H200' in device) else None)
    print(f'device {device}, torch {torch.__version__}, crop {a.crop_size}, x{SCALE}, '
          f'{a.num_blocks} blocks, {steps} timed steps after {warmup} warm-up; '
          f"(c) compiled: {compile_mode or 'no'}", flush=True)
    agree = True
    with tempfile.TemporaryDirectory() as folder:
        write_images(folder, a.images)
        dataset = utils.TrainSet(folder, SCALE, a.crop_size, cache=True)
        crops = utils.DeviceCrops(dataset, 'cuda' if a.cuda else 'cpu')
        for batch in sizes:
            n = steps + warmup
            order = torch.randint(0, a.images, (n * batch,), generator=torch.Generator()
                                  .manual_seed(batch)).tolist()
            crops.generator.manual_seed(batch)
            batches = [(lr.cpu(), hr.cpu()) for lr, hr in crops.batches(order, batch)]
            for mode in a.modes.split(','):
                agree &= compare(a, mode, batch, batches, crops, order, warmup, compile_mode, peak)
    return 0 if agree else 1


def compare(a, mode: str, batch: int, batches: list, crops, order: list, warmup: int,
            compile_mode: str, peak: float) -> bool:
    """Time (a), (b), (c) for one mode and batch size, print them; True if the losses agree."""
    paths = [('(a) fp32 eager NCHW', 'off', False, False), ('(b) default', 'auto', True, False),
             ('(c) new path', 'auto', True, True)]
    results, flops = {}, 0
    for name, amp, channels_last, new in paths:
        args, rt, s = make_state(mode, amp, channels_last, a.cuda, batch, a.crop_size,
                                 a.num_blocks, new, compile_mode if new else None)
        if new:
            losses, sec = device_path(args, rt, s, crops, order, batch, warmup)
        else:
            losses, sec = host_path(args, rt, s, batches, channels_last, warmup)
        if not flops:  # counted once, on (a)'s eager step: the same arithmetic in every path
            flops = step_flops(args, rt, s, *batches[0])
        results[name] = (losses, sec)
        line = (f'{mode:11s} {name:19s} batch {batch:3d}  precision '
                f'{str(rt.amp_dtype or torch.float32):14s} {1 / sec:8.2f} it/s '
                f'{batch / sec:9.1f} images/s {flops / sec / 1e12:7.3f} TFLOP/s')
        if peak:
            line += f' ({100 * flops / sec / 1e12 / peak:.1f}% of {peak:.0f} peak bf16)'
        print(line, flush=True)
    base_losses, base_sec = results['(a) fp32 eager NCHW']
    worst = 0.0
    for name in ('(b) default', '(c) new path'):
        losses, sec = results[name]
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(base_losses, losses))
        worst = max(worst, rel)
        print(f'{mode:11s} {name:19s} batch {batch:3d}  speed-up over (a) {base_sec / sec:.2f}x; '
              f'losses within {rel:.3%} of (a)')
    ok = worst <= LOSS_TOLERANCE
    verdict = 'losses agree' if ok else 'LOSSES DISAGREE'
    print(f'{mode:11s} batch {batch:3d}  {verdict} (largest relative difference {worst:.3%}, '
          f'tolerance {LOSS_TOLERANCE:.0%}); (a) {[round(x, 5) for x in base_losses]}',
          flush=True)
    return ok


if __name__ == '__main__':
    sys.exit(main())
