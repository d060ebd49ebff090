"""Multi-process training on the CPU (gloo): torchrun, SLURM (simulated), self-spawned DDP and
Lightning Fabric, with tiny networks and data. Per-rank evidence (parameter hashes, the samples
each rank drew, pids) comes from tests/ddp_probe.py, which wraps train.main.

Every launch runs in its own session with a timeout; whatever is left is killed at the end."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import utils
from conftest import ROOT, history


# every case starts several processes (DDP, torchrun, SLURM, Lightning): the full suite's, not
# the inner loop's
pytestmark = pytest.mark.slow

PROBE = str(ROOT / 'tests' / 'ddp_probe.py')
N_IMAGES = 8  # = batch 2 x 2 iterations x 2 ranks: one epoch is exactly one pass
LAUNCHER_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'GROUP_RANK',
                 'MASTER_ADDR', 'MASTER_PORT')


def clean_env(**extra) -> dict:
    """This environment without any launcher's variables (CI may itself run under SLURM),
    one thread per process (2 processes share a small CI machine)."""
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and not k.startswith(('SLURM_', 'TORCHELASTIC_', 'LT_'))}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.update(extra)
    return env


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    for sub, n, size in (('train', N_IMAGES, 48), ('val', 1, 32)):
        (root / sub).mkdir()
        for i in range(n):
            # smooth random images: noise blown up, so that bicubic LR keeps some structure
            small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((size, size), Image.BICUBIC).save(
                root / sub / f'{i}.png')
    return root


def train_args(data, out, mode='adversarial', epochs=2, *extra) -> list:
    return ['--trainset_dir', str(data / 'train'), '--validset_dir', str(data / 'val'),
            '--out_dir', str(out), '--mode', mode, '--epochs', str(epochs), '--num_blocks', '1',
            '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '2', '--workers', '0',
            '--amp', 'off', '--content_weight', '0', '--lr_step', '2', '--dist_timeout', '30',
            '--grid_limit', '0',  # a 2-iteration generator draws a dot grid; best.pth is checked
            *extra]


def descendants(pid: int) -> list:
    """Children, grandchildren, ... of `pid`, from /proc."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            ppid = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class Launches:
    """Processes started by one test; stop() kills what is left, with all their descendants
    (torchrun puts its workers in sessions of their own)."""

    def __init__(self):
        self.procs = []

    def start(self, cmd: list, dump: Path, env: dict = None) -> subprocess.Popen:
        dump.mkdir(parents=True, exist_ok=True)
        p = subprocess.Popen(cmd, cwd=ROOT, env=env or clean_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(p)
        return p

    def wait(self, p: subprocess.Popen, timeout: float) -> tuple:
        """(returncode, stdout, stderr); fails the test if `p` outlives `timeout`."""
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f'{p.args[:6]} still running after {timeout}s')
        return p.returncode, out, err

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                for pid in descendants(p.pid):
                    with_suppressed(os.kill, pid, signal.SIGKILL)
                with_suppressed(os.killpg, p.pid, signal.SIGKILL)
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass


def with_suppressed(fn, *a):
    try:
        fn(*a)
    except (ProcessLookupError, PermissionError):
        pass


def kill(pid: int, sig=signal.SIGKILL) -> None:
    """Signal `pid` if it is still one of the probe's processes (pids get reused)."""
    try:
        cmdline = Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
        return
    if b'ddp_probe' in cmdline or b'spawn_main' in cmdline:
        with_suppressed(os.kill, pid, sig)


@pytest.fixture
def launches():
    ls = Launches()
    yield ls
    ls.stop()


def probe(dump: Path, train_argv: list) -> list:
    return [sys.executable, PROBE, str(dump)] + train_argv


def torchrun(dump: Path, train_argv: list) -> list:
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
            '--nproc_per_node', '2', PROBE, str(dump)] + train_argv


def slurm_env(rank: int, port: int) -> dict:
    return clean_env(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS='2',
                     SLURM_JOB_NODELIST='localhost', SLURM_JOB_ID='4242',
                     MASTER_PORT=str(port))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def ranks(dump: Path, world_size: int = 2) -> list:
    """Per-rank evidence; both ranks must hold the same generator and discriminator."""
    out = [json.loads((dump / f'rank{r}.json').read_text()) for r in range(world_size)]
    assert [o['world_size'] for o in out] == [world_size] * world_size
    assert len({o['G'] for o in out}) == 1, 'ranks ended with different generators'
    assert len({o['D'] for o in out}) == 1, 'ranks ended with different discriminators'
    assert out[0]['wrote'], 'rank 0 wrote nothing'
    assert not [f for o in out[1:] for f in o['wrote']], 'ranks other than 0 wrote files'
    return out


