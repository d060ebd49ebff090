"""The scripts pick their default weights by --upscale_factor (utils.DEFAULT_WEIGHTS,
utils.default_weight): srgan_x{S}.pth, else srresnet_x{S}.pth with a one-line notice, else a
one-line error naming both files."""
from pathlib import Path

import pytest
import torch
from PIL import Image

import test_image
import utils
from model import Generator

ROOT = Path(__file__).resolve().parents[1]


def tiny_file(folder: Path, name: str, scale: int) -> None:
    torch.manual_seed(scale)
    utils.save_weights(Generator(scale, num_blocks=1, channels=8), str(folder / name))


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A weights folder with SRGAN and SRResNet for x4, SRResNet only for x2, nothing for x8."""
    folder = tmp_path / 'weights'
    folder.mkdir()
    tiny_file(folder, 'srgan_x4.pth', 4)
    tiny_file(folder, 'srresnet_x4.pth', 4)
    tiny_file(folder, 'srresnet_x2.pth', 2)
    for scale in (2, 4, 8):
        monkeypatch.setitem(utils.DEFAULT_WEIGHTS, scale, {
            kind: str(folder / f'{kind}_x{scale}.pth') for kind in ('srresnet', 'srgan')})
    return folder


@pytest.fixture
def photo(tmp_path):
    from skimage import data
    path = tmp_path / 'p.png'
    Image.fromarray(data.astronaut()[100:116, 150:170]).save(path)
    return path


def run(argv: list, capsys) -> tuple:
    rc = test_image.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_default_weight_per_scale(weights_dir, capsys):
    assert utils.default_weight(4) == str(weights_dir / 'srgan_x4.pth')
    assert utils.default_weight(4, 'srresnet') == str(weights_dir / 'srresnet_x4.pth')
    assert capsys.readouterr().err == ''
    assert utils.default_weight(2) == str(weights_dir / 'srresnet_x2.pth')
    notice = capsys.readouterr().err
    assert notice.startswith('note: no SRGAN weights for x2') and 'srresnet_x2.pth' in notice
    assert len(notice.splitlines()) == 1
    with pytest.raises(utils.CheckpointPathError, match='srgan_x8.pth.*srresnet_x8.pth') as e:
        utils.default_weight(8)
    assert e.value.exit_status == utils.EXIT_USAGE


@pytest.mark.parametrize('argv, scale, notice', [
    ([], 4, False), (['--upscale_factor', '4'], 4, False), (['--upscale_factor', '2'], 2, True)])
def test_runs_with_the_default_of_each_scale(argv, scale, notice, weights_dir, photo, tmp_path,
                                             capsys):
    out_dir = tmp_path / 'out'
    rc, out, err = run(['--image', photo, '--out_dir', out_dir, *argv], capsys)
    assert rc == 0, err
    assert out.startswith(f'x{scale} generator (1 blocks)')
    if notice:
        assert err.splitlines() == [f'note: no SRGAN weights for x{scale} '
                                    f"({weights_dir / f'srgan_x{scale}.pth'}); using the SRResNet "
                                    f"weights {weights_dir / f'srresnet_x{scale}.pth'}"]
    else:
        assert err == ''
    with Image.open(out_dir / 'p' / 'sr_p.png') as img:
        assert img.size == (20 * scale, 16 * scale)


def test_scale_without_weights_is_one_line(weights_dir, photo, tmp_path, capsys):
    rc, out, err = run(['--image', photo, '--out_dir', tmp_path / 'out', '--upscale_factor', '8'],
                       capsys)
    assert rc != 0 and out == ''
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ')
    assert str(weights_dir / 'srgan_x8.pth') in lines[0]
    assert str(weights_dir / 'srresnet_x8.pth') in lines[0] and '--weight' in lines[0]
    assert not (tmp_path / 'out').exists()


def test_explicit_weight_is_not_replaced(weights_dir, photo, tmp_path, capsys):
    rc, _, err = run(['--image', photo, '--out_dir', tmp_path / 'out', '--upscale_factor', '8',
                      '--weight', weights_dir / 'srresnet_x2.pth'], capsys)
    assert rc != 0 and 'holds an x2 generator' in err and 'srgan_x8' not in err


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_shipped_defaults_cover_every_scale(scale):
    """Out of the box, every scale test_image.py accepts has a weights file of that scale."""
    path = utils.default_weight(scale)
    assert Path(path).parent == ROOT / 'weights'
    assert utils.load_generator(path, upscale_factor=scale).upscale_factor == scale
