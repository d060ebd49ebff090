"""Batches cut on the training device (utils.DeviceCrops, train.py --device_batches): the same
crops, flips and LR as TrainSet, seeded per (seed, epoch, rank), bitwise resume; the optimizer
implementation (foreach / fused Adam) and checkpoints across it; benchmarks/bench_train.py runs
its three paths on the CPU."""
import copy
import itertools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import train
import utils
from conftest import ROOT, ckpt, same_state

# one intra-op thread for this module too: the machine is shared, resumes compared bit for bit
pytestmark = pytest.mark.usefixtures('one_thread')
SIZES = [(40, 50), (64, 33), (32, 32), (37, 90)]  # (H, W): any sizes, one exactly the crop
TINY = ['--num_blocks', '2', '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '3',
        '--workers', '0', '--log_every', '2', '--content_weight', '0']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """Training images of different sizes: smooth noise, so that crops differ everywhere."""
    root = tmp_path_factory.mktemp('train')
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def crops(folder):
    return utils.DeviceCrops(utils.TrainSet(str(folder), 4, 32, cache=True), 'cpu')


def trainset_sample(dataset, i: int, top: int, left: int, flips: list) -> tuple:
    """dataset[i] with its random draws replaced by the given ones (TrainSet's own code path)."""
    draws = iter([torch.tensor(top), torch.tensor(left), torch.tensor(flips)])
    real = torch.randint
    torch.randint = lambda *a, **k: next(draws)
    try:
        return dataset[i]
    finally:
        torch.randint = real