def check_ok(rc, stdout, stderr) -> None:
    assert rc == 0, stderr[-4000:]


def check_one_set_of_files(out: Path, epochs: int) -> None:
    """What rank 0 alone writes: one history row, checkpoint, weights and samples per epoch."""
    assert [int(r['epoch']) for r in history(out)] == list(range(1, epochs + 1))
    assert sorted(os.listdir(out / 'checkpoints')) == sorted(
        f'checkpoint_epoch_{e}.pth' for e in range(max(1, epochs - 2), epochs + 1))
    assert 'best.pth' in os.listdir(out / 'weights')
    assert sorted(os.listdir(out / 'output' / str(epochs))) == ['0_bicubic.png', '0_hr.png',
                                                                 '0_sr.png']
    # no stray temporary files from two ranks writing the same path
    assert not [f for f in out.rglob('*') if f.is_file() and '.tmp' in f.name]


# ---------------------------------------------------------------------------------------------
# Units: sampler, SLURM host list, launcher detection, flag errors, --dp on the CPU
# ---------------------------------------------------------------------------------------------

def test_epoch_sampler_disjoint_within_an_epoch_fresh_across_epochs():
    n = 20
    samplers = [train.EpochSampler(n, 5, rank=r, world_size=2, seed=3) for r in range(2)]
    seen = {}
    for epoch in (1, 2):
        for s in samplers:
            s.set_epoch(epoch)
        a, b = (list(s) for s in samplers)
        assert len(a) == len(b) == 5
        assert not set(a) & set(b)
        seen[epoch] = a
        assert list(samplers[0]) == a  # an epoch's indices depend only on (seed, epoch, rank)
    assert seen[1] != seen[2]
    # world_size x num_samples = n: every sample exactly once per epoch
    parts = [train.EpochSampler(8, 4, rank=r, world_size=2) for r in range(2)]
    assert sorted(list(parts[0]) + list(parts[1])) == list(range(8))
    # more samples than the dataset: fresh permutations are chained, nothing out of range
    long = list(train.EpochSampler(3, 10))
    assert len(long) == 10 and set(long) == {0, 1, 2}


@pytest.mark.parametrize('nodelist, host', [
    ('gpu[03-05,9],cpu1', 'gpu03'), ('node1', 'node1'), ('a-[1-2]', 'a-1'),
    ('node7,node2', 'node7'), ('rack[2-3]-n[08,01]', 'rack2-n08'), ('c[9]', 'c9')])
def test_first_slurm_host(nodelist, host):
    assert train.first_slurm_host(nodelist) == host


def test_launch_env(monkeypatch):
    monkeypatch.setattr(os, 'environ', {'RANK': '3', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1',
                                        'SLURM_PROCID': '0', 'SLURM_NTASKS': '8'})
    assert train.launch_env() == {'rank': 3, 'world_size': 8, 'local_rank': 1,
                                  'launcher': 'torchrun'}  # torchrun inside a SLURM job
    env = {'SLURM_PROCID': '5', 'SLURM_NTASKS': '8', 'SLURM_LOCALID': '1',
           'SLURM_JOB_NODELIST': 'gpu[03-04]', 'SLURM_JOB_ID': '123456'}
    monkeypatch.setattr(os, 'environ', env)
    assert train.launch_env() == {'rank': 5, 'world_size': 8, 'local_rank': 1,
                                  'launcher': 'slurm'}
    assert env['MASTER_ADDR'] == 'gpu03' and env['MASTER_PORT'] == str(20000 + 123456 % 20000)
    monkeypatch.setattr(os, 'environ', {'SLURM_PROCID': '0', 'SLURM_NTASKS': '1'})
    assert train.launch_env() == {}  # a one-task job: not a SLURM-launched DDP run
    monkeypatch.setattr(os, 'environ', {})
    assert train.launch_env() == {}


@pytest.mark.parametrize('flags, message', [
    (['--ddp'], '--ddp on the CPU needs --nproc N'),
    (['--dp', '--ddp', '--nproc', '2'], 'choose one of --dp, --ddp and --lightning'),
    (['--ddp', '--nproc', '2', '--sync_bn'], '--sync_bn needs --cuda')])
