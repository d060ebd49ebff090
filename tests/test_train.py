"""train.py on the CPU with tiny settings: outputs, loss wiring, EMA, exact resume (also after a
SIGKILL), one-line errors, NaN stop, schedule, TensorBoard; evaluate.py / test_image.py read
the weights it writes."""
import copy
import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate
import train
import utils
from conftest import ROOT, ckpt, history, load, one_error, same_state, same_tensors
from model import Discriminator

# Tiny but real: two residual blocks, 32 px crops, 3 iterations of 2 images per epoch.
TINY = ['--num_blocks', '2', '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '3',
        '--workers', '0', '--log_every', '1000']
ADV = ['--mode', 'adversarial', '--content_weight', '0']  # SRGAN-MSE: no VGG, fast


pytestmark = pytest.mark.usefixtures('one_thread')  # resumes are compared bit for bit


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Four 64 px training images and two 48 px validation images (crops of natural photos)."""
    from skimage import data as sk
    root = tmp_path_factory.mktemp('data')
    images = [sk.astronaut()[100:164, 180:244], sk.coffee()[150:214, 200:264],
              sk.chelsea()[100:164, 150:214], sk.rocket()[100:164, 100:164]]
    (root / 'train').mkdir()
    (root / 'valid').mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / 'train' / f'{i}.png')
    for i, img in enumerate(images[:2]):
        Image.fromarray(img[8:56, 8:56]).save(root / 'valid' / f'v{i}.png')
    return root


def fit(data, out, *extra) -> int:
    """train.main in this process on the tiny data set; returns its exit code."""
    argv = ['--trainset_dir', str(data / 'train'), '--out_dir', str(out), *TINY, *extra]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the random-VGG warning, expected here
        return train.main(argv)


# ---------------------------------------------------------------------------------------------
# Runs shared by several tests: 4 epochs straight (A); 2 epochs, then --resume latest to 4 (B);
# B's state after 2 epochs resumed with --resume 2 to 3 (C). Their discriminator has 8 base
# channels instead of 64: the full one (19M parameters, most in its first dense layer) makes
# each checkpoint ~225 MB with its Adam state, which is most of a tiny run's time; the training
# steps below test the full one.
# ---------------------------------------------------------------------------------------------

CONFIGS = {
    'generator-fp32': ['--amp', 'off'],
    'adversarial-fp32-ema': [*ADV, '--amp', 'off', '--ema', '0.9'],
    'generator-auto': ['--amp', 'auto'],  # bf16 autocast where the CPU has AMX / AVX512-BF16
    'adversarial-auto': [*ADV, '--amp', 'auto'],
    'adversarial-randomvgg': ['--mode', 'adversarial', '--vgg_weights', 'random'],
}


@pytest.fixture(scope='module', params=list(CONFIGS))
def runs(request, data, tmp_path_factory):
    name, extra = request.param, CONFIGS[request.param]
    root = tmp_path_factory.mktemp(name)
    a, b, c = root / 'a', root / 'b', root / 'c'
    calls = []
    with pytest.MonkeyPatch.context() as mp:  # count the iterations run A makes
        step = train.train_step
        mp.setattr(train, 'train_step', lambda *args: calls.append(1) or step(*args))
        mp.setattr(train, 'Discriminator', functools.partial(Discriminator, channels=8))
        # --grid_limit 0: tiny adversarial generators draw a dot grid (test_grid_score.py)
        assert fit(data, a, *extra, '--epochs', '4', '--keep', '2',
                   '--validset_dir', str(data / 'valid'), '--grid_limit', '0') == 0
        n = len(calls)
        # --lr_step 2 as in A (where it is half of --epochs 4 by default)
        assert fit(data, b, *extra, '--epochs', '2', '--lr_step', '2') == 0
        shutil.copytree(b, c)
        assert fit(data, b, *extra, '--epochs', '4', '--lr_step', '2', '--resume', 'latest') == 0
        assert fit(data, c, *extra, '--epochs', '3', '--lr_step', '2', '--resume', '2') == 0
    return {'name': name, 'a': a, 'b': b, 'c': c, 'iterations': n}


def test_run_writes_checkpoints_weights_history_and_samples(runs):
    a, adversarial = runs['a'], runs['name'].startswith('adversarial')
    # --keep 2: only the two newest checkpoints and per-epoch weights remain
    assert sorted(os.listdir(a / 'checkpoints')) == ['checkpoint_epoch_3.pth',
                                                     'checkpoint_epoch_4.pth']
    assert sorted(os.listdir(a / 'weights')) == ['G_epoch_3.pth', 'G_epoch_4.pth', 'best.pth']
    state = ckpt(a, 4)
    expected = {'epoch', 'args', 'history', 'best_psnr', 'config', 'generator', 'rng',
                'num_threads', 'opt_g',
                'sched_g', 'scaler_g'}
    if adversarial:
        expected |= {'discriminator', 'opt_d', 'sched_d', 'scaler_d'}
    if '--ema' in CONFIGS[runs['name']]:
        expected.add('ema')
    assert set(state) == expected
    assert state['epoch'] == 4 and len(state['history']) == 4
    assert state['args']['num_blocks'] == 2

    weights = load(a / 'weights' / 'G_epoch_4.pth')
    assert {'generator', 'upscale_factor', 'num_blocks', 'channels'} <= set(weights)
    assert (weights['upscale_factor'], weights['num_blocks'], weights['channels']) == (4, 2, 64)
    # the weights file holds the EMA generator when EMA is on
    assert same_tensors(weights['generator'], state.get('ema', state['generator']))
    assert utils.load_generator(str(a / 'weights' / 'best.pth')).config['num_blocks'] == 2

    rows = history(a)
    with open(a / 'history.csv', newline='') as f:
        assert next(csv.reader(f)) == train.HISTORY_FIELDS
    assert [r['epoch'] for r in rows] == ['1', '2', '3', '4']
    for key in ['loss_g', 'loss_pixel', 'psnr_y', 'ssim_y', 'lr_g']:
        assert all(r[key] for r in rows), key
    if adversarial:
        assert all(r['loss_adv'] and r['loss_d'] and r['lr_d'] for r in rows)
    # best.pth is the epoch with the highest validation PSNR
    psnrs = [float(r['psnr_y']) for r in rows]
    assert load(a / 'weights' / 'best.pth')['epoch'] == psnrs.index(max(psnrs)) + 1
    for epoch in range(1, 5):
        assert sorted(os.listdir(a / 'output' / str(epoch))) == [
            'v0_bicubic.png', 'v0_hr.png', 'v0_sr.png', 'v1_bicubic.png', 'v1_hr.png', 'v1_sr.png']


def test_iterations_per_epoch_and_lr_step(runs):
    assert runs['iterations'] == 4 * 3  # --epochs 4, --iters_per_epoch 3
    rows = history(runs['a'])
    # --lr_step defaults to half of --epochs: epochs 1-2 at --lr, 3-4 at --lr / 10
    assert [float(r['lr_g']) for r in rows] == [1e-4, 1e-4, 1e-5, 1e-5]
    if runs['name'].startswith('adversarial'):
        assert [float(r['lr_d']) for r in rows] == [1e-4, 1e-4, 1e-5, 1e-5]


def test_resume_is_exact(runs):
    """2 epochs + --resume latest to 4 == 4 epochs straight, bit for bit; --resume 2 too."""
    a, b, c = runs['a'], runs['b'], runs['c']
    straight, resumed = ckpt(a, 4), ckpt(b, 4)
    assert straight.keys() == resumed.keys()
    # networks, EMA, optimizers, schedulers, scalers and RNG state all as if never stopped
    for key in straight.keys() - {'args', 'history', 'best_psnr'}:
        assert same_state(straight[key], resumed[key]), key
    assert same_tensors(load(a / 'weights' / 'G_epoch_3.pth')['generator'],
                        load(c / 'weights' / 'G_epoch_3.pth')['generator'])
    assert [r['epoch'] for r in history(b)] == ['1', '2', '3', '4']
    assert [r['epoch'] for r in history(c)] == ['1', '2', '3']
    # the losses of the resumed epochs are those of the straight run
    assert [r['loss_g'] for r in history(b)] == [r['loss_g'] for r in history(a)]


def test_resume_from_an_older_epoch_rewrites_history(data, tmp_path):
    """Going back to epoch 1 of a 3-epoch run (--overwrite_later: a new branch, the later
    epochs moved aside) leaves history.csv without duplicate epochs."""
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '3', '--iters_per_epoch', '1') == 0
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '2', '--iters_per_epoch', '1',
               '--resume', '1', '--overwrite_later') == 0
    assert [r['epoch'] for r in history(tmp_path)] == ['1', '2']


def test_resume_removes_temporaries_a_kill_left(data, tmp_path):
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '1', '--iters_per_epoch', '1') == 0
    stale = [tmp_path / 'checkpoints' / '.tmp_abc.pth', tmp_path / 'weights' / '.tmp_def.pth']
    for f in stale:
        f.write_bytes(b'half a checkpoint')
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '2', '--iters_per_epoch', '1',
               '--resume', 'latest') == 0
    assert not any(f.exists() for f in stale)
    assert ckpt(tmp_path, 2)['epoch'] == 2


# ---------------------------------------------------------------------------------------------
# evaluate.py and test_image.py read the weights train.py writes
# ---------------------------------------------------------------------------------------------

def test_evaluate_and_test_image_load_trained_weights(data, tmp_path, capsys):
    import test_image  # here, so that the rest of this file does not depend on that script
    out = tmp_path / 'run'
    assert fit(data, out, '--amp', 'off', '--epochs', '1',
               '--validset_dir', str(data / 'valid')) == 0
    best, last = out / 'weights' / 'best.pth', out / 'weights' / 'G_epoch_1.pth'
    capsys.readouterr()
    assert evaluate.main(['--data', str(data / 'valid'), '--weight', f'Best={best}',
                          f'Last={last}', '--json', str(tmp_path / 'x4.json')]) == 0
    assert '| valid | Best | 2 |' in capsys.readouterr().out
    table = {row['method']: row for row in json.loads((tmp_path / 'x4.json').read_text())}
    assert set(table) == {'Bicubic', 'Best', 'Last'}
    # the same PSNR as train.py's validation: both run utils.super_resolve and utils.psnr
    assert table['Best']['psnr_y'] == pytest.approx(float(history(out)[0]['psnr_y']), abs=1e-6)
    image = data / 'valid' / 'v0.png'
    assert test_image.main(['--weight', str(best), '--image', str(image),
                            '--out_dir', str(tmp_path / 'sr')]) == 0
    sr = Image.open(tmp_path / 'sr' / 'v0' / 'sr_v0.png')
    assert sr.size == (4 * 48, 4 * 48)


def test_validation_scores_equal_evaluate_py_on_the_same_weights(data, tmp_path, capsys):
    """history.csv's PSNR-Y and SSIM-Y are evaluate.py's numbers for the epoch's weights file,
    to 1e-6: one inference path (utils.super_resolve, BatchNorm folded, float32) and one set
    of metrics. EMA on, so the weights file is not simply the live generator."""
    out = tmp_path / 'run'
    assert fit(data, out, '--amp', 'off', '--epochs', '2', '--iters_per_epoch', '2',
               '--ema', '0.5', '--validset_dir', str(data / 'valid')) == 0
    rows = history(out)
    capsys.readouterr()
    for epoch in (1, 2):
        weights = out / 'weights' / f'G_epoch_{epoch}.pth'
        assert evaluate.main(['--data', str(data / 'valid'), '--weight', f'G={weights}',
                              '--metrics', 'psnr,ssim',
                              '--json', str(tmp_path / f'{epoch}.json')]) == 0
        table = {r['method']: r for r in json.loads((tmp_path / f'{epoch}.json').read_text())}
        assert table['G']['images'] == 2
        row = rows[epoch - 1]
        assert abs(table['G']['psnr_y'] - float(row['psnr_y'])) <= 1e-6, (table['G'], row)
        assert abs(table['G']['ssim_y'] - float(row['ssim_y'])) <= 1e-6, (table['G'], row)
    assert rows[0]['psnr_y'] != rows[1]['psnr_y']  # the weights changed between the epochs


# ---------------------------------------------------------------------------------------------
# One training step: every loss term reaches the generator; D and G steps stay apart
# ---------------------------------------------------------------------------------------------

def make_state(*argv, base=(*TINY, '--amp', 'off')):
    """(Recipe, Runtime, TrainState) of a one-device run with `base` and these flags, as
    train.run makes them."""
    args = train.get_args([*base, *argv])
    rt = train.Runtime(args)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train.build(args, rt)
    train.wrap(args, rt, s)
    return train.Recipe.from_args(args), rt, s


def batch(seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    lr = utils.downscale(hr, 4)
    cl = torch.channels_last
    return lr.contiguous(memory_format=cl), hr.contiguous(memory_format=cl)


def grads(model) -> list:
    return [p.grad.clone() for p in model.parameters()]


def check_reaches_generator(s, expected: list) -> None:
    """G's gradient after the step equals `expected`, is finite and not zero."""
    got = grads(s.G)
    assert all(torch.isfinite(g).all() for g in got)
    assert sum(float(g.abs().sum()) for g in got) > 0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-9)