def test_cut_is_trainset_crop_flip_and_downscale(folder, crops):
    """Every image, the 8 flips/rotations, corner and inner positions: the same HR pixels as
    TrainSet's per-sample path, and the same 8-bit LR, bit for bit."""
    dataset = utils.TrainSet(str(folder), 4, 32, cache=True)
    cases = []
    for i, (h, w) in enumerate(SIZES):
        for top, left in {(0, 0), (h - 32, w - 32), ((h - 32) // 2, (w - 32) // 3)}:
            cases += [(i, top, left, list(f)) for f in itertools.product([0, 1], repeat=3)]
    index, top, left, flips = (torch.tensor(v) for v in zip(*cases))
    lr, hr = crops.cut(index, top, left, flips.bool())
    assert hr.shape == (len(cases), 3, 32, 32) and lr.shape == (len(cases), 3, 8, 8)
    for k, (i, t, l, f) in enumerate(cases):
        ref_lr, ref_hr = trainset_sample(dataset, i, t, l, f)
        assert torch.equal(hr[k], ref_hr), cases[k]
        assert torch.equal(lr[k], ref_lr), cases[k]
    # the LR is on the 8-bit grid, as an LR image read from disk would be
    assert torch.equal(lr, utils.quantize(lr)) and torch.equal(lr, lr.mul(255).round().div(255))


def test_draws_cover_every_position_and_orientation(crops):
    crops.generator.manual_seed(1)
    index = torch.arange(len(SIZES)).repeat(2000)
    top, left, flips = crops.draw(index)
    for i, (h, w) in enumerate(SIZES):
        sel = index == i
        assert set(top[sel].tolist()) == set(range(h - 32 + 1)), i
        assert set(left[sel].tolist()) == set(range(w - 32 + 1)), i
    codes = (flips.long() * torch.tensor([4, 2, 1])).sum(1)
    counts = torch.bincount(codes, minlength=8)
    assert counts.min() > len(index) / 8 * 0.85  # all 8 orientations, about equally often


def test_no_augmentation_means_no_flips(folder):
    plain = utils.DeviceCrops(utils.TrainSet(str(folder), 4, 32, augment=False, cache=True), 'cpu')
    _, _, flips = plain.draw(torch.arange(4).repeat(50))
    assert not flips.any()


def test_batches_follow_the_indices_and_the_seed(crops):
    def epoch(seed, order):
        crops.generator.manual_seed(seed)
        return list(crops.batches(order, 2))
    order = [3, 1, 0, 2, 1, 3, 0]  # 7 indices, batch 2: 3 batches, the last index left over
    a, b, c = epoch(5, order), epoch(5, order), epoch(6, order)
    assert len(a) == 3
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not any(torch.equal(x[1], y[1]) for x, y in zip(a, c))
    # batch k holds crops of images order[2k], order[2k + 1]: image 2 is exactly the crop size
    crops.generator.manual_seed(5)
    hr = torch.cat([h for _, h in crops.batches([2, 2], 2)])
    whole = crops.buffer[crops.offsets[2]:crops.offsets[2] + 3 * 32 * 32].view(3, 32, 32)
    for x in hr:
        assert any(torch.equal(x.mul(255).round().byte(), o) for o in orientations(whole))


def orientations(x: torch.Tensor) -> list:
    """The 8 flips/rotations of a square (3, c, c) tensor."""
    out = []
    for hflip, vflip, transpose in itertools.product([False, True], repeat=3):
        y = x.flip(-1) if hflip else x
        y = y.flip(-2) if vflip else y
        out.append(y.transpose(-1, -2) if transpose else y)
    return out


def test_ranks_and_epochs_get_different_crops(crops):
    seeds = {train.data_seed(0, epoch, rank) for epoch in (1, 2, 3) for rank in (0, 1, 2)}
    assert len(seeds) == 9
    crops.generator.manual_seed(train.data_seed(0, 1, 0))
    r0 = crops.draw(torch.zeros(8, dtype=torch.long))
    crops.generator.manual_seed(train.data_seed(0, 1, 1))
    r1 = crops.draw(torch.zeros(8, dtype=torch.long))
    assert not (torch.equal(r0[0], r1[0]) and torch.equal(r0[1], r1[1]))


def test_an_unreadable_image_is_replaced_by_the_next_one(folder, tmp_path):
    """As in TrainSet: an image whose header reads but whose pixels do not decode is skipped
    with a warning, and the next image is used in its place."""
    root = tmp_path / 'broken'
    root.mkdir()
    for i in (0, 2):
        (root / f'{i}.png').write_bytes((folder / f'{i}.png').read_bytes())
    whole = (folder / '1.png').read_bytes()
    (root / '1.png').write_bytes(whole[:len(whole) // 2])  # truncated: header fine, data not
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dataset = utils.TrainSet(str(root), 4, 32, cache=True)
    assert dataset.cache[1] is None
    assert utils.DeviceCrops.nbytes(dataset) == 3 * (40 * 50 + 32 * 32)
    crops = utils.DeviceCrops(dataset, 'cpu')
    assert crops.buffer.numel() == 3 * (40 * 50 + 32 * 32)
    index = torch.tensor([1, 2])
    zero, no_flip = torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool)
    _, hr = crops.cut(index, zero, zero, no_flip)
    assert torch.equal(hr[0], hr[1])
    assert torch.equal(hr[1].mul(255).round().byte(), dataset.cache[2][:, :32, :32])


# ---------------------------------------------------------------------------------------------
# train.py --device_batches
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode, device, cache, fits, expected', [
    ('off', 'cuda', True, True, False),
    ('auto', 'cpu', True, True, False),     # the CPU keeps its DataLoader unless asked
    ('auto', 'cuda', False, True, False),   # auto needs --cache
    ('auto', 'cuda', True, True, True),
    ('auto', 'cuda', True, False, False),   # does not fit: the DataLoader, with a warning
    ('on', 'cpu', False, True, True),
    ('on', 'cuda', True, True, True),
])
def test_when_batches_are_made_on_the_device(mode, device, cache, fits, expected):
    assert train.wants_device_batches(mode, device, cache, fits) == expected


def test_device_batches_on_that_do_not_fit_is_one_line(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, 'free_device_memory', lambda device: 100)
    rc = fit(folder, tmp_path, '--device_batches', 'on', '--epochs', '1')
    err = capsys.readouterr().err.strip()
    assert rc == 1 and '\n' not in err
    assert err.startswith('error: --device_batches on:') and 'MB' in err and 'off' in err


def fit(folder, out, *extra) -> int:
    argv = ['--trainset_dir', str(folder), '--out_dir', str(out), *TINY, *extra]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return train.main(argv)


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['generator', 'adversarial'])
def test_device_batches_train_and_resume_bit_for_bit(mode, folder, tmp_path, monkeypatch):
    """3 epochs straight == 1 epoch, then --resume latest to 3; the batches come from
    DeviceCrops (no DataLoader is made), and differ from the DataLoader path's."""
    made = []
    batches = utils.DeviceCrops.batches
    monkeypatch.setattr(utils.DeviceCrops, 'batches',
                        lambda self, *a: made.append(1) or batches(self, *a))
    monkeypatch.setattr(utils, 'make_loader', lambda *a, **k: pytest.fail('DataLoader made'))
    flags = ['--mode', mode, '--device_batches', 'on', '--amp', 'off', '--lr_step', '2']
    a, b = tmp_path / 'a', tmp_path / 'b'
    assert fit(folder, a, *flags, '--epochs', '3') == 0
    assert made == [1, 1, 1]
    assert fit(folder, b, *flags, '--epochs', '1') == 0
    assert fit(folder, b, *flags, '--epochs', '3', '--resume', 'latest') == 0
    straight, resumed = ckpt(a, 3), ckpt(b, 3)
    for key in straight.keys() - {'args', 'history', 'best_psnr'}:
        assert same_state(straight[key], resumed[key]), key
    assert [r['loss_g'] for r in straight['history']] == [r['loss_g'] for r in resumed['history']]
    assert all(np.isfinite(r['loss_g']) for r in straight['history'])
    monkeypatch.undo()
    c = tmp_path / 'c'
    assert fit(folder, c, '--mode', mode, '--device_batches', 'off', '--amp', 'off',
               '--epochs', '1', '--lr_step', '2') == 0
    assert ckpt(c, 1)['history'][0]['loss_g'] != straight['history'][0]['loss_g']


