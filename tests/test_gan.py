"""GAN stabilisers of train.py / model.py: RaGAN loss, ICNR upsampling, spectral norm in D, a
separate D learning rate, EMA of G in adversarial mode, NIQE in validation and the best.pth
rule; each checked to reach the gradients (or files) it should, on tiny networks and 32 px
crops."""
import copy
import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import model
import train
import utils
from test_train import (ADV, batch, ckpt, data, fit, grads, history, load, make_state,  # noqa: F401
                        same_state, same_tensors)

pytestmark = pytest.mark.usefixtures('one_thread')



@pytest.fixture(autouse=True)
def small_discriminator(monkeypatch):
    """8 base channels instead of 64 in the runs' D: the full one's 19M parameters cost most
    of a tiny run's time (test_train.py explains)."""
    monkeypatch.setattr(train, 'Discriminator',
                        functools.partial(model.Discriminator, channels=8))


# ---------------------------------------------------------------------------------------------
# Relativistic average GAN
# ---------------------------------------------------------------------------------------------

def bce(logit, target):
    return -(target * torch.log(torch.sigmoid(logit))
             + (1 - target) * torch.log(1 - torch.sigmoid(logit))).mean()


def test_losses_match_their_definitions():
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-1.0], [0.3]])
    torch.testing.assert_close(train.d_loss('vanilla', real, fake), bce(real, 1) + bce(fake, 0))
    torch.testing.assert_close(train.g_adversarial_loss('vanilla', fake), bce(fake, 1))
    rr, rf = real - fake.mean(), fake - real.mean()  # ESRGAN's relativistic logits
    torch.testing.assert_close(train.d_loss('ragan', real, fake), bce(rr, 1) + bce(rf, 0))
    torch.testing.assert_close(train.g_adversarial_loss('ragan', fake, real),
                               (bce(rr, 0) + bce(rf, 1)) / 2)


def d_step_reference(s, lr, hr, gan_loss: str) -> list:
    """D's gradient from the D loss on copies of the networks as they were before the step."""
    G0, D0 = copy.deepcopy(s.G), copy.deepcopy(s.D)
    with torch.no_grad():
        sr = G0(lr)
    real = D0(hr)
    train.d_loss(gan_loss, real, D0(sr)).backward()
    return grads(D0)


@pytest.mark.parametrize('gan_loss', ['vanilla', 'ragan'])
@pytest.mark.parametrize('sn', [False, True])
def test_d_step_gradient_is_the_d_loss_gradient(gan_loss, sn):
    extra = ['--spectral_norm'] if sn else []
    recipe, rt, s = make_state(*ADV, '--gan_loss', gan_loss, *extra)
    lr, hr = batch()
    expected = d_step_reference(s, lr, hr, gan_loss)
    train.train_step(recipe, rt, s, lr, hr)
    got = grads(s.D)
    assert sum(float(g.abs().sum()) for g in got) > 0
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-9)


def test_ragan_adversarial_loss_alone_trains_the_generator_against_real_logits():
    recipe, rt, s = make_state(*ADV, '--gan_loss', 'ragan', '--pixel_weight', '0',
                             '--adversarial_weight', '1')
    lr, hr = batch()
    ref = copy.deepcopy(s.G)
    before = [p.detach().clone() for p in s.G.parameters()]
    train.train_step(recipe, rt, s, lr, hr)
    # the reference: RaGAN's G loss through D as the D step left it, D(hr) a constant
    real = s.D(hr).detach()
    train.g_adversarial_loss('ragan', s.D(ref(lr)), real).backward()
    expected = grads(ref)
    for g, e in zip(grads(s.G), expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-9)
    assert sum(float(g.abs().sum()) for g in expected) > 0
    assert any(not torch.equal(p, q) for p, q in zip(s.G.parameters(), before))
    # relativistic: the same SR logits give G another gradient when D sees HR differently
    fake = s.D(ref(lr)).detach().requires_grad_(True)
    g1, = torch.autograd.grad(train.g_adversarial_loss('ragan', fake, real), fake)
    g2, = torch.autograd.grad(train.g_adversarial_loss('ragan', fake, real + 1), fake)
    assert not torch.allclose(g1, g2)


# ---------------------------------------------------------------------------------------------
# ICNR
# ---------------------------------------------------------------------------------------------