def test_content_loss_alone_trains_the_generator():
    recipe, rt, s = make_state('--mode', 'adversarial', '--vgg_weights', 'random',
                             '--pixel_weight', '0', '--adversarial_weight', '0',
                             '--content_weight', '1')
    lr, hr = batch()
    ref = copy.deepcopy(s.G)
    before = [p.detach().clone() for p in s.G.parameters()]
    losses = train.train_step(recipe, rt, s, lr, hr)
    assert float(losses['loss_content']) > 0
    # the reference: the VGG feature MSE alone, back-propagated through the pre-step generator
    F.mse_loss(s.vgg(ref(lr)), s.vgg(hr)).backward()
    check_reaches_generator(s, grads(ref))
    assert any(not torch.equal(p, q) for p, q in zip(s.G.parameters(), before))


def test_adversarial_loss_alone_trains_the_generator():
    recipe, rt, s = make_state(*ADV, '--pixel_weight', '0', '--adversarial_weight', '1')
    lr, hr = batch()
    ref = copy.deepcopy(s.G)
    before = [p.detach().clone() for p in s.G.parameters()]
    train.train_step(recipe, rt, s, lr, hr)
    # the reference: -log D(G(lr)) through the discriminator as the D step left it
    logit = s.D(ref(lr))
    F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)).backward()
    check_reaches_generator(s, grads(ref))
    assert any(not torch.equal(p, q) for p, q in zip(s.G.parameters(), before))


