"""test_image.py: outputs for a file and a folder, metrics, tiling, odd inputs, bad input and
weights files; on tiny generated weights and images."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test_image
import utils
from conftest import ROOT, natural, run_main, sane_generator


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Weights files: x2 and x4, 1 residual block, 16 channels."""
    folder = tmp_path_factory.mktemp('weights')
    paths = {}
    for scale in (2, 4):
        paths[scale] = folder / f'tiny_x{scale}.pth'
        utils.save_weights(sane_generator(scale), str(paths[scale]))
    return paths


def run(argv: list, capsys) -> tuple:
    """test_image.main in-process: (exit code, stdout, stderr)."""
    return run_main(test_image.main, argv, capsys)


def size(path) -> tuple:
    with Image.open(path) as img:
        return img.size


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def test_sane_generator_is_sane():
    g = sane_generator(4, num_blocks=4)
    x = torch.from_numpy(natural(24, 24).copy()).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        sr = g(x)
    nearest = x.repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert (sr - nearest).abs().mean() < 0.08


def test_file_outputs(weights, tmp_path, capsys):
    Image.fromarray(natural(20, 28)).save(tmp_path / 'pic.png')
    rc, out, err = run(['--image', tmp_path / 'pic.png', '--weight', weights[4],
                        '--out_dir', tmp_path / 'res'], capsys)
    assert rc == 0, err
    folder = tmp_path / 'res' / 'pic'
    assert sorted(p.name for p in folder.iterdir()) == ['bicubic_pic.png', 'lr_pic.png',
                                                         'sr_pic.png']
    assert size(folder / 'sr_pic.png') == size(folder / 'bicubic_pic.png') == (112, 80)
    assert size(folder / 'lr_pic.png') == (28, 20)
    # lr_ is exactly the input fed to the network
    assert np.array_equal(np.asarray(Image.open(folder / 'lr_pic.png')), natural(20, 28))
    assert 'pic.png: 28x20 -> 112x80' in out and 'MP/s' in out