def test_fresh_icnr_upsample_block_is_checkerboard_free_and_trainable():
    torch.manual_seed(0)
    block = model.UpsampleBlock(8)
    y = block(torch.rand(2, 8, 6, 5))
    # every 2x2 sub-pixel group holds one value: nearest-neighbour upsampling of a conv
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        assert torch.equal(y[..., dy::2, dx::2], y[..., 0::2, 0::2])
    assert y.std() > 0
    # the gradient reaches every kernel, and differs within a group (training can
    # then make the sub-pixels differ)
    (y * torch.rand_like(y)).sum().backward()
    w = block.conv.weight.grad.view(8, 4, -1)
    assert (w.abs().sum(-1) > 0).all()
    assert not torch.allclose(w[:, 0], w[:, 1])


def test_fresh_generator_upsamplers_are_icnr():
    for up in model.Generator(4, num_blocks=1, channels=8).upsample:
        w = up.conv.weight.view(8, 4, -1)
        assert torch.equal(w, w[:, :1].expand_as(w))
        assert not torch.equal(w[0, 0], w[1, 0])
        assert not up.conv.bias.any()


# ---------------------------------------------------------------------------------------------
# Spectral normalisation
# ---------------------------------------------------------------------------------------------

def test_spectral_norm_discriminator_has_unit_norm_layers_and_no_batchnorm():
    torch.manual_seed(0)
    d = model.Discriminator(channels=8, spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(nn.utils.parametrize.is_parametrized(m, 'weight') for m in layers)
    for _ in range(30):  # each training-mode forward runs one power iteration
        d(torch.rand(2, 3, 32, 32))
    d.eval()
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1) < 0.05, m