def test_bad_distributed_flags_give_one_line_errors(monkeypatch, capsys, tmp_path, flags,
                                                    message):
    monkeypatch.setattr(os, 'environ', clean_env())
    assert train.main(flags + ['--trainset_dir', str(tmp_path / 'none'),
                               '--out_dir', str(tmp_path / 'run')]) == 2  # bad flags
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and message in err and '\n' not in err
    assert not (tmp_path / 'run').exists()


def test_lightning_missing_gives_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, 'lightning', None)  # import lightning -> ImportError
    assert train.main(['--lightning', '--out_dir', str(tmp_path / 'run')]) == 2  # no package
    err = capsys.readouterr().err.strip()
    assert err == ("error: --lightning needs the lightning package: python -m pip install "
                   "'lightning==2.6.6' (or every optional package: python -m pip install -r "
                   "requirements-dev.txt)")


def test_dp_on_cpu_warns_trains_one_device_and_saves_plain_keys(data, tmp_path, capsys):
    out = tmp_path / 'dp'
    assert train.main(train_args(data, out, 'generator', 1, '--dp')) == 0
    assert 'warning: --dp needs at least two GPUs; training on one device' in \
        capsys.readouterr().out
    g = utils.load_generator(str(out / 'weights' / 'best.pth'))
    assert g.config['num_blocks'] == 1
    # with DataParallel around the networks, files still hold bare (non-"module.") keys
    args = train.get_args(train_args(data, out, 'adversarial', 1))
    rt = train.Runtime(args)
    s = train.build(args, rt)
    s.G, s.D = (train.nn.DataParallel(net) for net in (s.G, s.D))
    state = train.state_of(s, 1, args, [], 0.0)
    assert not [k for k in (*state['generator'], *state['discriminator'])
                if k.startswith('module.')]
    weights = utils.weights_dict(s.G)
    assert not [k for k in weights['generator'] if k.startswith('module.')]


# ---------------------------------------------------------------------------------------------
# Real multi-process runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def torchrun_run(data, tmp_path_factory):
    """torchrun, 2 processes, adversarial, 2 epochs: (out_dir, dump, stdout)."""
    tmp = tmp_path_factory.mktemp('torchrun')
    ls = Launches()
    try:
        p = ls.start(torchrun(tmp / 'dump', ['--ddp'] + train_args(data, tmp / 'out')),
                     tmp / 'dump')
        rc, out, err = ls.wait(p, 150)
    finally:
        ls.stop()
    check_ok(rc, out, err)
    return tmp / 'out', tmp / 'dump', out


def test_torchrun_adversarial_ranks_agree_and_rank0_alone_writes(torchrun_run):
    out, dump, stdout = torchrun_run
    r0, r1 = ranks(dump)
    for epoch in ('1', '2'):
        # disjoint halves of the data in each epoch, the whole set between them
        assert not set(r0['seen'][epoch]) & set(r1['seen'][epoch])
        assert sorted(r0['seen'][epoch] + r1['seen'][epoch]) == list(range(N_IMAGES))
    assert r0['seen']['1'] != r0['seen']['2']
    check_one_set_of_files(out, 2)
    assert [line[:8] for line in stdout.splitlines() if line.startswith('epoch ')] == \
        ['epoch 1:', 'epoch 2:']  # only rank 0 prints
    assert 'batch 2 x 2 process(es)' in stdout


FAKE_SRUN = """#!/bin/bash
# srun on one machine: SLURM_NTASKS copies of the command, each with its SLURM_PROCID
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((r = 0; r < SLURM_NTASKS; r++)); do
    SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NODEID=0 "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def sbatch_env(tmp_path: Path, **extra) -> dict:
    """What sbatch gives scripts/slurm_train.sbatch for one node and two tasks (CPU), with a
    stand-in srun first on PATH."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text(FAKE_SRUN)
    (bin_dir / 'srun').chmod(0o755)
    path = f'{bin_dir}:{Path(sys.executable).parent}:{os.environ["PATH"]}'
    return clean_env(PATH=path, SLURM_SUBMIT_DIR=str(ROOT), SLURM_NTASKS='2',
                     SLURM_NTASKS_PER_NODE='2', SLURM_NNODES='1', SLURM_JOB_NUM_NODES='1',
                     SLURM_JOB_NODELIST='localhost', SLURM_NODELIST='localhost',
                     SLURM_JOB_ID='4242', SLURM_JOB_NAME='srgan', SLURM_CPUS_PER_TASK='1',
                     MASTER_PORT=str(free_port()), CUDA_FLAG='', **extra)