def test_folder_outputs_and_formats(weights, tmp_path, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    Image.fromarray(natural(16, 16)).save(src / 'a.png')
    Image.fromarray(natural(12, 20, 200, 200)).save(src / 'b.jpg', quality=95)
    (src / 'notes.txt').write_text('not an image, and not an image name either')
    rc, out, err = run(['--image', src, '--weight', weights[2], '--out_dir', tmp_path / 'res'],
                       capsys)
    assert rc == 0, err
    res = tmp_path / 'res'
    assert sorted(p.name for p in res.iterdir()) == ['a', 'b']
    assert size(res / 'a' / 'sr_a.png') == (32, 32)
    assert size(res / 'b' / 'sr_b.jpg') == (40, 24)
    with Image.open(res / 'a' / 'sr_a.png') as a, Image.open(res / 'b' / 'sr_b.jpg') as b:
        assert (a.format, b.format) == ('PNG', 'JPEG')  # the format follows the name


def test_output_name():
    assert utils.output_name('sr_', 'x.JPG') == 'sr_x.JPG'
    assert utils.output_name('sr_', 'x.tiff') == 'sr_x.tiff'
    assert utils.output_name('sr_', 'x.psd') == 'sr_x.png'  # Pillow reads PSD only
    assert utils.output_name('lr_', 'noext') == 'lr_noext.png'


def test_downsample_metrics_match_utils(weights, tmp_path, capsys):
    """hr = modcrop(load), lr = downscale(hr), bicubic = imresize(lr), sr = G(lr): the
    pipeline evaluate.py uses, and utils.image_metrics on it."""
    path = tmp_path / 'gt.png'
    Image.fromarray(natural(66, 70)).save(path)  # not a multiple of 4: modcrop matters
    g = utils.load_generator(str(weights[4]))
    model = utils.inference_model(g, torch.device('cpu'))
    opts = utils.PhotoOptions(scale=4, out_dir=str(tmp_path / 'res'), downsample=True)
    result = utils.process_image(str(path), model, opts)

    hr = utils.modcrop(utils.load_image(str(path))[0], 4)
    lr = utils.downscale(hr, 4)
    with torch.no_grad():
        sr = g(lr[None])[0]
    expect_bic = utils.image_metrics(utils.imresize(lr, 4), hr, 4)
    expect_sr = utils.image_metrics(sr, hr, 4)
    assert result['metrics']['bicubic'] == pytest.approx(expect_bic, abs=1e-6)
    assert result['metrics']['sr'] == pytest.approx(expect_sr, abs=0.02)  # fused-BN rounding
    folder = tmp_path / 'res' / 'gt'
    assert np.array_equal(np.asarray(Image.open(folder / 'hr_gt.png')), utils.to_uint8(hr))
    assert np.array_equal(np.asarray(Image.open(folder / 'lr_gt.png')), utils.to_uint8(lr))
    assert size(folder / 'sr_gt.png') == (68, 64)

    rc, out, err = run(['--image', path, '--weight', weights[4], '--downsample', 'bicubic',
                        '--out_dir', tmp_path / 'cli', '--amp', 'off'], capsys)
    assert rc == 0, err
    bic = expect_bic
    assert (f"bicubic  PSNR-Y {bic['psnr_y']:6.2f} dB  SSIM-Y {bic['ssim_y']:.4f}  "
            f"PSNR-YCbCr {bic['psnr_ycbcr']:6.2f} dB  SSIM-YCbCr {bic['ssim_ycbcr']:.4f}") in out
    assert out.count('PSNR-Y ') == 2


def test_downsample_too_small(weights, tmp_path, capsys):
    Image.fromarray(natural(18, 30)).save(tmp_path / 'small.png')  # SSIM needs 11 + 2 * 4
    rc, _, err = run(['--image', tmp_path / 'small.png', '--weight', weights[4],
                      '--downsample', 'bicubic', '--out_dir', tmp_path / 'res'], capsys)
    assert rc == 1
    # the message utils.load_hr_lr gives evaluate.py and validation too
    assert err == (f'error: {tmp_path / "small.png"}: 28x16 after cropping to a multiple of 4 '
                   f'is too small to score (needs at least {2 * 4 + utils.SSIM_WINDOW}x'
                   f'{2 * 4 + utils.SSIM_WINDOW})\n')


# ---------------------------------------------------------------------------------------------
# Tiling and precision
# ---------------------------------------------------------------------------------------------

def test_inference_model_matches_generator():
    g = sane_generator(4, num_blocks=2)
    x = torch.rand(1, 3, 12, 10)
    m = utils.inference_model(g, torch.device('cpu'))
    with torch.no_grad():
        assert torch.allclose(m(x.contiguous(memory_format=torch.channels_last)), g(x),
                              atol=1e-5)


@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_tiled_matches_whole(dtype):
    """16 residual blocks: the receptive field (~40 LR px) is wider than the default overlap,
    so agreement relies on far pixels mattering little, as in a trained network."""
    g = sane_generator(2, num_blocks=16, channels=16)
    m = utils.inference_model(g, torch.device('cpu'))
    lr = torch.from_numpy(natural(100, 90).copy()).permute(2, 0, 1).float().div(255)
    ov = utils.TILE_OVERLAP
    whole = utils.super_resolve(m, lr, 2, 0, ov, dtype)
    tiled = utils.super_resolve(m, lr, 2, 2 * ov + 16, ov, dtype)  # 3 x 3 tiles
    diff = (utils.to_uint8(tiled).astype(int) - utils.to_uint8(whole).astype(int))
    assert np.abs(diff).max() <= 1


@pytest.mark.skipif(not (ROOT / 'weights' / 'srgan_x4.pth').exists(),
                    reason='the shipped weights are not there')
def test_tiled_matches_whole_with_shipped_weights():
    """The trained SRGAN (farther-reaching than SRResNet) at the default overlap, fp32: tile
    edges cross the image where a tile's kept part ends exactly `overlap` from its edge."""
    g = utils.load_generator(str(ROOT / 'weights' / 'srgan_x4.pth'), 4)
    m = utils.inference_model(g, torch.device('cpu'))
    lr = torch.from_numpy(natural(80, 80, 60, 200).copy()).permute(2, 0, 1).float().div(255)
    ov = utils.TILE_OVERLAP
    whole = utils.super_resolve(m, lr, 4, 0, ov)
    tiled = utils.super_resolve(m, lr, 4, 2 * ov + 16, ov)  # 2 x 2 tiles
    diff = np.abs(utils.to_uint8(tiled).astype(int) - utils.to_uint8(whole).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_tile_flag_and_auto_tiles(weights, tmp_path, capsys, monkeypatch):
    Image.fromarray(natural(72, 80)).save(tmp_path / 'p.png')
    common = ['--image', tmp_path / 'p.png', '--weight', weights[2], '--amp', 'off']
    assert run(common + ['--tile', 0, '--out_dir', tmp_path / 'whole'], capsys)[0] == 0
    monkeypatch.setattr(utils, 'CPU_TILE_BUDGET', 1 << 20)  # forces the smallest tiles
    rc, out, _ = run(common + ['--out_dir', tmp_path / 'auto'], capsys)
    assert rc == 0 and 'tiles of' in out
    whole = np.asarray(Image.open(tmp_path / 'whole' / 'p' / 'sr_p.png')).astype(int)
    tiled = np.asarray(Image.open(tmp_path / 'auto' / 'p' / 'sr_p.png')).astype(int)
    assert np.abs(whole - tiled).max() <= 1


@pytest.mark.parametrize('h, w, largest, overlap', [(100, 100, 200, 24), (1024, 1024, 400, 24),
                                                    (300, 1000, 256, 16), (97, 513, 64, 8)])
def test_pick_tile(h, w, largest, overlap):
    tile = utils.pick_tile(h, w, largest, overlap)
    if max(h, w) <= largest:
        assert tile == 0
        return
    assert 2 * overlap < tile <= largest
    for length in (h, w):  # never more tiles than `largest` would need
        assert (len(utils._tile_starts(length, tile, overlap))
                <= len(utils._tile_starts(length, largest, overlap)))


def test_max_tile_memory_budget():
    cpu = torch.device('cpu')
    assert utils.max_tile(4, cpu, torch.bfloat16) > utils.max_tile(4, cpu)
    assert utils.max_tile(2, cpu) > utils.max_tile(4, cpu) > utils.max_tile(8, cpu)


def test_amp_choice(monkeypatch):
    cpu = torch.device('cpu')
    assert utils.autocast_dtype('off', cpu) is None
    assert utils.autocast_dtype('bf16', cpu) is torch.bfloat16
    with pytest.raises(utils.UsageError, match='fp16 needs --cuda'):
        utils.autocast_dtype('fp16', cpu)
    monkeypatch.setattr(utils, 'cpu_has_bf16', lambda: True)
    assert utils.autocast_dtype('auto', cpu) is torch.bfloat16
    monkeypatch.setattr(utils, 'cpu_has_bf16', lambda: False)
    assert utils.autocast_dtype('auto', cpu) is None


# ---------------------------------------------------------------------------------------------
# Alpha, grayscale, 16-bit, EXIF
# ---------------------------------------------------------------------------------------------

def test_alpha_is_kept(weights, tmp_path, capsys):
    rgba = np.dstack([natural(16, 16), np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))])
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 't.png')
    rc, _, err = run(['--image', tmp_path / 't.png', '--weight', weights[2],
                      '--out_dir', tmp_path], capsys)
    assert rc == 0, err
    with Image.open(tmp_path / 't' / 'sr_t.png') as sr:
        assert sr.mode == 'RGBA' and sr.size == (32, 32)
        alpha = np.asarray(sr.getchannel('A')).astype(float)
    expect = utils.imresize(torch.from_numpy(rgba[..., 3] / 255.0)[None].float(), 2)
    assert np.abs(alpha - utils.to_uint8(expect.clamp(0, 1))[..., 0]).max() <= 1


