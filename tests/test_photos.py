"""Photos as they are (utils.load_photo / save_photo / process_image, test_image.py): one round
trip per input mode on generated images, the ICC profile and EXIF, --alpha, --outscale,
--ensemble (test_image, test_video, evaluate), --ext / --quality, and the bf16 warning. Each
row of docs/photos.md's table names its test here."""

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from torch import nn

import evaluate
import test_image
import utils
from conftest import natural, one_error, run_main, sane_generator


@pytest.fixture(scope='module')
def net():
    """A tiny x2 generator behaving like a trained one, ready for utils.super_resolve."""
    return utils.inference_model(sane_generator(2, 1, 8), torch.device('cpu'))


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp('weights') / 'tiny_x2.pth'
    utils.save_weights(sane_generator(2, 1, 8), str(path))
    return path


def rgb(h: int = 16, w: int = 16) -> np.ndarray:
    return natural(h, w)


def grey(h: int = 16, w: int = 16) -> np.ndarray:
    return np.asarray(Image.fromarray(natural(h, w)).convert('L'))


def grey16(h: int = 16, w: int = 16) -> np.ndarray:
    """16-bit grey using all 16 bits (not an 8-bit image times 257)."""
    g = grey(h, w).astype(np.uint32) * 256 + np.arange(w, dtype=np.uint32)[None] * 13
    return g.astype(np.uint16)


def ramp(h: int = 16, w: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))


def photo(path, net, tmp_path, **options) -> dict:
    """process_image on `path` at x2: its result, with the sr_ file's PIL image opened."""
    opts = utils.PhotoOptions(scale=2, out_dir=str(tmp_path / 'out'), tile=0, **options)
    result = utils.process_image(str(path), net, opts)
    with Image.open(result['outputs'][0]) as img:
        img.load()
        result['sr'] = img
    return result


def run(argv: list, capsys) -> tuple:
    return run_main(test_image.main, argv, capsys)


# ---------------------------------------------------------------------------------------------
# One round trip per input mode (docs/photos.md's table)
# ---------------------------------------------------------------------------------------------

def test_grey_L(net, tmp_path):
    Image.fromarray(grey()).save(tmp_path / 'g.png')
    r = photo(tmp_path / 'g.png', net, tmp_path)
    assert r['sr'].mode == 'L' and r['sr'].size == (32, 32) and r['bits'] == 8
    with Image.open(r['outputs'][2]) as lr:  # lr_ is the input, exactly
        assert lr.mode == 'L' and np.array_equal(np.asarray(lr), grey())


def test_bilevel_1(net, tmp_path):
    Image.fromarray(grey() > 128).save(tmp_path / 'b.png')
    with Image.open(tmp_path / 'b.png') as img:
        assert img.mode == '1'
    r = photo(tmp_path / 'b.png', net, tmp_path)
    assert r['sr'].mode == 'L' and r['sr'].size == (32, 32)


def test_rgb(net, tmp_path):
    Image.fromarray(rgb()).save(tmp_path / 'c.png')
    r = photo(tmp_path / 'c.png', net, tmp_path)
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32) and r['bits'] == 8
    assert 'icc_profile' not in r['sr'].info and 'exif' not in r['sr'].info
    with Image.open(r['outputs'][2]) as lr:
        assert np.array_equal(np.asarray(lr), rgb())


def test_grey_from_rgb_with_equal_channels(net, tmp_path):
    Image.fromarray(np.repeat(grey()[..., None], 3, axis=2)).save(tmp_path / 'e.png')
    r = photo(tmp_path / 'e.png', net, tmp_path)
    sr = np.asarray(r['sr'])
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32)
    assert np.array_equal(sr[..., 0], sr[..., 1]) and np.array_equal(sr[..., 0], sr[..., 2])


def test_grey_luma_written_back(net, tmp_path):
    """The network runs on the grey replicated to RGB; the L output is that output's luma."""
    Image.fromarray(grey()).save(tmp_path / 'g.png')
    r = photo(tmp_path / 'g.png', net, tmp_path)
    x = torch.from_numpy(grey() / 255.0).float().expand(3, -1, -1)
    luma = utils.to_grayscale(utils.super_resolve(net, x, 2, 0))[:1]
    assert np.array_equal(np.asarray(r['sr']), utils.to_uint8(luma)[..., 0])