def test_ddp_resume_is_exact_spawned_and_under_slurm(torchrun_run, data, tmp_path, launches):
    """torchrun epochs 1-2, then self-spawned --resume latest to epoch 3, ends exactly where
    a straight 3-epoch run of scripts/slurm_train.sbatch (srun with two tasks) ends."""
    src, _, _ = torchrun_run
    resumed = tmp_path / 'resumed'
    shutil.copytree(src, resumed)
    p = launches.start(probe(tmp_path / 'd_spawn', ['--ddp', '--nproc', '2', '--resume',
                                                    'latest'] + train_args(data, resumed,
                                                                           epochs=3)),
                       tmp_path / 'd_spawn')
    rc, out, err = launches.wait(p, 150)
    check_ok(rc, out, err)
    assert 'checkpoint_epoch_2.pth (epoch 2)' in out
    check_one_set_of_files(resumed, 3)

    straight = tmp_path / 'straight'
    p = launches.start(['bash', 'scripts/slurm_train.sbatch'] + train_args(data, straight,
                                                                          epochs=3),
                       tmp_path / 'd_slurm', sbatch_env(tmp_path))
    rc, out, err = launches.wait(p, 150)
    check_ok(rc, out, err)
    assert 'batch 2 x 2 process(es)' in out
    check_one_set_of_files(straight, 3)
    ranks(tmp_path / 'd_spawn')
    a, b = (utils.load_checkpoint(str(d / 'checkpoints' / 'checkpoint_epoch_3.pth'))
            for d in (resumed, straight))
    for k in ('generator', 'discriminator'):
        assert a[k].keys() == b[k].keys()
        assert all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k


def test_torchrun_generator_mode(data, tmp_path, launches):
    p = launches.start(torchrun(tmp_path / 'd', ['--ddp'] + train_args(data, tmp_path / 'o',
                                                                       'generator')),
                       tmp_path / 'd')
    check_ok(*launches.wait(p, 150))
    r0, _ = ranks(tmp_path / 'd')
    assert r0['D'] is None
    check_one_set_of_files(tmp_path / 'o', 2)


def test_torchrun_two_nodes(data, tmp_path, launches):
    """Two torchrun agents with one process each, as on two nodes (here both on localhost)."""
    port = str(free_port())
    procs = [launches.start([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2',
                             '--node_rank', str(n), '--nproc_per_node', '1', '--master_addr',
                             '127.0.0.1', '--master_port', port, PROBE, str(tmp_path / 'd'),
                             '--ddp'] + train_args(data, tmp_path / 'o', 'generator'),
                            tmp_path / 'd') for n in (0, 1)]
    for p in procs:
        check_ok(*launches.wait(p, 150))
    r0, r1 = ranks(tmp_path / 'd')
    assert not set(r0['seen']['1']) & set(r1['seen']['1'])
    check_one_set_of_files(tmp_path / 'o', 2)


def test_nan_on_one_rank_stops_every_rank_at_the_same_iteration(data, tmp_path, launches):
    dump = tmp_path / 'd'
    dump.mkdir()
    (dump / 'poison').write_text('1')  # rank 1 alone trains on NaN images
    p = launches.start(torchrun(dump, ['--ddp'] + train_args(data, tmp_path / 'o', 'generator')
                                + ['--log_every', '1']), dump)
    rc, _, err = launches.wait(p, 150)
    assert rc != 0
    assert err.count('error: loss became NaN/inf at epoch 1, iteration 1;') == 2, err[-3000:]
    assert not (tmp_path / 'o' / 'checkpoints').exists()