def test_spectral_norm_resume_is_exact(data, tmp_path):
    flags = [*ADV, '--amp', 'off', '--spectral_norm', '--gan_loss', 'ragan', '--lr_step', '0']
    a, b = tmp_path / 'a', tmp_path / 'b'
    assert fit(data, a, *flags, '--epochs', '2') == 0
    assert fit(data, b, *flags, '--epochs', '1') == 0
    assert fit(data, b, *flags, '--epochs', '2', '--resume', 'latest') == 0
    sa, sb = ckpt(a, 2), ckpt(b, 2)
    assert any('parametrizations.weight.original' in k for k in sa['discriminator'])
    assert any(k.endswith('_u') for k in sa['discriminator'])  # the power-iteration state
    for k in ('generator', 'discriminator', 'opt_g', 'opt_d'):
        assert same_state(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------
# D learning rate
# ---------------------------------------------------------------------------------------------

def largest_change(net, before) -> float:
    return max(float((p.detach() - q).abs().max()) for p, q in zip(net.parameters(), before))


def test_lr_d_sets_the_discriminator_step_only():
    recipe, rt, s = make_state(*ADV, '--lr', '1e-4', '--lr_d', '1e-6')
    assert s.opt_g.param_groups[0]['lr'] == 1e-4 and s.opt_d.param_groups[0]['lr'] == 1e-6
    g0 = [p.detach().clone() for p in s.G.parameters()]
    d0 = [p.detach().clone() for p in s.D.parameters()]
    train.train_step(recipe, rt, s, *batch())
    # Adam's first step moves each parameter with a gradient by about its learning rate
    assert 0.9e-6 < largest_change(s.D, d0) < 1.1e-6
    assert 0.9e-4 < largest_change(s.G, g0) < 1.1e-4
    recipe, rt, s = make_state(*ADV, '--lr', '3e-4')
    assert s.opt_d.param_groups[0]['lr'] == 3e-4  # default: --lr


def test_lr_d_follows_the_schedule_and_is_logged(data, tmp_path):
    out = tmp_path / 'run'
    assert fit(data, out, *ADV, '--amp', 'off', '--epochs', '2', '--lr_step', '1',
               '--lr_d', '4e-5') == 0
    rows = history(out)
    assert [float(r['lr_d']) for r in rows] == pytest.approx([4e-5, 4e-6])
    assert [float(r['lr_g']) for r in rows] == pytest.approx([1e-4, 1e-5])


# ---------------------------------------------------------------------------------------------
# EMA, NIQE in validation, best.pth
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def valid_niqe(tmp_path_factory):
    """Two validation images large enough for NIQE (two 96 px blocks after the border)."""
    from skimage import data as sk
    root = tmp_path_factory.mktemp('valid_niqe')
    Image.fromarray(sk.astronaut()[:104, 100:300]).save(root / 'astronaut.png')
    Image.fromarray(sk.coffee()[100:204, 200:400]).save(root / 'coffee.png')
    return root


def test_adversarial_ema_run_saves_the_ema_and_logs_niqe(data, valid_niqe, tmp_path):
    out = tmp_path / 'run'
    # --grid_limit 0: a one-epoch tiny generator draws a dot grid (test_grid_score.py)
    assert fit(data, out, *ADV, '--amp', 'off', '--epochs', '1', '--ema', '0.5',
               '--validset_dir', str(valid_niqe), '--grid_limit', '0') == 0
    state = ckpt(out, 1)
    assert not same_tensors(state['ema'], state['generator'])
    assert load(out / 'weights' / 'best.pth')['variant'] == 'SRGAN-MSE (EMA 0.5)'
    for name in ('G_epoch_1.pth', 'best.pth'):
        assert same_tensors(load(out / 'weights' / name)['generator'], state['ema'])
    row, = history(out)
    assert 0 < float(row['niqe']) < 100 and float(row['psnr_y']) > 0
    # the logged NIQE is the EMA generator's, scored as evaluate.py scores it
    model = utils.inference_model(utils.load_generator(str(out / 'weights' / 'best.pth')),
                                  torch.device('cpu'))
    scores = []
    for path in sorted(valid_niqe.iterdir()):
        _, lr = utils.load_hr_lr(str(path), 4)
        sr = utils.super_resolve(model, lr, 4, tile=0)  # evaluate.py's path
        scores.append(utils.niqe(sr, crop_border=4))
    assert float(row['niqe']) == pytest.approx(np.mean(scores), rel=1e-4)


def rows(*psnr_niqe) -> list:
    return [{'epoch': i + 1, 'psnr_y': p, 'niqe': n} for i, (p, n) in enumerate(psnr_niqe)]


def test_best_epoch_rules():
    h = rows((26.0, 6.0), (25.8, 5.0), (25.2, 4.0), (26.4, 5.5), (26.1, 4.5))
    assert train.best_epoch(h, 'psnr', 0.5) == 4
    # niqe: epoch 2 (within 0.5 dB of 26.0, lower NIQE), not 3 (0.8 dB behind); epoch 4
    # raises the best PSNR to 26.4, leaving epoch 2 1.6 dB behind, so 4 takes over; epoch 5
    # is within 0.5 dB of it and more natural
    assert [train.best_epoch(h[:n], 'niqe', 0.5) for n in range(1, 6)] == [1, 2, 2, 4, 5]
    assert train.best_epoch(h, 'niqe', 10) == 3  # a wide margin: NIQE alone
    # unvalidated epochs and a NaN NIQE (a flat image) never win on NIQE
    h = rows((26.0, math.nan), (25.9, 5.0)) + [{'epoch': 3}]
    assert train.best_epoch(h, 'niqe', 0.5) == 2
    assert train.best_epoch([{'epoch': 1}], 'psnr', 0.5) is None
    # no NIQE at all (validation images too small for it): the highest PSNR-Y
    h = rows((26.0, math.nan), (26.2, math.nan), (25.9, math.nan))
    assert train.best_epoch(h, 'niqe', 0.5) == 2


def test_best_metric_defaults_by_mode():
    assert train.get_args([]).best_metric == 'psnr'
    assert train.get_args(['--mode', 'adversarial']).best_metric == 'niqe'
    assert train.get_args(['--mode', 'adversarial', '--best_metric', 'psnr']).best_metric == 'psnr'


def test_best_pth_follows_the_niqe_rule_in_a_run(data, valid_niqe, tmp_path, monkeypatch):
    """Validation scores are replaced by a scripted sequence; best.pth must be the weights of
    the epoch the rule picks (here 2: 0.3 dB behind epoch 1, and more natural)."""
    scores = iter([{'psnr_y': 26.0, 'ssim_y': 0.7, 'niqe': 6.0},
                   {'psnr_y': 25.7, 'ssim_y': 0.7, 'niqe': 5.0},
                   {'psnr_y': 24.0, 'ssim_y': 0.6, 'niqe': 3.0}])
    monkeypatch.setattr(train, 'validate', lambda *a, **kw: next(scores))
    out = tmp_path / 'run'
    assert fit(data, out, *ADV, '--amp', 'off', '--epochs', '3', '--lr_step', '0',
               '--validset_dir', str(valid_niqe)) == 0
    best = load(out / 'weights' / 'best.pth')
    assert best['epoch'] == 2
    assert same_tensors(best['generator'], load(out / 'weights' / 'G_epoch_2.pth')['generator'])
