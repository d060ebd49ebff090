"""scripts/transfer_scale.py: tensors copied, new upsample blocks start as nearest-neighbour
upsampling, the fitting stage trains only the upsampling layers, one-line errors."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import utils
from model import Generator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import transfer_scale  # noqa: E402


def tiny(scale: int, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    g = Generator(scale, num_blocks=2, channels=8)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they must be copied
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return g.eval()


@pytest.fixture
def x4_file(tmp_path):
    path = tmp_path / 'tiny_x4.pth'
    utils.save_weights(tiny(4), str(path), epoch=7, mode='generator')
    return path


def test_down_keeps_first_blocks_and_everything_else():
    src = tiny(8)
    out = transfer_scale.transfer(src, 2)
    assert out.upscale_factor == 2 and len(out.upsample) == 1
    s_src, s_out = src.state_dict(), out.state_dict()
    assert set(s_out) == {k for k in s_src if not k.startswith(('upsample.1.', 'upsample.2.'))}
    for k, v in s_out.items():
        assert torch.equal(v, s_src[k]), k


def test_new_block_is_nearest_neighbour_upsampling():
    g = Generator(8, num_blocks=1, channels=8)
    transfer_scale.icnr_identity_(g.upsample[2])
    x = torch.randn(2, 8, 5, 7)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
    torch.testing.assert_close(g.upsample[2](x), expected)


def test_up_then_down_restores_the_source():
    src = tiny(4)
    x8 = transfer_scale.transfer(src, 8)
    s_src = src.state_dict()
    for k, v in x8.state_dict().items():
        if not k.startswith('upsample.2.'):
            assert torch.equal(v, s_src[k]), k
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        # up to the new block the x8 network computes exactly what the x4 one does
        feats = src.upsample(transfer_scale.body_features(src, x))
        torch.testing.assert_close(x8.upsample(transfer_scale.body_features(x8, x)),
                                   torch.nn.functional.interpolate(feats, scale_factor=2))
        back = transfer_scale.transfer(x8, 4)
        torch.testing.assert_close(back(x), src(x), rtol=0, atol=0)


@pytest.fixture
def photos(tmp_path):
    from skimage import data
    root = tmp_path / 'photos'
    root.mkdir()
    Image.fromarray(data.astronaut()[::4, ::4]).save(root / 'a.png')
    Image.fromarray(data.coffee()[::4, ::4]).save(root / 'b.png')
    return root


def test_adapt_trains_only_the_upsampling_layers(photos):
    g = transfer_scale.transfer(tiny(4), 2)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    torch.manual_seed(0)
    data = utils.TrainSet(str(photos), 2, 32)
    logs = []
    done = transfer_scale.adapt(g, data, patches=8, iters=60, batch=4, lr=3e-3, log=logs.append)
    assert done['steps'] == 60 and done['patches'] == 8
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]) != k.startswith(('upsample.', 'tail.')), k
    assert done['last_mse'] < done['first_mse'] / 2
    assert logs[-1].startswith('step 60/60: mse ')


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / 'transfer_scale.py'), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_writes_a_loadable_labelled_file(x4_file, tmp_path, photos):
    out = tmp_path / 'sub' / 'init_x2.pth'
    r = run_cli('--weight', str(x4_file), '--upscale_factor', '2', '--output', str(out),
                '--adapt_dir', str(photos), '--crop_size', '32', '--patches', '4', '--iters', '3',
                '--batch_size', '2')
    assert r.returncode == 0, r.stderr
    g = utils.load_generator(str(out), upscale_factor=2)
    assert g.config == {'upscale_factor': 2, 'num_blocks': 2, 'channels': 8}
    meta = torch.load(out, weights_only=True)
    assert 'from the x4 generator tiny_x4.pth' in meta['variant']
    assert 'fitted 3 steps' in meta['variant'] and meta['epoch'] == 0
    with torch.no_grad():
        y = g(torch.rand(1, 3, 10, 10))
    assert y.shape == (1, 3, 20, 20) and np.isfinite(y.numpy()).all()


@pytest.mark.parametrize('case', ['missing', 'garbage', 'unwritable', 'bad_dir'])
def test_bad_input_is_one_line(case, x4_file, tmp_path):
    weight, output, extra = str(x4_file), str(tmp_path / 'o.pth'), []
    if case == 'missing':
        weight = str(tmp_path / 'nope.pth')
    elif case == 'garbage':
        weight = str(tmp_path / 'garbage.pth')
        Path(weight).write_bytes(b'not a weights file')
    elif case == 'unwritable':
        (tmp_path / 'file').write_text('x')
        output = str(tmp_path / 'file' / 'o.pth')  # a "folder" that is a file
    else:
        extra = ['--adapt_dir', str(tmp_path / 'no_such_dir')]
    r = run_cli('--weight', weight, '--upscale_factor', '8', '--output', output, *extra)
    assert r.returncode == (1 if case == 'garbage' else 2)  # a bad file's contents: 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    assert (weight if case in ('missing', 'garbage') else
            output if case == 'unwritable' else 'no_such_dir') in lines[0]
    assert not Path(output).exists()