def test_grayscale_stays_gray(weights, tmp_path, capsys):
    Image.fromarray(natural(16, 16)).convert('L').save(tmp_path / 'g.png')
    rc, _, err = run(['--image', tmp_path / 'g.png', '--weight', weights[4],
                      '--out_dir', tmp_path], capsys)
    assert rc == 0, err
    sr = np.asarray(Image.open(tmp_path / 'g' / 'sr_g.png').convert('RGB')).astype(int)
    assert np.array_equal(sr[..., 0], sr[..., 1]) and np.array_equal(sr[..., 0], sr[..., 2])


def test_16bit_input(weights, tmp_path, capsys):
    gray16 = (np.asarray(Image.fromarray(natural(16, 16)).convert('L')).astype(np.uint16) * 257)
    Image.fromarray(gray16).save(tmp_path / 'd.png')
    with Image.open(tmp_path / 'd.png') as img:
        assert img.mode.startswith('I')  # really a 16-bit file
    rc, _, err = run(['--image', tmp_path / 'd.png', '--weight', weights[2],
                      '--out_dir', tmp_path], capsys)
    assert rc == 0, err
    with Image.open(tmp_path / 'd' / 'lr_d.png') as lr:  # 16-bit out (tests/test_photos.py)
        assert lr.mode == 'I;16' and np.array_equal(np.asarray(lr), gray16)
    assert size(tmp_path / 'd' / 'sr_d.png') == (32, 32)


