"""The logic of scripts/gpu_slot.sh: one GPU slot spent in one command (docs/gpu-slot.md).

    OUT=/tmp/slot python scripts/gpu_slot_tools.py --out /tmp/slot --budget 510
    python scripts/gpu_slot_tools.py --out /tmp/x --rehearsal     # CPU, tiny, < 2 minutes

Within --budget seconds of wall clock, writing what comes back into --out:
 1. benchmarks/bench_train.py (--cuda): (a) fp32 eager, (b) default, (c) fast path, batches 16
    and 64, share of peak -> OUT/bench_train.txt. Its (b)/(c) figures decide each run's start.
 2. The trainings, as concurrent processes on the one device (each its own device batches), each
    with --time_limit so that all stop in time, validating and keeping best.pth by its
    --best_metric (and --grid_limit): x4 SRGAN-MSE all-four recipe, x4 SRGAN-MSE paper recipe,
    x4 SRResNet continued, x2 and x8 SRResNet continued then SRGAN (all-four recipe) from it.
    Fast path (--compile --compile_mode reduce-overhead: CUDA graphs) where the bench found
    (c) faster than (b) for that step and batch; a fast run that fails, or whose first epoch
    (compilation included) takes more than FIRST_EPOCH_SHARE of its window, restarts in eager
    mode for the time left, and the log says so. One failing run stops no other.
 3. pytest -m cuda (tests/test_cuda.py) beside the trainings.
 4. Concurrency: each run's images/s over its epochs against the bench's single-process
    images/s for the same step and batch.
 5. evaluate.py on Set5 and Set14 (PSNR, SSIM, NIQE, grid) for every produced generator and the
    shipped files -> OUT/results.json (with everything above), the best weights files (at most
    8 files come back in all) and OUT/slot.log. Never writes into --weights.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402
from model import Generator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILES = 8  # what a device call brings back from $OUT
MAX_FILE_BYTES = 16 * 2 ** 20
FIRST_EPOCH_SHARE = 0.35
FAST = ['--compile', '--compile_mode', 'reduce-overhead']
ALL_FOUR = ['--gan_loss', 'ragan', '--spectral_norm', '--lr_d', '2.5e-5', '--ema', '0.99']
PAPER = []  # vanilla BCE, BatchNorm in D, one learning rate, no EMA
SRRESNET = ['--lr', '5e-5', '--lr_step', '0', '--ema', '0.999']
# The CUDA-graph path has never run on a GPU before the first slot: the most valuable run stays
# eager, a sure result and the reference for x4_srgan_paper (same step and batch) on the fast path
EAGER_REFERENCE = 'x4_srgan_allfour'


class Settings:
    """What differs between a real slot and the CPU rehearsal."""

    def __init__(self, rehearsal: bool):
        self.rehearsal = rehearsal
        if rehearsal:
            self.device = []
            self.num_blocks, self.crop = 2, {2: 32, 4: 32, 8: 32}
            self.batch_g, self.batch_d = 2, 2
            self.fast = ['--device_batches', 'on']  # the CPU's fast path: batches on the device
            self.bench = ['--modes', 'generator', '--batch_sizes', '2', '--crop_size', '32',
                          '--num_blocks', '2', '--steps', '1', '--warmup', '1', '--images', '1']
            self.bench_s, self.eval_s, self.epoch_s, self.pytest_s = 60, 65, 3, 40
            self.startup_s = 15  # train.py's imports, images and networks, before its clock
            self.min_iters, self.extra = 1, ['--amp', 'off', '--d_channels', '8']
            # on a shared 2-core machine a process takes seconds to start and epoch 1 comes
            # late for every path: no restart for a slow first epoch there (a failing fast
            # path, --break_fast, rehearses the fallback); the fast path is always tried
            self.first_epoch_share, self.threads = 2.0, '1'
        else:
            self.device = ['--cuda']
            self.num_blocks, self.crop = 16, {2: 96, 4: 96, 8: 192}
            self.batch_g, self.batch_d = 64, 16
            self.fast = FAST
            self.bench = ['--cuda', '--steps', '20']  # about a minute
            self.bench_s, self.eval_s, self.epoch_s, self.pytest_s = 100, 80, 25, 240
            self.startup_s = 20
            self.min_iters, self.extra = 2, []
            self.first_epoch_share, self.threads = FIRST_EPOCH_SHARE, '2'
        # images/s of one process alone, to size epochs where the bench gave no figure
        self.guess = ({('generator', 2): 4.0, ('adversarial', 2): 2.0} if rehearsal else
                      {('generator', 64): 3000.0, ('adversarial', 16): 600.0})


class Slot:
    def __init__(self, args):
        self.args, self.s = args, Settings(args.rehearsal)
        self.t0 = time.time()
        self.deadline = self.t0 + args.budget
        self.work = os.path.abspath(args.work)
        self.out = os.path.abspath(args.out)
        self.log_file = open(os.path.join(self.out, 'slot.log'), 'a')
        self.results = {'budget_s': args.budget, 'rehearsal': args.rehearsal,
                        'torch': torch.__version__, 'device': device_name(args.rehearsal),
                        'notes': [], 'runs': {}}

    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, msg: str) -> None:
        line = f'[{time.time() - self.t0:6.1f}s] {msg}'
        print(line, flush=True)
        self.log_file.write(line + '\n')
        self.log_file.flush()

    def note(self, msg: str) -> None:
        self.results['notes'].append(msg)
        self.log(msg)

    def python(self, *argv) -> list:
        return [sys.executable, *argv]


def device_name(rehearsal: bool) -> str:
    if not rehearsal and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return 'cpu (rehearsal)' if rehearsal else 'cpu'


# ---------------------------------------------------------------------------------------------
# The rehearsal's stand-ins: tiny photos packed as for a slot, tiny "shipped" files
# ---------------------------------------------------------------------------------------------

def rehearsal_inputs(slot: Slot) -> tuple:
    """(data folder, weights folder) for the rehearsal: skimage photos packed by
    pack_slot_data.py, and 2-block generators standing in for the shipped files."""
    from PIL import Image
    from skimage import data as sk
    src = os.path.join(slot.work, 'rehearsal_src')
    shutil.rmtree(src, ignore_errors=True)
    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket()]
    for folder, crops in (('train/T91', [(0, 0), (100, 100)]),
                          ('train/BSDS500_test200', [(50, 200), (150, 50), (200, 200)]),
                          ('Set5', [(120, 180)]), ('Set14', [(60, 260), (160, 300)])):
        os.makedirs(os.path.join(src, folder))
        for i, (top, left) in enumerate(crops):
            img = photos[(i + len(folder)) % len(photos)][top:top + 96, left:left + 128]
            Image.fromarray(img).save(os.path.join(src, folder, f'{i}.png'))
    data = os.path.join(slot.work, 'slot_data')
    run_logged(slot, slot.python('scripts/pack_slot_data.py', '--train', f'{src}/train',
                                 '--benchmarks', src, '--out', data, '--valid_every', '2',
                                 '--max_mib', '2', '--min_side', '64'), 60)
    weights = os.path.join(slot.work, 'rehearsal_weights')
    os.makedirs(weights, exist_ok=True)
    for kind, scale in (('srresnet', 2), ('srresnet', 4), ('srresnet', 8), ('srgan', 4)):
        torch.manual_seed(scale)
        utils.save_weights(Generator(scale, slot.s.num_blocks),
                           os.path.join(weights, f'{kind}_x{scale}.pth'))
    return data, weights


def run_logged(slot: Slot, argv: list, timeout: float, out_path: str = None) -> int:
    """Run argv to the end (or `timeout`), its output into slot.log (and `out_path`)."""
    slot.log('$ ' + ' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a
                             for a in argv))
    try:
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                           timeout=max(1, timeout))
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
        text, rc = text + f'\n(stopped after {timeout:.0f} s)\n', 124
    slot.log_file.write(text)
    if out_path:
        with open(out_path, 'w') as f:
            f.write(text)
    return rc


# ---------------------------------------------------------------------------------------------
# 1. bench_train.py
# ---------------------------------------------------------------------------------------------

BENCH_LINE = re.compile(r'^(generator|adversarial)\s+\((a|b|c)\) .*?batch\s+(\d+)\s+precision'
                        r'.*?([\d.]+) images/s')


def parse_bench(text: str) -> dict:
    """{(mode, batch): {'a'|'b'|'c': images/s}} from bench_train.py's output."""
    found = {}
    for line in text.splitlines():
        m = BENCH_LINE.match(line)
        if m:
            found.setdefault((m[1], int(m[3])), {})[m[2]] = float(m[4])
    return found