def test_d_step_uses_detached_sr_and_g_step_leaves_d_alone():
    recipe, rt, s = make_state(*ADV)
    counts = {'G': 0, 'D': 0}
    for k in counts:
        for p in getattr(s, k).parameters():
            p.register_hook(lambda grad, k=k: counts.__setitem__(k, counts[k] + 1))
    after_d_step = {}
    opt_d_step = s.opt_d.step

    def step_and_snapshot(*a, **kw):
        out = opt_d_step(*a, **kw)
        after_d_step.update({n: p.detach().clone() for n, p in s.D.named_parameters()})
        return out
    s.opt_d.step = step_and_snapshot
    train.train_step(recipe, rt, s, *batch())
    # one gradient per parameter and step: G's only from the G step (the D step saw
    # sr.detach()), D's only from the D step (D is frozen in the G step)
    assert counts == {'G': len(list(s.G.parameters())), 'D': len(list(s.D.parameters()))}
    assert after_d_step and same_tensors(after_d_step, dict(s.D.named_parameters()))


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------

def test_ema_update_is_a_moving_average():
    from model import Generator
    torch.manual_seed(0)
    g = Generator(4, num_blocks=1)
    ema = train.EMA(g, 0.9)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p))
        g.body[0].bn1.running_mean.add_(1.0)
    old = [p.clone() for p in ema.model.parameters()]
    ema.update(g)
    for e, o, p in zip(ema.model.parameters(), old, g.parameters()):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(e, p)  # an average, not the live weights
    assert same_tensors(dict(ema.model.named_buffers()), dict(g.named_buffers()))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_follows_a_training_step():
    recipe, rt, s = make_state('--ema', '0.9')
    old = [p.clone() for p in s.ema.model.parameters()]
    train.train_epoch(recipe, rt, s, [batch()], epoch=1, iters=1)
    live = list(s.G.parameters())
    assert any(not torch.equal(o, p) for o, p in zip(old, live))  # the step moved G
    for e, o, p in zip(s.ema.model.parameters(), old, live):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p, rtol=1e-6, atol=1e-7)