def test_grey_alpha_LA(net, tmp_path):
    Image.fromarray(np.dstack([grey(), ramp()]), 'LA').save(tmp_path / 'la.png')
    r = photo(tmp_path / 'la.png', net, tmp_path)
    assert r['sr'].mode == 'LA' and r['sr'].size == (32, 32)
    alpha = np.asarray(r['sr'].getchannel('A')).astype(int)
    expect = utils.imresize(torch.from_numpy(ramp() / 255.0)[None].float(), 2).clamp(0, 1)
    assert np.abs(alpha - utils.to_uint8(expect)[..., 0]).max() <= 1


def test_16bit_png(net, tmp_path):
    Image.fromarray(grey16()).save(tmp_path / 'd.png')
    r = photo(tmp_path / 'd.png', net, tmp_path)
    assert r['sr'].mode == 'I;16' and r['sr'].size == (32, 32) and r['bits'] == 16
    sr = np.asarray(r['sr'])
    assert sr.dtype == np.uint16 and np.any(sr % 257)  # not 8-bit values scaled up
    with Image.open(r['outputs'][2]) as lr:  # the 16-bit input round-trips exactly
        assert lr.mode == 'I;16' and np.array_equal(np.asarray(lr), grey16())


def test_16bit_fed_at_full_precision(net, tmp_path):
    """Rounding the input to 8 bits first would give the same output for both files."""
    exact = grey16()
    rounded = (np.round(exact / 257.0) * 257).astype(np.uint16)
    Image.fromarray(exact).save(tmp_path / 'a.png')
    Image.fromarray(rounded).save(tmp_path / 'b.png')
    a = np.asarray(photo(tmp_path / 'a.png', net, tmp_path)['sr']).astype(int)
    b = np.asarray(photo(tmp_path / 'b.png', net, tmp_path)['sr']).astype(int)
    assert np.abs(a - b).max() > 0


def test_16bit_tiff(net, tmp_path):
    Image.fromarray(grey16()).save(tmp_path / 'd.tif')
    r = photo(tmp_path / 'd.tif', net, tmp_path)
    assert r['outputs'][0].endswith('sr_d.tif') and r['sr'].format == 'TIFF'
    assert r['sr'].mode == 'I;16' and r['sr'].size == (32, 32)


@pytest.mark.parametrize('mode, values', [('I', 1e6), ('F', 7.0)])
def test_32bit_tiff_scaled_by_range(net, tmp_path, mode, values):
    g = grey().astype(np.float64) / 255 * values
    Image.fromarray(g.astype(np.int32 if mode == 'I' else np.float32)).save(tmp_path / 'w.tif')
    r = photo(tmp_path / 'w.tif', net, tmp_path)
    assert r['sr'].mode == 'I;16' and r['sr'].size == (32, 32)
    assert len(r['notes']) == 1 and 'scaled from that range' in r['notes'][0]
    with Image.open(r['outputs'][2]) as lr:  # min -> 0, max -> 65535
        lr = np.asarray(lr)
    assert lr.min() == 0 and lr.max() == 65535


def test_rgba(net, tmp_path):
    Image.fromarray(np.dstack([rgb(), ramp()]), 'RGBA').save(tmp_path / 't.png')
    r = photo(tmp_path / 't.png', net, tmp_path)
    assert r['sr'].mode == 'RGBA' and r['sr'].size == (32, 32)


def test_alpha_network(net, tmp_path):
    """--alpha network: the generator on the alpha replicated to RGB, its luma as alpha."""
    Image.fromarray(np.dstack([rgb(), ramp()]), 'RGBA').save(tmp_path / 't.png')
    r = photo(tmp_path / 't.png', net, tmp_path, alpha='network')
    a = torch.from_numpy(ramp() / 255.0).float().expand(3, -1, -1)
    expect = utils.to_grayscale(utils.super_resolve(net, a, 2, 0))[:1].clamp(0, 1)
    assert np.array_equal(np.asarray(r['sr'].getchannel('A')), utils.to_uint8(expect)[..., 0])
    bicubic = photo(tmp_path / 't.png', net, tmp_path)['sr']
    assert not np.array_equal(np.asarray(r['sr'].getchannel('A')),
                              np.asarray(bicubic.getchannel('A')))