def bench(slot: Slot) -> dict:
    """bench_train.py to the end; its figures. (The rehearsal runs it beside the trainings,
    started by start_bench: on a CPU its figures decide nothing, and time is short.)"""
    path = os.path.join(slot.out, 'bench_train.txt')
    rc = run_logged(slot, slot.python('benchmarks/bench_train.py', *slot.s.bench),
                    min(slot.s.bench_s, slot.left() / 4), path)
    return bench_figures(slot, rc)


def start_bench(slot: Slot):
    slot.log('$ python benchmarks/bench_train.py ' + ' '.join(slot.s.bench) + ' (beside)')
    return subprocess.Popen(slot.python('benchmarks/bench_train.py', *slot.s.bench), cwd=ROOT,
                            stdout=open(os.path.join(slot.out, 'bench_train.txt'), 'w'),
                            stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS='1'))


def finish_bench(slot: Slot, proc) -> dict:
    try:
        proc.wait(timeout=max(1, slot.left() - slot.s.eval_s))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return bench_figures(slot, proc.returncode)


def bench_figures(slot: Slot, rc: int) -> dict:
    path = os.path.join(slot.out, 'bench_train.txt')
    found = parse_bench(open(path).read())
    slot.results['bench'] = {'rc': rc, 'images_per_s': {f'{m} batch {b}': v
                                                        for (m, b), v in found.items()}}
    if rc:
        slot.note(f'bench_train.py ended with status {rc}; its figures are partial')
    return found


