"""Training-step speed: plain fp32 eager NCHW (what other SRGAN repos run) against this
project's default path (channels_last + bf16 autocast where supported), in one run.

    python benchmarks/bench_train.py                 # CPU
    python benchmarks/bench_train.py --cuda          # GPU: also images/s and % of peak bf16

Both paths run train.train_step on the same synthetic batches from the same initial weights,
so the printed loss trajectories must agree to within bf16 noise.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


def make_state(mode: str, amp: str, channels_last: bool, cuda: bool, batch: int, crop: int,
               num_blocks: int, compile: bool = False):
    argv = (['--compile'] if compile else []) + ['--mode', mode, '--amp', amp, '--vgg_weights', 'random', '--batch_size', str(batch),
            '--crop_size', str(crop), '--num_blocks', str(num_blocks), '--log_every', '1000000']
    args = train.get_args(argv + (['--cuda'] if cuda else []))
    rt = train.Runtime(args)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the random-VGG warning: expected in a benchmark
        s = train.build(args, rt)
    train.wrap(args, rt, s)
    if not channels_last:
        for net in (s.G, s.D, s.vgg):
            if net is not None:
                net.to(memory_format=torch.contiguous_format)
    return args, rt, s


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def run(args, rt, s, batches, channels_last: bool, warmup: int):
    """Losses per step (after `warmup` untimed steps) and seconds per timed step."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    losses, times = [], []
    for i, (lr, hr) in enumerate(batches):
        lr = lr.to(rt.device).contiguous(memory_format=fmt)
        hr = hr.to(rt.device).contiguous(memory_format=fmt)
        sync(rt.device)
        t0 = time.perf_counter()
        out = train.train_step(args, rt, s, lr, hr)
        sync(rt.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(out['loss_g']))
    return losses, sum(times) / len(times)


def step_flops(args, rt, s, lr, hr) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        train.train_step(args, rt, s, lr.to(rt.device), hr.to(rt.device))
    return counter.get_total_flops()


def train_images_per_second(mode: str = 'adversarial', cuda: bool = False, batch: int = 16,
                            crop: int = 96, steps: int = 3, warmup: int = 1) -> float:
    """Images/s that the default training step consumes here (what data loading must feed)."""
    batches = [(torch.rand(batch, 3, crop // 4, crop // 4), torch.rand(batch, 3, crop, crop))
               for _ in range(steps + warmup)]
    args, rt, s = make_state(mode, 'auto', True, cuda, batch, crop, 16)
    _, sec = run(args, rt, s, batches, True, warmup)
    return batch / sec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cuda', action='store_true')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--crop_size', type=int, default=96)
    p.add_argument('--num_blocks', type=int, default=16)
    p.add_argument('--steps', type=int, default=None, help='timed steps (default 4 CPU, 30 GPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps (default 2 / 10)')
    p.add_argument('--modes', default='generator,adversarial')
    p.add_argument('--compile', action='store_true',
                   help='also time the default path under torch.compile (--compile)')
    p.add_argument('--peak_tflops', type=float, default=None,
                   help='GPU peak dense bf16 TFLOP/s (default: 989 for H100/H200, else none)')
    a = p.parse_args(argv)
    steps = a.steps or (30 if a.cuda else 4)
    warmup = a.warmup if a.warmup is not None else (10 if a.cuda else 2)
    torch.manual_seed(0)
    scale = 4
    batches = [(torch.rand(a.batch_size, 3, a.crop_size // scale, a.crop_size // scale),
                torch.rand(a.batch_size, 3, a.crop_size, a.crop_size))
               for _ in range(steps + warmup)]
    # smooth-ish targets so the losses move like on real images
    batches = [(lr, torch.nn.functional.interpolate(lr, scale_factor=scale, mode='bicubic'))
               for lr, _ in batches]
    device = 'cuda:0 ' + torch.cuda.get_device_name(0) if a.cuda else f'cpu ({os.cpu_count()} cores)'
    print(f'device {device}, torch {torch.__version__}, batch {a.batch_size}, crop {a.crop_size}, '
          f'x{scale}, {a.num_blocks} blocks, {steps} timed steps after {warmup} warm-up')
    for mode in a.modes.split(','):
        results = {}
        paths = [('fp32 eager NCHW', 'off', False, False), ('default', 'auto', True, False)]
        if a.compile:
            paths.append(('default+compile', 'auto', True, True))
        for name, amp, cl, comp in paths:
            args, rt, s = make_state(mode, amp, cl, a.cuda, a.batch_size, a.crop_size,
                                     a.num_blocks, comp)
            losses, sec = run(args, rt, s, batches, cl, warmup)
            results[name] = (losses, sec, rt.amp_dtype)
            ips = a.batch_size / sec
            line = (f'{mode:11s} {name:16s} precision {str(rt.amp_dtype or torch.float32):15s}'
                    f' {1 / sec:8.2f} it/s {ips:9.1f} images/s')
            if a.cuda and name == 'default':
                flops = step_flops(args, rt, s, *batches[0])
                peak = a.peak_tflops or (989.0 if 'H100' in device or 'H200' in device else None)
                line += f'  {flops / sec / 1e12:6.1f} TFLOP/s'
                if peak:
                    line += f' ({100 * flops / sec / 1e12 / peak:.1f}% of {peak:.0f} peak bf16)'
            print(line, flush=True)
        (l32, s32, _), (ld, sd, _) = results['fp32 eager NCHW'], results['default']
        rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(l32, ld))
        if 'default+compile' in results:
            print(f"{mode:11s} speed-up with --compile {s32 / results['default+compile'][1]:.2f}x")
        print(f'{mode:11s} speed-up {s32 / sd:.2f}x; loss trajectory fp32 '
              f'{[round(x, 5) for x in l32]}')
        print(f'{mode:11s}                  default {[round(x, 5) for x in ld]} '
              f'(max relative difference {rel:.3%})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