def test_nan_stops_one_log_interval_later_naming_its_iteration(folder, tmp_path, monkeypatch,
                                                                capsys):
    """The host reads each log point's figures at the next one (never waiting for the step it
    has just queued): a NaN at iteration 1 is seen at iteration 2, and named as iteration 1."""
    calls, step = [], train.train_step

    def nan_at_iteration1(*args):
        losses = step(*args)
        calls.append(1)
        if len(calls) == 1:
            losses['loss_g'] = losses['loss_g'] * float('nan')
        return losses
    monkeypatch.setattr(train, 'train_step', nan_at_iteration1)
    rc = fit(folder, tmp_path, '--device_batches', 'on', '--epochs', '1', '--log_every', '1')
    err = capsys.readouterr().err.strip()
    assert rc == 1 and '\n' not in err and 'epoch 1, iteration 1;' in err
    assert len(calls) == 2
    assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.slow
def test_device_batches_under_ddp(folder, tmp_path):
    """Two gloo processes cut their batches themselves, each from its own seed, and finish."""
    out = tmp_path / 'ddp'
    cmd = [sys.executable, str(ROOT / 'train.py'), '--trainset_dir', str(folder),
           '--out_dir', str(out), *TINY, '--ddp', '--nproc', '2', '--device_batches', 'on',
           '--amp', 'off', '--epochs', '1']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ckpt(out, 1)['epoch'] == 1


# ---------------------------------------------------------------------------------------------
# Optimizer implementation
# ---------------------------------------------------------------------------------------------

def test_adam_is_foreach_on_the_cpu(folder):
    args = train.get_args(['--trainset_dir', str(folder), *TINY, '--mode', 'adversarial'])
    s = train.build(args, train.Runtime(args))
    for k in ('opt_g', 'opt_d'):
        group = getattr(s, k).param_groups[0]
        assert group['foreach'] is True and not group['fused'], k
    assert train.adam_options(torch.device('cuda')) == {'fused': True}


def test_checkpoint_of_another_adam_implementation_loads_and_keeps_this_one():
    """A checkpoint written by the plain for-loop Adam (older runs) loads into foreach and into
    fused Adam; the optimizer keeps its own implementation, and the next step is the same."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    old = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(2):
        old.zero_grad()
        net(torch.randn(5, 4)).square().mean().backward()
        old.step()
    saved = old.state_dict()
    x = torch.randn(5, 4)
    results = []
    for options in ({'foreach': True}, {'fused': True}, {}):
        n = torch.nn.Linear(4, 3)
        n.load_state_dict(net.state_dict())
        opt = torch.optim.Adam(n.parameters(), 1e-2, **options)
        train.load_optimizer(opt, copy.deepcopy(saved))  # as if read from the file
        for key, value in options.items():
            assert opt.param_groups[0][key] is value
        n(x).square().mean().backward()
        opt.step()
        results.append(n.weight.detach().clone())
    assert torch.allclose(results[0], results[2], atol=1e-7)
    assert torch.allclose(results[1], results[2], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# benchmarks/bench_train.py on the CPU
# ---------------------------------------------------------------------------------------------

def test_bench_train_runs_the_three_paths_on_the_cpu():
    """(a), (b) and (c) run on the same batches and their losses are compared (generator step;
    the adversarial step runs the same code with a larger network)."""
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'bench_train.py'), '--num_blocks', '1',
           '--crop_size', '32', '--batch_sizes', '2', '--steps', '2', '--warmup', '1',
           '--images', '4', '--modes', 'generator']
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [' '.join(line.split()) for line in done.stdout.splitlines()]
    for path in ('(a) fp32 eager NCHW', '(b) default', '(c) new path'):
        assert any(line.startswith(f'generator {path} batch 2 ') and 'images/s' in line
                   for line in lines), (path, done.stdout)
    assert any(line.startswith('generator batch 2 losses agree') for line in lines), done.stdout