def test_palette(net, tmp_path):
    Image.fromarray(rgb()).convert('P').save(tmp_path / 'p.png')
    r = photo(tmp_path / 'p.png', net, tmp_path)
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32)


def test_palette_with_transparency(net, tmp_path):
    img = Image.fromarray(rgb()).convert('P')
    img.info['transparency'] = int(np.asarray(img)[0, 0])
    img.save(tmp_path / 'p.png', transparency=img.info['transparency'])
    r = photo(tmp_path / 'p.png', net, tmp_path)
    assert r['sr'].mode == 'RGBA' and r['sr'].size == (32, 32)
    assert np.asarray(r['sr'].getchannel('A'))[0, 0] == 0


def test_animated_gif_first_frame(net, tmp_path):
    frames = [Image.fromarray(rgb()).convert('P'), Image.fromarray(rgb()[::-1]).convert('P')]
    frames[0].save(tmp_path / 'a.gif', save_all=True, append_images=frames[1:])
    r = photo(tmp_path / 'a.gif', net, tmp_path)
    assert r['outputs'][0].endswith('sr_a.png')  # GIF holds 256 colours: PNG instead
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32)
    assert r['notes'] == [f'{tmp_path / "a.gif"}: 2 frames; only the first is super-resolved']


def test_animated_png_first_frame_notice(weights, tmp_path, capsys):
    frames = [Image.fromarray(rgb()), Image.fromarray(rgb()[::-1])]
    frames[0].save(tmp_path / 'a.png', save_all=True, append_images=frames[1:])
    rc, out, err = run(['--image', tmp_path / 'a.png', '--weight', weights, '--out_dir',
                        tmp_path / 'o'], capsys)
    assert rc == 0, err
    assert err == (f'warning: {tmp_path / "a.png"}: 2 frames; only the first is '
                   'super-resolved\n')
    with Image.open(tmp_path / 'o' / 'a' / 'sr_a.png') as sr:
        assert sr.size == (32, 32) and getattr(sr, 'n_frames', 1) == 1
        assert np.array_equal(np.asarray(Image.open(tmp_path / 'o' / 'a' / 'lr_a.png')), rgb())


def test_cmyk(net, tmp_path):
    Image.fromarray(rgb()).convert('CMYK').save(tmp_path / 'c.jpg', quality=95)
    r = photo(tmp_path / 'c.jpg', net, tmp_path)
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32) and r['sr'].format == 'JPEG'


def test_16bit_colour_notice(net, tmp_path):
    tifffile = pytest.importorskip('tifffile')  # Pillow cannot write 16-bit colour
    tifffile.imwrite(tmp_path / 'c.tif', rgb().astype(np.uint16) * 257)
    r = photo(tmp_path / 'c.tif', net, tmp_path)
    assert r['sr'].mode == 'RGB' and 'read as 8' in r['notes'][0]