# ---------------------------------------------------------------------------------------------
# 2. The runs
# ---------------------------------------------------------------------------------------------

class Stage:
    """One train.py process of a run: its flags, its window, fast path or eager."""

    def __init__(self, name: str, mode: str, scale: int, flags: list, pretrain: str):
        self.name, self.mode, self.scale, self.flags = name, mode, scale, flags
        self.pretrain = pretrain  # a path, or a callable giving one when the stage starts
        self.proc = self.out_dir = self.fast = self.started = self.end = None
        self.attempts, self.returncode = [], None

    def batch(self, s: Settings) -> int:
        return s.batch_g if self.mode == 'generator' else s.batch_d


def plan_runs(slot: Slot, weights: str) -> list:
    """[[stages of run 1], ...] in order of value; a run's stages go one after another."""
    w = {f: os.path.join(weights, f) for f in ('srresnet_x2.pth', 'srresnet_x4.pth',
                                               'srresnet_x8.pth')}
    gan = ['--content_weight', '0', '--lr', '1e-4', '--lr_step', '0']

    def best_of(stage: Stage, fallback: str):
        def pick():
            path = stage_best(stage)
            return path or fallback
        return pick

    runs = [[Stage('x4_srgan_allfour', 'adversarial', 4, gan + ALL_FOUR, w['srresnet_x4.pth'])],
            [Stage('x4_srgan_paper', 'adversarial', 4, gan + PAPER, w['srresnet_x4.pth'])],
            # continuation: a constant 5e-5 (a quarter of the shipped run's start, 2.5 times
            # its end), the EMA of the weights (0.999: about the last 1,000 steps) standing in
            # for a decay, since the epochs a time-limited run reaches are not known ahead
            [Stage('x4_srresnet', 'generator', 4, SRRESNET, w['srresnet_x4.pth'])]]
    for scale in (2, 8):
        first = Stage(f'x{scale}_srresnet', 'generator', scale, SRRESNET,
                      w[f'srresnet_x{scale}.pth'])
        runs.append([first, Stage(f'x{scale}_srgan_allfour', 'adversarial', scale, gan + ALL_FOUR,
                                  best_of(first, w[f'srresnet_x{scale}.pth']))])
    return runs