def test_iters_per_epoch_sets_the_loader_length(data):
    for extra, iters in (([], 2), (['--iters_per_epoch', '5'], 5)):
        args = train.get_args(['--trainset_dir', str(data / 'train'), '--batch_size', '2',
                               '--crop_size', '32', '--workers', '0', *extra])
        rt = train.Runtime(args)
        dataset, sampler, n = train.make_train_data(args, rt)
        loader = train.epoch_loader(args, rt, dataset, sampler)
        assert n == len(loader) == iters  # default: 4 images // batch 2
    assert train.get_args(['--epochs', '10']).lr_step == 5


# ---------------------------------------------------------------------------------------------
# Killed mid-run: files intact, resume exact
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    killed, straight = tmp_path / 'killed', tmp_path / 'straight'
    flags = ['--iters_per_epoch', '30', '--lr_step', '2']
    argv = [sys.executable, 'train.py', '--trainset_dir', str(data / 'train'), '--out_dir',
            str(killed), *TINY, *flags, '--epochs', '50']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    log = tmp_path / 'stderr.txt'  # a file, not a pipe nobody reads that could fill and block
    with open(log, 'wb') as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f)

    def wait_for(epoch: int) -> float:
        path = killed / 'checkpoints' / f'checkpoint_epoch_{epoch}.pth'
        deadline = time.time() + 60
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert path.exists(), log.read_text()[-2000:]
        return time.time()
    try:
        t1 = wait_for(1)
        t2 = wait_for(2)
        time.sleep(0.5 * (t2 - t1))  # halfway through epoch 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(int(f[len('checkpoint_epoch_'):-len('.pth')])
                  for f in os.listdir(killed / 'checkpoints') if f.startswith('checkpoint_epoch_'))
    assert done[-1] < 4, 'the run got too far before the kill'
    for folder in ('checkpoints', 'weights'):
        for f in os.listdir(killed / folder):
            if not f.startswith('.tmp_'):  # an unfinished temporary file may be left over
                assert isinstance(load(killed / folder / f), dict), f
    assert fit(data, killed, *flags, '--epochs', '4', '--resume', 'latest') == 0
    assert fit(data, straight, *flags, '--epochs', '4') == 0
    resumed, uninterrupted = ckpt(killed, 4), ckpt(straight, 4)
    for key in uninterrupted.keys() - {'args', 'history', 'best_psnr'}:
        assert same_state(resumed[key], uninterrupted[key]), key
    assert [r['epoch'] for r in history(killed)] == ['1', '2', '3', '4']


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 1
# ---------------------------------------------------------------------------------------------