def test_exif_orientation_applied(weights, tmp_path, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(natural(12, 20)).save(tmp_path / 'e.jpg', exif=exif, quality=95)
    rc, _, err = run(['--image', tmp_path / 'e.jpg', '--weight', weights[2],
                      '--out_dir', tmp_path], capsys)
    assert rc == 0, err
    assert size(tmp_path / 'e' / 'lr_e.jpg') == (12, 20)  # stored 20x12, displayed 12x20
    assert size(tmp_path / 'e' / 'sr_e.jpg') == (24, 40)


# ---------------------------------------------------------------------------------------------
# Bad input and bad weights
# ---------------------------------------------------------------------------------------------

def bad_files(folder: Path) -> dict:
    """name -> the problem its error line must mention."""
    good = folder / 'good.png'
    Image.fromarray(natural(16, 16)).save(good)
    (folder / 'text.png').write_text('hello, not a PNG')
    (folder / 'zero.png').write_bytes(b'')
    (folder / 'cut.png').write_bytes(good.read_bytes()[:200])
    return {'text.png': 'not an image', 'zero.png': 'empty file',
            'cut.png': 'truncated or corrupt'}


@pytest.mark.parametrize('name', ['missing.png', 'text.png', 'zero.png', 'cut.png'])
def test_bad_file_message(weights, tmp_path, capsys, name):
    problems = {**bad_files(tmp_path), 'missing.png': 'file not found'}
    rc, out, err = run(['--image', tmp_path / name, '--weight', weights[2],
                        '--out_dir', tmp_path / 'res'], capsys)
    assert rc == (2 if name == 'missing.png' else 1)  # a missing path: the command cannot run
    lines = err.strip().splitlines()  # one image: its one line, no 'N of M failed' summary
    assert len(lines) == 1
    assert lines[0].startswith(f'error: {tmp_path / name}: ') and problems[name] in lines[0]
    assert 'Traceback' not in out + err


def test_folder_with_bad_files_goes_on(weights, tmp_path):
    """A subprocess: the exit code and stderr a shell user sees, and no traceback."""
    src = tmp_path / 'in'
    src.mkdir()
    problems = bad_files(src)
    res = subprocess.run([sys.executable, str(ROOT / 'test_image.py'), '--image', str(src),
                          '--weight', str(weights[2]), '--out_dir', str(tmp_path / 'res')],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1
    assert 'Traceback' not in res.stderr + res.stdout
    for name, problem in problems.items():  # one line per bad file
        (line,) = [line for line in res.stderr.splitlines() if name in line]
        assert line.startswith(f'error: {src / name}: ') and problem in line
    assert 'error: 3 of 4 image(s) failed' in res.stderr
    assert size(tmp_path / 'res' / 'good' / 'sr_good.png') == (32, 32)


def test_empty_folder(weights, tmp_path, capsys):
    rc, _, err = run(['--image', tmp_path, '--weight', weights[2]], capsys)
    assert rc == 2 and f'error: {tmp_path}: no images' in err  # a bad --image: exit status 2


def test_scale_mismatch_refused(weights, tmp_path, capsys):
    Image.fromarray(natural(16, 16)).save(tmp_path / 'p.png')
    rc, _, err = run(['--image', tmp_path / 'p.png', '--weight', weights[2],
                      '--upscale_factor', 4], capsys)
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith(f'error: {weights[2]}: ') and 'x2' in err and '--upscale_factor 4' in err


def test_scale_from_bare_state_dict(tmp_path, capsys):
    torch.save(sane_generator(2).state_dict(), tmp_path / 'bare.pth')
    Image.fromarray(natural(16, 16)).save(tmp_path / 'p.png')
    rc, out, err = run(['--image', tmp_path / 'p.png', '--weight', tmp_path / 'bare.pth',
                        '--out_dir', tmp_path / 'res'], capsys)
    assert rc == 0, err
    assert out.startswith('x2 generator') and size(tmp_path / 'res' / 'p' / 'sr_p.png') == (32, 32)


@pytest.mark.parametrize('content, problem', [
    ({'conv.weight': torch.zeros(3)}, 'not an SRResNet/SRGAN generator'),
    ([1, 2, 3], 'expected a dict'),
    (None, 'PyTorch weights file'),
])
def test_not_a_generator_refused(tmp_path, capsys, content, problem):
    path = tmp_path / 'w.pth'
    if content is None:
        path.write_bytes(b'garbage')
    else:
        torch.save(content, path)
    Image.fromarray(natural(16, 16)).save(tmp_path / 'p.png')
    rc, _, err = run(['--image', tmp_path / 'p.png', '--weight', path], capsys)
    assert rc == 1
    assert err.startswith(f'error: {path}: ') and problem in err and len(err.splitlines()) == 1


def test_missing_default_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(utils.DEFAULT_WEIGHTS, 4, {
        kind: str(tmp_path / f'weights/{kind}_x4.pth') for kind in ('srresnet', 'srgan')})
    Image.fromarray(natural(16, 16)).save(tmp_path / 'p.png')
    rc, _, err = run(['--image', tmp_path / 'p.png'], capsys)
    assert rc == 2  # nothing to run with: the command cannot run as given
    assert 'srgan_x4.pth: the default weights file is not there' in err and '--weight' in err


@pytest.mark.parametrize('argv, problem', [
    (['--amp', 'fp16'], '--amp fp16 needs --cuda'),
    (['--tile', '40'], '--tile 40 must be 0 or larger than twice --tile_overlap'),
])
def test_bad_options(weights, tmp_path, capsys, argv, problem):
    Image.fromarray(natural(16, 16)).save(tmp_path / 'p.png')
    rc, _, err = run(['--image', tmp_path / 'p.png', '--weight', weights[2]] + argv, capsys)
    assert rc == 2 and problem in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message without a GPU')
def test_cuda_without_gpu(weights, tmp_path, capsys):
    rc, _, err = run(['--image', tmp_path, '--weight', weights[2], '--cuda'], capsys)
    assert rc == 2 and 'no CUDA device' in err