def stage_best(stage: Stage):
    """The stage's best.pth (its eager restart's if it had one), or None."""
    for out_dir in reversed(stage.attempts):
        path = os.path.join(out_dir, 'weights', 'best.pth')
        if os.path.isfile(path):
            return path
    return None


def history_rows(out_dir: str) -> list:
    import csv
    try:
        with open(os.path.join(out_dir, 'history.csv'), newline='') as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def train_argv(s: Settings, stage: Stage, data: str, out_dir: str, pretrain: str,
               window: float, fast: bool, rate: float, n: int, break_fast: str = '') -> tuple:
    """(train.py's arguments, iterations per epoch, time limit in s) for `stage` to stop
    within `window` seconds, epochs sized to about s.epoch_s from `rate` (images/s alone)
    shared by `n` processes."""
    batch = stage.batch(s)
    iters = max(s.min_iters, int(rate / n * s.epoch_s / batch))
    # --time_limit counts from train.py's first epoch, after its start-up, and the run stops
    # after the epoch in which it passes: leave it the start-up, that epoch, its validation
    # and checkpoint
    limit_s = max(1.0, window - s.startup_s - 2.2 * s.epoch_s)
    # the time limit ends every run: room for 10 times the epochs planned, in case the
    # processes share the device better than the 1/n assumed
    epochs = 10 * max(2, int(window / s.epoch_s) + 2)
    argv = ['--mode', stage.mode, '--upscale_factor', str(stage.scale),
            '--trainset_dir', os.path.join(data, 'train'),
            '--validset_dir', os.path.join(data, 'valid'), '--out_dir', out_dir,
            '--pretrain', pretrain, '--num_blocks', str(s.num_blocks),
            '--crop_size', str(s.crop[stage.scale]), '--batch_size', str(batch), '--cache',
            '--workers', '0', '--iters_per_epoch', str(iters), '--epochs', str(epochs),
            '--time_limit', f'{limit_s / 60:.3f}', '--keep', '1', '--log_every', '50',
            *s.device, *stage.flags]
    if fast:
        argv += s.fast
        if break_fast == stage.name:  # the rehearsal's failing fast path
            argv += ['--compile_mode', 'no-such-mode']
    return argv + s.extra, iters, limit_s


def start(slot: Slot, stage: Stage, data: str, end: float, fast: bool, rate: float,
          n: int) -> None:
    """Launch `stage` to stop by `end` (a time.time())."""
    s = slot.s
    pretrain = stage.pretrain() if callable(stage.pretrain) else stage.pretrain
    stage.out_dir = os.path.join(slot.work, 'runs', stage.name + ('' if fast else '_eager'))
    shutil.rmtree(stage.out_dir, ignore_errors=True)
    args, iters, limit_s = train_argv(s, stage, data, stage.out_dir, pretrain,
                                      end - time.time(), fast, rate, n, slot.args.break_fast)
    argv = slot.python('train.py', *args)
    stage.fast, stage.started, stage.end = fast, time.time(), end
    stage.attempts.append(stage.out_dir)
    slot.log(f'{stage.name}: {"fast path" if fast else "eager"}, {iters} it/epoch, '
             f'--time_limit {limit_s:.0f} s, from {os.path.relpath(pretrain, ROOT)}')
    log = open(os.path.join(slot.work, 'runs', os.path.basename(stage.out_dir) + '.log'), 'w')
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=s.threads)
    stage.proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=False)


def tail(path: str, n: int = 3) -> list:
    try:
        with open(path, errors='replace') as f:
            return [line.rstrip() for line in f.read().splitlines()[-n:]]
    except OSError:
        return []