@functools.lru_cache(maxsize=None)
def srgb_icc() -> bytes:
    """One sRGB profile for the whole module: a new one carries the time it was made, so two
    made a second apart differ."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()


def test_icc_and_exif_kept_orientation_applied_once(net, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = 'Maker'
    Image.fromarray(rgb(12, 20)).save(tmp_path / 'e.jpg', exif=exif, icc_profile=srgb_icc(),
                                      quality=95)
    r = photo(tmp_path / 'e.jpg', net, tmp_path)
    for out in r['outputs']:
        with Image.open(out) as img:
            assert img.info.get('icc_profile') == srgb_icc()
            tags = img.getexif()
            assert tags[0x010F] == 'Maker' and tags[0x0112] == 1
    assert r['sr'].size == (24, 40)  # stored 20x12, displayed 12x20: rotated once


def test_icc_png(net, tmp_path):
    Image.fromarray(rgb()).save(tmp_path / 'i.png', icc_profile=srgb_icc())
    r = photo(tmp_path / 'i.png', net, tmp_path)
    assert r['sr'].info.get('icc_profile') == srgb_icc()


def test_icc_of_another_colour_space_dropped(net, tmp_path):
    """An ICC profile of another colour space (here an RGB one on a grey image) is dropped."""
    Image.fromarray(grey()).save(tmp_path / 'g.png', icc_profile=srgb_icc())
    r = photo(tmp_path / 'g.png', net, tmp_path)
    assert r['sr'].mode == 'L' and 'icc_profile' not in r['sr'].info


def test_training_reads_rgb_as_before(tmp_path):
    """load_image (training, evaluation) is unchanged: RGB float, 16-bit grey replicated."""
    Image.fromarray(grey16()).save(tmp_path / 'd.png')
    x, alpha = utils.load_image(str(tmp_path / 'd.png'))
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and alpha is None
    assert torch.allclose(x[0], torch.from_numpy(grey16() / 65535.0).float())


# ---------------------------------------------------------------------------------------------
# --ensemble
# ---------------------------------------------------------------------------------------------

class Equivariant(nn.Module):
    """A stand-in generator equivariant by construction under flips and quarter turns:
    nearest-neighbour upscaling, then convolutions whose 3x3 kernels have the square's
    symmetry, a 1x1 channel mix and tanh. No pixel shuffle (which is not equivariant)."""

    def __init__(self, scale: int):
        super().__init__()
        torch.manual_seed(0)
        self.scale = scale
        a, b, c = torch.rand(3, 3, 1, 1)  # corner, edge, centre weights per channel
        self.kernel = nn.Parameter(torch.cat([torch.cat([a, b, a], 2), torch.cat([b, c, b], 2),
                                              torch.cat([a, b, a], 2)], 1)[:, None] / 4)
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = nn.functional.interpolate(x, scale_factor=self.scale, mode='nearest')
        x = nn.functional.conv2d(x, self.kernel.reshape(3, 1, 3, 3), padding=1, groups=3)
        return torch.tanh(self.mix(x))


def test_ensemble_of_equivariant_generator_is_the_plain_output():
    model = Equivariant(2).eval()
    lr = torch.rand(3, 14, 20)  # not square: the quarter turns swap height and width
    plain = utils.super_resolve(model, lr, 2, 0)
    assert torch.allclose(utils.ensemble_resolve(model, lr, 2, 0), plain, atol=1e-5)
    batch = torch.rand(2, 3, 14, 20)
    assert torch.allclose(utils.ensemble_resolve(model, batch, 2, 0),
                          utils.super_resolve(model, batch, 2, 0), atol=1e-5)


def test_ensemble_averages_the_eight_transforms(net):
    """A real (not equivariant) generator: the ensemble differs from one pass, and is the
    mean of the 8 outputs each turned back by hand."""
    lr = torch.rand(3, 14, 20)
    outputs = []
    for flip in (False, True):
        x = lr.flip(-1) if flip else lr
        for k in range(4):
            y = torch.rot90(utils.super_resolve(net, torch.rot90(x, k, (1, 2)), 2, 0), -k, (1, 2))
            outputs.append(y.flip(-1) if flip else y)
    ens = utils.ensemble_resolve(net, lr, 2, 0)
    assert torch.allclose(ens, torch.stack(outputs).mean(0), atol=1e-6)
    assert (ens - utils.super_resolve(net, lr, 2, 0)).abs().max() > 1e-4


def test_ensemble_flag_test_image(weights, tmp_path, capsys):
    Image.fromarray(rgb(14, 20)).save(tmp_path / 'x.png')
    rc, _, err = run(['--image', tmp_path / 'x.png', '--weight', weights, '--ensemble',
                      '--out_dir', tmp_path / 'o'], capsys)
    assert rc == 0, err
    model = utils.inference_model(sane_generator(2, 1, 8), torch.device('cpu'))
    expect = utils.to_uint8(utils.ensemble_resolve(model, torch.from_numpy(
        rgb(14, 20).transpose(2, 0, 1) / 255.0).float(), 2))
    with Image.open(tmp_path / 'o' / 'x' / 'sr_x.png') as sr:
        assert np.abs(np.asarray(sr).astype(int) - expect).max() <= 1


def test_evaluate_ensemble_rows(weights, tmp_path, capsys):
    from skimage import data
    (tmp_path / 'Tiny').mkdir()
    Image.fromarray(data.astronaut()[100:164, 180:260]).save(tmp_path / 'Tiny' / 'a.png')
    rc, out, err = run_main(evaluate.main, ['--data', tmp_path / 'Tiny', '--weight',
                                            f'Net={weights}', '--ensemble', '--metrics',
                                            'psnr,ssim', '--json', tmp_path / 't.json'], capsys)
    assert rc == 0, err
    rows = {r['method']: r for r in json.loads((tmp_path / 't.json').read_text())}
    assert list(rows) == ['Bicubic', 'Net', 'Net+']
    assert '| Tiny | Net+ | 1 |' in out
    hr, lr = utils.load_hr_lr(str(tmp_path / 'Tiny' / 'a.png'), 2)
    model = utils.inference_model(sane_generator(2, 1, 8), torch.device('cpu'))
    sr = utils.ensemble_resolve(model, lr, 2)
    assert rows['Net+']['psnr_y'] == pytest.approx(utils.psnr(sr, hr, 2), abs=1e-9)
    assert rows['Net+']['psnr_y'] != rows['Net']['psnr_y']


# ---------------------------------------------------------------------------------------------
# --outscale
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('outscale, size', [(3, (60, 42)), (1.5, (30, 21)), (0.5, (10, 7))])
def test_outscale_size_and_resize(net, tmp_path, outscale, size):
    """x2 network, then MATLAB bicubic to round(S*w) x round(S*h)."""
    Image.fromarray(rgb(14, 20)).save(tmp_path / 'x.png')
    r = photo(tmp_path / 'x.png', net, tmp_path, outscale=outscale)
    assert r['sr'].size == size and r['out_size'] == size and r['net_size'] == (40, 28)
    lr = torch.from_numpy(rgb(14, 20).transpose(2, 0, 1) / 255.0).float()
    expect = utils.imresize(utils.super_resolve(net, lr, 2, 0), size=size[::-1])
    assert np.abs(np.asarray(r['sr']).astype(int) - utils.to_uint8(expect)).max() <= 1
    with Image.open(r['outputs'][1]) as bicubic:
        assert bicubic.size == size


def test_outscale_flag_prints_both_sizes(weights, tmp_path, capsys):
    Image.fromarray(rgb(14, 20)).save(tmp_path / 'x.png')
    rc, out, err = run(['--image', tmp_path / 'x.png', '--weight', weights, '--outscale', '3',
                        '--out_dir', tmp_path / 'o'], capsys)
    assert rc == 0, err
    assert 'x.png: 20x14 -> 40x28 (network) -> 60x42 (--outscale)' in out


@pytest.mark.parametrize('value', ['0', '-1', 'nan', 'x'])
def test_outscale_must_be_positive(weights, tmp_path, capsys, value):
    Image.fromarray(rgb()).save(tmp_path / 'x.png')
    rc, _, err = run(['--image', tmp_path / 'x.png', '--weight', weights, '--outscale', value],
                     capsys)
    assert rc == 2 and 'error: argument --outscale: ' in err.splitlines()[-1]


def test_video_outscale_and_ensemble(weights, tmp_path, capsys):
    import test_video
    from test_test_video import decode, make_video
    make_video(tmp_path / 'c.mp4', n=2, audio=False)  # 32x24 frames
    rc, out, err = run_main(test_video.main, ['--video', tmp_path / 'c.mp4', '--weight', weights,
                                              '--outscale', '1.5', '--ensemble', '--out_dir',
                                              tmp_path / 'o'], capsys)
    assert rc == 0, err
    assert 'c.mp4: 32x24 -> 64x48 (network) -> 48x36 (--outscale)' in out
    frames = decode(tmp_path / 'o' / 'sr_c.mp4')
    assert len(frames) == 2 and frames[0].shape == (36, 48, 3)
    assert test_video.output_size(31, 25, 4, 1.5) == (46, 38)  # even sides for yuv420p
    assert test_video.output_size(31, 25, 4, 1.5, 'yuv444p') == (46, 38)
    assert test_video.output_size(33, 25, 4, 1.5, 'yuv444p') == (50, 38)
    assert test_video.output_size(33, 25, 4, 1.5) == (50, 38)
    assert test_video.output_size(31, 21, 4, 1.0) == (30, 20)
    assert test_video.output_size(31, 21, 4, 1.0, 'yuv444p') == (31, 21)


# ---------------------------------------------------------------------------------------------
# --ext, --quality
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('ext, fmt', [('png', 'PNG'), ('jpg', 'JPEG'), ('webp', 'WEBP'),
                                      ('tif', 'TIFF')])
def test_ext(net, tmp_path, ext, fmt):
    Image.fromarray(rgb()).save(tmp_path / 'x.png')
    r = photo(tmp_path / 'x.png', net, tmp_path, ext=ext)
    assert all(out.endswith(f'x.{ext}') for out in r['outputs'])
    assert r['sr'].format == fmt and r['sr'].mode == 'RGB' and r['sr'].size == (32, 32)


def test_ext_auto_keeps_the_input_format(net, tmp_path):
    Image.fromarray(rgb()).save(tmp_path / 'x.webp', quality=90)
    assert photo(tmp_path / 'x.webp', net, tmp_path)['sr'].format == 'WEBP'


@pytest.mark.parametrize('ext', ['jpg', 'webp'])
def test_quality(weights, tmp_path, capsys, ext):
    Image.fromarray(natural(48, 48)).save(tmp_path / 'x.png')
    sizes = {}
    for q in (10, 95):
        rc, _, err = run(['--image', tmp_path / 'x.png', '--weight', weights, '--ext', ext,
                          '--quality', q, '--out_dir', tmp_path / str(q)], capsys)
        assert rc == 0, err
        sizes[q] = (tmp_path / str(q) / 'x' / f'sr_x.{ext}').stat().st_size
    assert sizes[10] < sizes[95]


@pytest.mark.parametrize('ext', ['jpg', 'webp'])
def test_16bit_to_lossy_format_refused(weights, tmp_path, capsys, ext):
    Image.fromarray(grey16()).save(tmp_path / 'd.png')
    rc, _, err = run(['--image', tmp_path / 'd.png', '--weight', weights, '--ext', ext,
                      '--out_dir', tmp_path / 'o'], capsys)
    assert rc == 2
    assert one_error(err) == (f'error: --ext {ext}: d.png is 16-bit grey, which only PNG and '
                              'TIFF hold (use --ext png or --ext tif)')
    assert not (tmp_path / 'o').exists()  # refused before any work


def test_16bit_tif_and_png_allowed(net, tmp_path):
    Image.fromarray(grey16()).save(tmp_path / 'd.png')
    r = photo(tmp_path / 'd.png', net, tmp_path, ext='tif')
    assert r['sr'].format == 'TIFF' and r['sr'].mode == 'I;16'


def test_bad_quality(weights, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / 'x.png')
    rc, _, err = run(['--image', tmp_path / 'x.png', '--weight', weights, '--quality', '101'],
                     capsys)
    assert rc == 2 and 'error: argument --quality: ' in err.splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# --amp bf16 on a CPU without native bf16
# ---------------------------------------------------------------------------------------------

def test_bf16_warning(monkeypatch, capsys):
    cpu = torch.device('cpu')
    monkeypatch.setattr(utils, 'cpu_has_bf16', lambda: False)
    assert utils.autocast_dtype('bf16', cpu) is torch.bfloat16  # still honoured
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('warning: --amp bf16: this CPU (')
    assert 'AVX512-BF16 nor AMX-BF16' in err and 'emulated' in err
    assert utils.autocast_dtype('auto', cpu) is None  # auto picks fp32 silently
    assert utils.autocast_dtype('off', cpu) is None
    assert capsys.readouterr().err == ''
    monkeypatch.setattr(utils, 'cpu_has_bf16', lambda: True)
    assert utils.autocast_dtype('bf16', cpu) is torch.bfloat16
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('script, argv', [
    ('test_image', ['--image', 'missing.png']),
    ('test_video', ['--video', 'missing.mp4']),
    ('evaluate', ['--data', 'missing']),
    ('train', ['--trainset_dir', 'missing']),
])
def test_bf16_warning_in_every_script(monkeypatch, tmp_path, capsys, script, argv):
    """Each script resolves --amp through utils.autocast_dtype before it checks its inputs:
    the warning, then the one error line about the missing input."""
    import importlib
    module = importlib.import_module(script)
    monkeypatch.setattr(utils, 'cpu_has_bf16', lambda: False)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(module.main, argv + ['--amp', 'bf16'], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == ['warning', 'error'], err
    assert 'AVX512-BF16 nor AMX-BF16' in lines[0]