def test_lightning_checkpoints_resume_both_ways(data, tmp_path, launches):
    """plain epoch 1 -> Lightning (2 processes, Fabric's own launcher) epoch 2 -> plain
    epoch 3, one checkpoint format throughout. From the same epoch-1 checkpoint, Lightning
    under SLURM (the sbatch script with LAUNCH=lightning) and plain DDP reach the same epoch 2:
    the same training."""
    out, out_slurm, out_ddp = tmp_path / 'run', tmp_path / 'run_slurm', tmp_path / 'run_ddp'
    assert train.main(train_args(data, out, epochs=1)) == 0
    shutil.copytree(out, out_slurm)
    shutil.copytree(out, out_ddp)
    resume = ['--resume', 'latest']
    p = launches.start(probe(tmp_path / 'd', ['--lightning', '--nproc', '2'] + resume
                             + train_args(data, out, epochs=2)), tmp_path / 'd')
    rc, stdout, err = launches.wait(p, 180)
    check_ok(rc, stdout, err)
    assert 'checkpoint_epoch_1.pth (epoch 1)' in stdout
    assert 'batch 2 x 2 process(es)' in stdout
    ranks(tmp_path / 'd')
    check_one_set_of_files(out, 2)

    p = launches.start(['bash', 'scripts/slurm_train.sbatch'] + resume
                       + train_args(data, out_slurm, epochs=2),
                       tmp_path / 'd_slurm', sbatch_env(tmp_path, LAUNCH='lightning'))
    rc, stdout, err = launches.wait(p, 180)
    check_ok(rc, stdout, err)
    assert 'batch 2 x 2 process(es)' in stdout
    assert stdout.count('resumed from') == 1
    p = launches.start(probe(tmp_path / 'd_ddp', ['--ddp', '--nproc', '2'] + resume
                             + train_args(data, out_ddp, epochs=2)), tmp_path / 'd_ddp')
    check_ok(*launches.wait(p, 150))
    a, b, c = (utils.load_checkpoint(str(d / 'checkpoints' / 'checkpoint_epoch_2.pth'))
               for d in (out, out_slurm, out_ddp))
    for k in ('generator', 'discriminator'):
        assert all(torch.equal(a[k][n], b[k][n]) and torch.equal(a[k][n], c[k][n])
                   for n in a[k]), k

    assert train.main(train_args(data, out, epochs=3) + resume) == 0
    check_one_set_of_files(out, 3)


# ---------------------------------------------------------------------------------------------
# Failures: a lost rank ends the whole job, non-zero, in bounded time
# ---------------------------------------------------------------------------------------------

def long_run(data, out) -> list:
    """Enough epochs to be still training when the test strikes."""
    return train_args(data, out, 'generator', 100000) + ['--iters_per_epoch', '50',
                                                         '--validset_dir', '', '--keep', '1']


def wait_for(path: Path, p: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while not path.exists():
        if p.poll() is not None:
            pytest.fail(f'ended before {path.name} appeared:\n{p.communicate()[1][-3000:]}')
        if time.time() - t0 > timeout:
            pytest.fail(f'{path} did not appear within {timeout}s')
        time.sleep(0.2)


@pytest.mark.parametrize('launcher', ['torchrun', 'spawn', 'lightning'])
def test_killed_rank_fails_the_job(launcher, data, tmp_path, launches):
    dump, out = tmp_path / 'd', tmp_path / 'o'
    argv = long_run(data, out)
    cmd = {'torchrun': torchrun(dump, ['--ddp'] + argv),
           'spawn': probe(dump, ['--ddp', '--nproc', '2'] + argv),
           'lightning': probe(dump, ['--lightning', '--nproc', '2'] + argv)}[launcher]
    p = launches.start(cmd, dump)
    wait_for(out / 'history.csv', p, 120)  # epoch 1 done: both ranks are training
    kill(int((dump / 'rank1.pid').read_text()))
    t0 = time.time()
    rc, _, err = launches.wait(p, 60)
    assert rc != 0 and time.time() - t0 < 60
    if launcher == 'spawn':
        assert 'error: DDP process 1 terminated with signal SIGKILL' in err


def test_hung_rank_times_out_under_slurm(data, tmp_path, launches):
    """No launcher watches srun's tasks here: rank 0 must give up after --dist_timeout."""
    dump, out, port = tmp_path / 'd', tmp_path / 'o', free_port()
    argv = ['--ddp'] + long_run(data, out) + ['--dist_timeout', '8']
    procs = [launches.start(probe(dump, argv), dump, slurm_env(r, port)) for r in (0, 1)]
    wait_for(out / 'history.csv', procs[0], 120)
    os.kill(procs[1].pid, signal.SIGSTOP)  # alive but silent: a hung node, not a dead one
    t0 = time.time()
    rc, _, err = launches.wait(procs[0], 60)
    assert rc != 0 and time.time() - t0 < 8 + 30, err[-2000:]