def train_all(slot: Slot, data: str, weights: str, found: dict) -> list:
    """Run every stage within the training window; returns the stages."""
    s = slot.s
    train_end = slot.deadline - s.eval_s
    runs = plan_runs(slot, weights)
    n = len(runs)
    pending = [list(r) for r in runs]
    active = []

    def rate(stage: Stage, fast: bool) -> float:
        f = found.get((stage.mode, stage.batch(s)), {})
        return f.get('c' if fast else 'b') or s.guess[(stage.mode, stage.batch(s))]

    def use_fast(stage: Stage) -> bool:
        if stage.name == EAGER_REFERENCE:
            return False
        if s.rehearsal:
            return True
        f = found.get((stage.mode, stage.batch(s)), {})
        return not ('b' in f and 'c' in f and f['c'] <= f['b'])

    def launch(stage: Stage, end: float, fast: bool) -> None:
        if not fast and stage.attempts == [] and stage.name == EAGER_REFERENCE:
            slot.note(f'{stage.name}: eager (the most valuable run takes no risk, and is the '
                      'reference the fast x4 SRGAN run is compared with)')
        elif not fast and stage.attempts == []:
            slot.note(f'{stage.name}: eager from the start (bench: the fast path is not '
                      f'faster for {stage.mode} at batch {stage.batch(s)})')
        start(slot, stage, data, end, fast, rate(stage, fast), n)
        active.append(stage)

    for run in pending:
        first = run[0]
        share = (0.5 if s.rehearsal else 0.45) if len(run) > 1 else 1.0
        launch(first, time.time() + share * (train_end - time.time()), use_fast(first))
    pytest_proc = start_pytest(slot)
    stages = [st for r in runs for st in r]
    while active:
        time.sleep(0.5 if s.rehearsal else 2)
        for stage in list(active):
            rc = stage.proc.poll()
            now = time.time()
            rows = history_rows(stage.out_dir)
            stopped = rc is None and now > stage.end + (5 if s.rehearsal else 20)
            if stopped:
                stage.proc.kill()  # past its window: the epochs it saved stay
                stage.proc.wait()
                slot.note(f'{stage.name}: still running {now - stage.end:.0f} s past its window; '
                          f'stopped after {len(rows)} epoch(s)')
                rc = 0
            elif (rc is None and stage.fast and not rows and now - stage.started
                  > s.first_epoch_share * (stage.end - stage.started)):
                stage.proc.kill()
                stage.proc.wait()
                slot.note(f'{stage.name}: fast path has no first epoch after '
                          f'{now - stage.started:.0f} s ({s.first_epoch_share:.0%} of its window): '
                          'slower than eager; restarting eager')
                active.remove(stage)
                launch(stage, stage.end, False)
                continue
            if rc is None:
                continue
            active.remove(stage)
            log = os.path.join(slot.work, 'runs', os.path.basename(stage.out_dir) + '.log')
            if rc != 0 and stage.fast and stage.end - now > 3 * s.epoch_s:
                slot.note(f'{stage.name}: fast path failed (status {rc}: '
                          f'{" | ".join(tail(log, 2))}); falling back to eager for the '
                          f'{stage.end - now:.0f} s left')
                launch(stage, stage.end, False)
                continue
            stage.returncode = rc
            if rc != 0:
                slot.note(f'{stage.name}: failed (status {rc}): {" | ".join(tail(log, 2))}')
            else:
                slot.log(f'{stage.name}: done, {len(rows)} epochs')
            run = next(r for r in pending if stage in r)
            if run.index(stage) + 1 < len(run):
                nxt = run[run.index(stage) + 1]
                if train_end - now > 4 * s.epoch_s:
                    launch(nxt, train_end, use_fast(nxt))
                else:
                    slot.note(f'{nxt.name}: no time left to start it')
    finish_pytest(slot, pytest_proc)
    return stages