def one_line_error(capsys, rc: int, status: int = 1) -> str:
    """The one 'error: ' line on stderr (progress bars aside), checking the exit status."""
    err = capsys.readouterr().err
    assert rc == status, err
    return one_error(err)


@pytest.fixture
def pretrained(tmp_path):
    from model import Generator
    path = tmp_path / 'g1.pth'
    utils.save_weights(Generator(4, num_blocks=1), str(path))
    return path


# (flags, message, exit status): 2 when the command cannot run as given, 1 when the work
# failed on a file's contents (README.md, "Conventions"); --resume latest skips a corrupt
# checkpoint and starts fresh when none loads: tests/test_faults.py
BAD = {
    'missing trainset': (['--trainset_dir', '{tmp}/nowhere'], 'training folder not found', 2),
    'empty trainset': (['--trainset_dir', '{tmp}/empty'], 'no images', 2),
    'missing pretrain': (['--pretrain', '{tmp}/nope.pth'], 'not found', 2),
    'pretrain blocks': (['--pretrain', '{tmp}/g1.pth'], '--num_blocks', 1),
    'no such epoch': (['--resume', '7'], 'no checkpoint for epoch 7', 2),
    'corrupt checkpoint': (['--resume', '1'], 'not a PyTorch weights file, or corrupt or truncated', 1),
    'fp16 on cpu': (['--amp', 'fp16'], '--amp fp16 needs --cuda', 2),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_gives_one_line(case, data, tmp_path, pretrained, capsys):
    flags, message, status = BAD[case]
    (tmp_path / 'empty').mkdir()
    if case == 'corrupt checkpoint':
        (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
        (tmp_path / 'run' / 'checkpoints' / 'checkpoint_epoch_1.pth').write_bytes(
            os.urandom(300))
    flags = [f.replace('{tmp}', str(tmp_path)) for f in flags]
    rc = fit(data, tmp_path / 'run', '--epochs', '1', *flags)
    assert message in one_line_error(capsys, rc, status)


def test_missing_default_trainset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = train.main(['--out_dir', str(tmp_path / 'run'), '--epochs', '1'])
    assert 'data/DIV2K_train_sub: training folder not found' in one_line_error(capsys, rc, 2)


def test_imagenet_vgg_offline_fails_fast(data, tmp_path, monkeypatch, capsys):
    """No network (simulated: every name lookup fails) and no cached file: a clear message."""
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')
    monkeypatch.setattr(socket, 'getaddrinfo', offline)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    t0 = time.time()
    rc = fit(data, tmp_path / 'run', '--mode', 'adversarial', '--epochs', '1')
    err = one_line_error(capsys, rc, 2)  # what the flag asks for cannot be had here
    assert '--vgg_weights' in err and 'VGG19' in err
    assert time.time() - t0 < 30
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    calls = []
    step = train.train_step

    def nan_at_epoch2_iteration2(*args):
        losses = step(*args)
        calls.append(1)
        if len(calls) == 3 + 2:  # 3 iterations per epoch
            losses['loss_g'] = losses['loss_g'] * float('nan')
        return losses
    monkeypatch.setattr(train, 'train_step', nan_at_epoch2_iteration2)
    rc = fit(data, tmp_path, '--amp', 'off', '--epochs', '3')
    err = one_line_error(capsys, rc)
    assert 'epoch 2, iteration 2' in err and 'NaN' in err
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_epoch_1.pth']
    assert ckpt(tmp_path, 1)['epoch'] == 1
    assert 'G_epoch_2.pth' not in os.listdir(tmp_path / 'weights')
    assert [r['epoch'] for r in history(tmp_path)] == ['1']


# ---------------------------------------------------------------------------------------------
# TensorBoard (optional dependency)
# ---------------------------------------------------------------------------------------------

class FakeWriter:
    """Records what train.py logs, standing in for torch.utils.tensorboard.SummaryWriter."""
    instances = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.images, self.closed = log_dir, {}, {}, False
        FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars[(tag, step)] = value

    def add_image(self, tag, image, step):
        self.images[(tag, step)] = image

    def close(self):
        self.closed = True


def test_tensorboard_logs_scalars_and_validation_images(data, tmp_path, monkeypatch):
    FakeWriter.instances.clear()
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard',
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '2', '--iters_per_epoch', '1',
               '--tensorboard', '--validset_dir', str(data / 'valid')) == 0
    (tb,) = FakeWriter.instances
    assert tb.closed and tb.log_dir == os.path.join(str(tmp_path), 'tensorboard')
    assert {('loss_g', 1), ('psnr_y', 1), ('lr_g', 2), ('psnr_y', 2)} <= set(tb.scalars)
    assert set(tb.images) == {(f'valid/v{i}', e) for i in (0, 1) for e in (1, 2)}
    for image in tb.images.values():
        assert image.shape == (3, 48, 48) and 0 <= float(image.min()) <= float(image.max()) <= 1


def test_tensorboard_missing_warns_and_trains(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # import fails
    assert fit(data, tmp_path, '--amp', 'off', '--epochs', '1', '--iters_per_epoch', '1',
               '--tensorboard') == 0
    assert 'warning: --tensorboard needs the tensorboard package' in capsys.readouterr().out
    assert (tmp_path / 'checkpoints' / 'checkpoint_epoch_1.pth').is_file()


# ---------------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------------

def test_help_gives_every_flag_a_line_with_its_default_once(capsys):
    """Each flag has help text ending in (or saying) its default, exactly once; -h prints
    them all and exits 0."""
    parser = train.build_parser()
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if a.option_strings and a.dest != 'help']
    assert len(flags) > 40
    for action in flags:
        text = formatter._expand_help(action)
        assert action.help, action.dest
        assert len(re.findall(r'default:', text, re.I)) == 1, (action.dest, text)
    for flag, default in (('--lr', '0.0001'), ('--seed', '0'), ('--pixel_weight', '1.0'),
                          ('--adversarial_weight', '0.001'), ('--upscale_factor', '4')):
        action = next(a for a in flags if flag in a.option_strings)
        assert formatter._expand_help(action).endswith(f'(default: {default})'), flag
    with pytest.raises(SystemExit) as e:
        train.get_args(['-h'])
    assert e.value.code == 0
    out = ' '.join(capsys.readouterr().out.split())
    assert out.count('(default: --lr)') == 1 and 'runs/<mode>_x<scale>)' in out
    assert len(re.findall(r'default:', out)) == len(flags)
