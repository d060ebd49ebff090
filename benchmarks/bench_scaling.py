"""Data-parallel scaling of the SRGAN adversarial training step: images/s with one process and
with N DDP processes, and the scaling efficiency, in one run.

    python benchmarks/bench_scaling.py                     # CPU: 1 vs 2 processes, gloo
    python benchmarks/bench_scaling.py --nproc 4           # CPU: 1 vs 4 processes
    python benchmarks/bench_scaling.py --cuda              # GPUs: 1 vs all visible, nccl

Every process runs train.train_step (D step, then G step with the VGG54 content loss, random
VGG weights: same cost as ImageNet's) on synthetic batches of --batch_size, the per-process
batch as in train.py --ddp. On the CPU each process gets cores // N threads in both
measurements, so that one process stands for one "device" and the efficiency measures what
gradient all-reduce and shared memory bandwidth cost; N x threads never exceeds the cores.
Efficiency = images/s with N / (N x images/s with 1). The two measurements alternate
--repeats times and the best of each counts, which damps other load on a shared machine.
"""
import argparse
import contextlib
import io
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402


def worker(rank: int, world_size: int, port: int, a, threads: int, results) -> None:
    """One process: build, wrap (DDP when world_size > 1), warm up, time a.steps steps."""
    torch.set_num_threads(threads)
    argv = ['--mode', 'adversarial', '--vgg_weights', 'random', '--amp', a.amp,
            '--batch_size', str(a.batch_size), '--crop_size', str(a.crop_size),
            '--num_blocks', str(a.num_blocks), '--backend', a.backend]
    args = train.get_args(argv + (['--cuda'] if a.cuda else []))
    if world_size > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        rt = train.init_distributed(args, rank, world_size, rank)
    else:
        rt = train.Runtime(args)
    # the random-VGG and no-pretrain warnings: expected in a benchmark
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        s = train.build(args, rt)
    train.wrap(args, rt, s)
    g = torch.Generator().manual_seed(rank)
    lr = torch.rand(a.batch_size, 3, a.crop_size // 4, a.crop_size // 4, generator=g)
    hr = torch.nn.functional.interpolate(lr, scale_factor=4, mode='bicubic').clamp(0, 1)
    lr, hr = (x.to(rt.device).contiguous(memory_format=torch.channels_last) for x in (lr, hr))

    def sync():
        if rt.device.type == 'cuda':
            torch.cuda.synchronize()
        if rt.distributed:
            dist.barrier()

    for _ in range(a.warmup):
        train.train_step(args, rt, s, lr, hr)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        out = train.train_step(args, rt, s, lr, hr)
    float(out['loss_g'])  # waits for the device
    sync()
    seconds = time.perf_counter() - t0
    if rank == 0:
        results.put({'seconds': seconds, 'precision': str(rt.amp_dtype or torch.float32),
                     'device': str(rt.device)})
    if rt.distributed:
        dist.destroy_process_group()


def measure(world_size: int, a, threads: int) -> dict:
    """Run world_size fresh processes; images/s over all of them."""
    ctx = mp.get_context('spawn')
    results = ctx.SimpleQueue()
    mp.spawn(worker, args=(world_size, train.free_port(), a, threads, results),
             nprocs=world_size)
    r = results.get()
    r['images_per_s'] = world_size * a.batch_size * a.steps / r['seconds']
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--cuda', action='store_true', help='one GPU per process, nccl')
    p.add_argument('--nproc', type=int, default=None,
                   help='processes to compare with one (default: all GPUs; 2 on the CPU)')
    p.add_argument('--backend', default='auto', choices=['auto', 'nccl', 'gloo'])
    p.add_argument('--batch_size', type=int, default=None,
                   help='per process (default 16 on GPUs, 4 on the CPU)')
    p.add_argument('--crop_size', type=int, default=None, help='default 96 on GPUs, 64 on the CPU')
    p.add_argument('--num_blocks', type=int, default=None, help='default 16 on GPUs, 4 on the CPU')
    p.add_argument('--steps', type=int, default=None, help='timed steps (default 30 GPU, 4 CPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps (default 10 / 2)')
    p.add_argument('--amp', default='auto', choices=['auto', 'off', 'bf16', 'fp16'])
    p.add_argument('--repeats', type=int, default=None, help='default 1 on GPUs, 2 on the CPU')
    a = p.parse_args(argv)
    gpu = a.cuda
    if gpu and not torch.cuda.is_available():
        p.error('--cuda given but no CUDA device is available')
    a.nproc = a.nproc or (torch.cuda.device_count() if gpu else 2)
    a.batch_size = a.batch_size or (16 if gpu else 4)
    a.crop_size = a.crop_size or (96 if gpu else 64)
    a.num_blocks = a.num_blocks or (16 if gpu else 4)
    a.steps = a.steps or (30 if gpu else 4)
    a.warmup = a.warmup if a.warmup is not None else (10 if gpu else 2)
    a.repeats = a.repeats or (1 if gpu else 2)
    cores = len(os.sched_getaffinity(0))
    if gpu:
        if a.nproc > torch.cuda.device_count():
            p.error(f'--nproc {a.nproc}: only {torch.cuda.device_count()} GPUs visible')
        threads = max(1, cores // a.nproc)
        where = f'{a.nproc} x {torch.cuda.get_device_name(0)}, {cores} CPU cores'
    else:
        if a.nproc > cores:
            p.error(f'--nproc {a.nproc}: more processes than the {cores} CPU cores')
        threads = cores // a.nproc
        where = f'CPU, {cores} cores, {threads} thread(s) per process'
    backend = a.backend if a.backend != 'auto' else ('nccl' if gpu else 'gloo')
    print(f'{where}; torch {torch.__version__}; adversarial step (D + G, VGG54 content loss), '
          f'batch {a.batch_size} per process, crop {a.crop_size}, x4, {a.num_blocks} blocks, '
          f'{a.steps} timed steps after {a.warmup} warm-up, best of {a.repeats}', flush=True)
    ones, manys = [], []
    for _ in range(a.repeats):
        ones.append(measure(1, a, threads))
        manys.append(measure(a.nproc, a, threads))
    one, many = (max(r, key=lambda x: x['images_per_s']) for r in (ones, manys))
    every = [', '.join(f'{x["images_per_s"]:.2f}' for x in r) for r in (ones, manys)]
    print(f'1 process           : {one["images_per_s"]:8.2f} images/s '
          f'({one["precision"]}, {one["device"]}; runs: {every[0]})')
    speedup = many['images_per_s'] / one['images_per_s']
    print(f'{a.nproc} processes ({backend:5s}): {many["images_per_s"]:8.2f} images/s '
          f'(runs: {every[1]}); speed-up {speedup:.2f}x, scaling efficiency '
          f'{100 * speedup / a.nproc:.0f}% ({a.nproc} x {threads} thread(s) of {cores} cores)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