def summarize_runs(slot: Slot, stages: list, found: dict) -> None:
    """Per stage: flags, path taken, epochs, images/s, best epoch; and concurrency: its
    images/s against the bench's single-process images/s for the same step and batch."""
    concurrency = {}
    for st in stages:
        info = {'mode': st.mode, 'scale': st.scale, 'flags': st.flags,
                'attempts': [os.path.basename(a) for a in st.attempts],
                'fast_path': st.fast, 'status': st.returncode}
        rows = history_rows(st.attempts[-1]) if st.attempts else []
        keep = ('epoch', 'loss_g', 'loss_d', 'psnr_y', 'niqe', 'grid', 'images_per_s',
                'seconds')
        info['history'] = [{k: r[k] for k in keep if r.get(k) not in (None, '')} for r in rows]
        info['best'] = stage_best(st)
        slot.results['runs'][st.name] = info
        alone = found.get((st.mode, st.batch(slot.s)), {}).get('c' if st.fast else 'b')
        if rows and alone and st.scale == 4:  # the bench times x4 steps
            ips = [float(r['images_per_s']) for r in rows[1:] or rows]
            concurrency[st.name] = {'images_per_s': sum(ips) / len(ips), 'alone': alone,
                                    'kept': sum(ips) / len(ips) / alone}
    slot.results['concurrency'] = {
        'how': "each x4 run's mean images/s over its epochs after the first (train.py's "
               "history.csv), against bench_train.py's x4 images/s for the same step, batch "
               "and path in one process alone, measured first in the same slot",
        'runs': concurrency}
    ref, fast = (slot.results['runs'].get(k, {}) for k in (EAGER_REFERENCE, 'x4_srgan_paper'))
    rates = [[float(r['images_per_s']) for r in x.get('history', [])[1:]] for x in (ref, fast)]
    if all(rates):
        slot.results['fast_vs_eager'] = {
            'how': f'x4_srgan_paper (fast path: {fast.get("fast_path")}) against '
                   f'{EAGER_REFERENCE} (eager), adversarial batch {slot.s.batch_d}, mean '
                   'images/s over the epochs after the first, side by side in the slot',
            'ratio': (sum(rates[1]) / len(rates[1])) / (sum(rates[0]) / len(rates[0]))}
        ratio = slot.results['fast_vs_eager']['ratio']
        slot.log(f'fast path against eager, x4 SRGAN: {ratio:.2f}x')
    for name, c in concurrency.items():
        slot.log(f'concurrency: {name} {c["images_per_s"]:.0f} images/s, '
                 f'{c["kept"]:.0%} of {c["alone"]:.0f} alone')


# ---------------------------------------------------------------------------------------------
# 3. pytest -m cuda beside the trainings
# ---------------------------------------------------------------------------------------------

def start_pytest(slot: Slot):
    path = os.path.join(slot.work, 'pytest_cuda.log')
    slot.log('$ python -m pytest -m cuda tests/test_cuda.py')
    return subprocess.Popen(slot.python('-m', 'pytest', '-q', '-m', 'cuda', 'tests/test_cuda.py',
                                        '-p', 'no:cacheprovider'),
                            cwd=ROOT, stdout=open(path, 'w'), stderr=subprocess.STDOUT)


