"""Detail strength (network interpolation): utils.blend_generators / load_blend, the
--strength flags of test_image.py and evaluate.py, and scripts/plot_strength.py; on tiny
generators and images."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluate
import test_image
import utils
from model import Generator

SCRIPT = Path(__file__).resolve().parents[1] / 'scripts' / 'plot_strength.py'
_spec = importlib.util.spec_from_file_location('plot_strength', SCRIPT)
plot_strength = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_strength)


def random_generator(seed: int, num_blocks: int = 1, channels: int = 8) -> Generator:
    """A tiny x4 generator with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    g = Generator(4, num_blocks, channels)
    with torch.no_grad():
        for bn in [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.num_batches_tracked.fill_(seed + 1)
    return g.eval()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Two weights files of one setting (the SRResNet and SRGAN ends), one of another
    setting, and a folder with one HR image large enough for every metric."""
    d = tmp_path_factory.mktemp('strength')
    paths = {}
    for name, seed, blocks in (('psnr', 1, 1), ('gan', 2, 1), ('other', 3, 2)):
        paths[name] = str(d / f'{name}.pth')
        utils.save_weights(random_generator(seed, blocks), paths[name])
    (d / 'hr').mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (104, 200, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / 'hr' / 'noise.png')
    paths['hr'] = str(d / 'hr')
    lr = rgb[:26, :26]
    Image.fromarray(lr).save(d / 'lr.png')
    paths['lr'] = str(d / 'lr.png')
    return paths


def test_strength_0_and_1_are_the_endpoints_exactly_and_half_the_midpoint():
    a, b = random_generator(1), random_generator(2)
    sa, sb = a.state_dict(), b.state_dict()
    for strength, expected in ((0, sa), (1, sb)):
        blend = utils.blend_generators(a, b, strength).state_dict()
        assert blend.keys() == expected.keys()
        for k, v in blend.items():
            assert torch.equal(v, expected[k]), (strength, k)
    mid = utils.blend_generators(a, b, 0.5).state_dict()
    for k, v in mid.items():
        if v.is_floating_point():  # parameters and BatchNorm statistics alike
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2, rtol=0, atol=1e-7)
    # BatchNorm's running statistics are blended, not taken from one end
    k = 'body.0.bn1.running_mean'
    assert not torch.equal(mid[k], sa[k]) and not torch.equal(mid[k], sb[k])
    # the network is the blend: its output at 0 is SRResNet's output
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(utils.blend_generators(a, b, 0)(x), a(x))


def test_blend_refuses_bad_strength_and_different_settings():
    a, b = random_generator(1), random_generator(2)
    for bad in (-0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='strength'):
            utils.blend_generators(a, b, bad)
    with pytest.raises(ValueError, match='different settings'):
        utils.blend_generators(a, random_generator(3, num_blocks=2), 0.5)


def test_load_blend_of_mismatched_files_is_one_line(files):
    with pytest.raises(utils.CheckpointError) as e:
        utils.load_blend(files['psnr'], files['other'], 0.5)
    msg = str(e.value)
    assert '\n' not in msg and files['psnr'] in msg and files['other'] in msg


def run_test_image(files, tmp_path, *flags) -> np.ndarray:
    """The SR image test_image.py writes for the LR test image with `flags`."""
    out = tmp_path / '_'.join(flags).replace('/', '')
    assert test_image.main(['--image', files['lr'], '--out_dir', str(out), '--amp', 'off',
                            '--tile', '0', *flags]) == 0
    return np.asarray(Image.open(out / 'lr' / 'sr_lr.png'))


def test_test_image_strength_endpoints_reproduce_each_weights_file(files, tmp_path):
    both = ('--weight', files['gan'], '--weight_psnr', files['psnr'])
    gan = run_test_image(files, tmp_path, '--weight', files['gan'])
    psnr = run_test_image(files, tmp_path, '--weight', files['psnr'])
    assert not np.array_equal(gan, psnr)
    assert np.array_equal(run_test_image(files, tmp_path, *both, '--strength', '1'), gan)
    assert np.array_equal(run_test_image(files, tmp_path, *both, '--strength', '0'), psnr)


def one_error_line(err: str) -> str:
    assert 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize('bad', ['1.5', '-0.25', 'nan', 'half'])
def test_test_image_bad_strength_exits_2_with_one_line(files, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        test_image.main(['--image', files['lr'], '--weight', files['gan'], '--weight_psnr',
                         files['psnr'], '--strength', bad, '--out_dir', str(tmp_path)])
    assert e.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert '--strength' in line and bad in line


def test_test_image_mismatched_ends_are_one_line(files, tmp_path, capsys):
    assert test_image.main(['--image', files['lr'], '--weight', files['other'], '--weight_psnr',
                            files['psnr'], '--strength', '0.5',
                            '--out_dir', str(tmp_path)]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert 'different settings' in line and files['other'] in line
    assert not list(tmp_path.iterdir())


def test_evaluate_scores_blends_as_rows(files, tmp_path):
    out = tmp_path / 'rows.json'
    assert evaluate.main(['--data', files['hr'], '--weight', f'G={files["gan"]}',
                          '--weight', f'R={files["psnr"]}', '--json', str(out)]) == 0
    plain = {r['method']: r for r in evaluate.json.loads(out.read_text())}
    assert evaluate.main(['--data', files['hr'], '--weight', f'G={files["gan"]}',
                          '--weight_psnr', files['psnr'], '--strength', '0', '0.5', '1',
                          '--json', str(out)]) == 0
    blends = {r['method']: r for r in evaluate.json.loads(out.read_text())}
    assert {'G@0', 'G@0.5', 'G@1'} <= blends.keys()
    assert blends['G@1']['psnr_y'] == plain['G']['psnr_y']
    assert blends['G@0']['psnr_y'] == plain['R']['psnr_y']
    assert blends['G@0.5']['psnr_y'] not in (plain['G']['psnr_y'], plain['R']['psnr_y'])


@pytest.mark.parametrize('flags', [['--weight', 'g.pth', '--strength', '2', '--weight_psnr',
                                    'x.pth'],
                                   ['--strength', '0.5']])  # no --weight: nothing to blend
def test_evaluate_bad_strength_flags_exit_2_with_one_line(files, capsys, flags):
    with pytest.raises(SystemExit) as e:
        evaluate.main(['--data', files['hr'], *flags])
    assert e.value.code == 2
    assert '--strength' in one_error_line(capsys.readouterr().err)


def test_evaluate_strength_takes_the_default_srresnet_end(files, tmp_path, monkeypatch):
    """Without --weight_psnr the SRResNet end is utils.default_weight(scale, 'srresnet')."""
    monkeypatch.setitem(utils.DEFAULT_WEIGHTS, 4, {'srresnet': str(files['psnr']),
                                                   'srgan': str(files['gan'])})
    out = tmp_path / 'default_end.json'
    assert evaluate.main(['--data', files['hr'], '--weight', f'R={files["psnr"]}',
                          '--weight', f'G={files["gan"]}', '--strength', '0',
                          '--json', str(out), '--metrics', 'psnr']) == 0
    rows = {r['method']: r for r in evaluate.json.loads(out.read_text())}
    assert rows['G@0']['psnr_y'] == rows['R@0']['psnr_y']  # both are the SRResNet end


def test_evaluate_mismatched_ends_are_one_line(files, capsys):
    # the exit status of an unusable weights file is evaluate.py's to define; not 0
    assert evaluate.main(['--data', files['hr'], '--weight', files['other'], '--weight_psnr',
                          files['psnr'], '--strength', '0.5']) != 0
    assert 'different settings' in one_error_line(capsys.readouterr().err)


def test_plot_strength_scores_draws_and_redraws(files, tmp_path):
    png, saved = tmp_path / 'plot.png', tmp_path / 'scores.json'
    assert plot_strength.main(['--data', files['hr'], '--weight_psnr', files['psnr'],
                               '--weight', files['gan'], '--strengths', '0', '0.5', '1',
                               '--out', str(png), '--json', str(saved)]) == 0
    rows = evaluate.json.loads(saved.read_text())
    assert [r['strength'] for r in rows] == [None, 0, 0.5, 1, None]
    assert [r['method'] for r in rows] == ['Bicubic', 'blend', 'blend', 'blend', 'HR']
    assert 'psnr_y' not in rows[-1]
    # strength 0 and 1 score as the weights files themselves do in evaluate.py
    out = tmp_path / 'rows.json'
    assert evaluate.main(['--data', files['hr'], '--weight', f'G={files["gan"]}',
                          '--weight', f'R={files["psnr"]}', '--json', str(out)]) == 0
    plain = {r['method']: r for r in evaluate.json.loads(out.read_text())}
    assert rows[1]['psnr_y'] == plain['R']['psnr_y'] and rows[3]['psnr_y'] == plain['G']['psnr_y']
    assert Image.open(png).size == (900, 620)
    again = tmp_path / 'again.png'
    assert plot_strength.main(['--from_json', str(saved), '--data', files['hr'],
                               '--out', str(again)]) == 0
    assert again.read_bytes() == png.read_bytes()