def finish_pytest(slot: Slot, proc) -> None:
    try:
        proc.wait(timeout=max(1, min(slot.s.pytest_s, slot.left() - slot.s.eval_s / 2)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        slot.note('pytest -m cuda: stopped, out of time')
    text = open(os.path.join(slot.work, 'pytest_cuda.log')).read()
    slot.log_file.write(text)
    last = [line for line in text.splitlines() if line.strip()][-1:] or ['']
    slot.results['pytest_cuda'] = {'status': proc.returncode, 'summary': last[0]}
    slot.log(f'pytest -m cuda: status {proc.returncode}, {last[0]}')


# ---------------------------------------------------------------------------------------------
# 5. evaluate.py, results.json, the weights files that come back
# ---------------------------------------------------------------------------------------------

def candidates(stages: list, weights: str) -> dict:
    """{scale: {label: path}}: every produced generator (its best.pth) and the shipped files."""
    found = {}
    for path in sorted(glob.glob(os.path.join(weights, 's*_x[248].pth'))):
        name = os.path.basename(path)[:-4]
        found.setdefault(int(name[-1]), {})['shipped_' + name] = path
    for st in stages:
        best = stage_best(st)
        if best:
            found.setdefault(st.scale, {})[st.name] = best
    return found


def evaluate_all(slot: Slot, data: str, found: dict) -> list:
    """evaluate.py per (scale, benchmark), all at once; their summary rows."""
    procs = []
    # one process per scale and benchmark (NIQE runs on the CPU); the rehearsal's machine has
    # two cores, so one per scale there
    sets = [['Set5', 'Set14']] if slot.s.rehearsal else [['Set5'], ['Set14']]
    for scale, labels in sorted(found.items()):
        for bench_sets in sets:
            js = os.path.join(slot.work, f'eval_x{scale}_{"_".join(bench_sets)}.json')
            argv = slot.python('evaluate.py', '--data',
                               *[os.path.join(data, b) for b in bench_sets],
                               '--upscale_factor', str(scale), '--metrics',
                               'psnr,ssim,niqe,grid', '--json', js, *slot.s.device)
            for label, path in labels.items():
                argv += ['--weight', f'{label}={path}']
            procs.append((scale, js, subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True)))
    rows = []
    for scale, js, p in procs:
        try:
            text = p.communicate(timeout=max(1, slot.left() - 8))[0]
        except subprocess.TimeoutExpired:
            p.kill()
            text = p.communicate()[0]
            slot.note(f'evaluate.py x{scale}: stopped, out of time')
        slot.log_file.write(text)
        if os.path.isfile(js):
            rows += [{'scale': scale, **r} for r in json.load(open(js))]
    return rows


def choose(rows: list, found: dict, stages: list, room: int) -> list:
    """The produced generators worth bringing back, most valuable first, at most `room`:
    first those that pass the shipping checks measured here (SRResNet: higher PSNR-Y than the
    shipped file on Set5 and Set14; SRGAN: grid score within utils.GRID_LIMIT and NIQE below the
    shipped SRResNet's on Set14), then the others in run order."""
    def get(scale, method, dataset, key):
        for r in rows:
            if (r['scale'], r['method'], r['dataset']) == (scale, method, dataset):
                return r.get(key)
        return None

    passed, rest = [], []
    for st in stages:
        if st.name not in found.get(st.scale, {}):
            continue
        ok = False
        shipped = f'shipped_srresnet_x{st.scale}'
        if st.mode == 'generator':
            ok = all((get(st.scale, st.name, d, 'psnr_y') or 0)
                     > (get(st.scale, shipped, d, 'psnr_y') or 0) for d in ('Set5', 'Set14'))
        else:
            grid, niqe = (get(st.scale, st.name, 'Set14', k) for k in ('grid', 'niqe'))
            ref = get(st.scale, shipped, 'Set14', 'niqe')
            ok = (grid is not None and grid <= utils.GRID_LIMIT and niqe is not None
                  and ref is not None and niqe < ref)
        (passed if ok else rest).append(st)
    return (passed + rest)[:room]


def finish(slot: Slot, data: str, weights: str, stages: list) -> None:
    found = candidates(stages, weights)
    slot.log(f'evaluating {sum(len(v) for v in found.values())} generators and bicubic')
    rows = evaluate_all(slot, data, found)
    slot.results['evaluation'] = rows
    slot.results['evaluated'] = {str(k): {label: os.path.relpath(p, ROOT)
                                          for label, p in v.items()} for k, v in found.items()}
    others = ['results.json', 'bench_train.txt', 'slot.log']
    chosen = choose(rows, found, stages, min(7, MAX_FILES - len(others)))
    copied = []
    for st in chosen:
        path = found[st.scale][st.name]
        if os.path.getsize(path) <= MAX_FILE_BYTES:
            shutil.copyfile(path, os.path.join(slot.out, st.name + '.pth'))
            copied.append(st.name + '.pth')
    slot.results['copied'] = copied
    slot.results['wall_s'] = round(time.time() - slot.t0, 1)
    slot.log(f'copied {", ".join(copied) or "no weights"}; wall {slot.results["wall_s"]} s')
    for r in rows:
        vals = ', '.join(f'{k} {r[k]:.3f}' for k in ('psnr_y', 'ssim_y', 'niqe', 'grid')
                         if r.get(k) is not None)
        slot.log(f'x{r["scale"]} {r["dataset"]:6s} {r["method"]:26s} {vals}')
    with open(os.path.join(slot.out, 'results.json'), 'w') as f:
        json.dump(slot.results, f, indent=1)
        f.write('\n')


NAME = re.compile(r'^[A-Za-z0-9._-]+$')


def check(out: str) -> list:
    """What is wrong with `out` as a slot brings it back (empty: nothing): at most 8 plain
    files of at most 16 MiB with plain names; results.json with the bench, every run, the
    concurrency figures, pytest's summary and an evaluation row for every evaluated generator
    on Set5 and Set14; bench_train.txt; slot.log; every weights file loadable."""
    problems = []
    names = sorted(os.listdir(out))
    if len(names) > MAX_FILES:
        problems.append(f'{len(names)} files; at most {MAX_FILES} come back')
    for name in names:
        path = os.path.join(out, name)
        if not os.path.isfile(path) or not NAME.match(name):
            problems.append(f'{name}: not a plain file with a plain name')
        elif os.path.getsize(path) > MAX_FILE_BYTES:
            problems.append(f'{name}: over 16 MiB')
    for need in ('results.json', 'bench_train.txt', 'slot.log'):
        if need not in names:
            problems.append(f'{need}: missing')
    if 'bench_train.txt' in names and not parse_bench(open(os.path.join(out,
                                                                        'bench_train.txt')).read()):
        problems.append('bench_train.txt: no timing lines')
    if 'results.json' not in names:
        return problems
    r = json.load(open(os.path.join(out, 'results.json')))
    for key in ('bench', 'runs', 'concurrency', 'pytest_cuda', 'evaluation', 'copied', 'wall_s'):
        if key not in r:
            problems.append(f'results.json: no {key!r}')
    for name, run in r.get('runs', {}).items():
        if not run.get('attempts'):
            problems.append(f'results.json: run {name} never started')
    rows = {(e['scale'], e['method'], e['dataset']) for e in r.get('evaluation', [])}
    for scale, labels in r.get('evaluated', {}).items():
        for label in list(labels) + ['Bicubic', 'HR']:
            for dataset in ('Set5', 'Set14'):
                if (int(scale), label, dataset) not in rows:
                    problems.append(f'results.json: no x{scale} {label} {dataset} row')
    for name in r.get('copied', []):
        try:
            utils.load_generator(os.path.join(out, name))
        except (utils.SRError, OSError) as e:
            problems.append(f'{name}: {e}')
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['check']:
        problems = check(argv[1])
        for line in problems:
            print(f'check: {line}')
        print(f'check: {argv[1]} holds what a slot brings back' if not problems
              else f'check: {len(problems)} problem(s)')
        return 1 if problems else 0
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='the folder that comes back')
    p.add_argument('--budget', type=float, default=510, help='seconds of wall clock')
    p.add_argument('--data', default='slot_data', help='scripts/pack_slot_data.py\'s folder')
    p.add_argument('--weights', default='weights', help='the shipped files (only read)')
    p.add_argument('--work', default='runs/gpu_slot', help='scratch: runs, logs, evaluations')
    p.add_argument('--rehearsal', action='store_true', help='CPU, tiny settings')
    p.add_argument('--break_fast', default='', metavar='RUN',
                   help="make RUN's fast path fail (rehearses the fallback)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(os.path.join(args.work, 'runs'))
    slot = Slot(args)
    slot.log(f'slot: budget {args.budget:.0f} s, device {slot.results["device"]}, '
             f'torch {torch.__version__}')
    data, weights = ((args.data, args.weights) if not args.rehearsal
                     else rehearsal_inputs(slot))
    for need in [os.path.join(data, d) for d in ('train', 'valid', 'Set5', 'Set14')]:
        if not os.path.isdir(need):
            slot.note(f'{need}: missing (python scripts/pack_slot_data.py, then carry it)')
            return 2
    if args.rehearsal:
        proc = start_bench(slot)
        stages = train_all(slot, data, weights, {})
        found = finish_bench(slot, proc)
    else:
        found = bench(slot)
        stages = train_all(slot, data, weights, found)
    summarize_runs(slot, stages, found)
    finish(slot, data, weights, stages)
    return 0


if __name__ == '__main__':
    sys.exit(main())
