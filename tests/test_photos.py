"""Photos as they are (utils.load_photo / save_photo / process_image, test_image.py): one round
trip per input mode on generated images, the ICC profile and EXIF, --alpha, --outscale,
--ensemble (test_image, test_video, evaluate), --ext / --quality, and the bf16 warning. Each
row of docs/photos.md's table names its test here."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import test_image
import utils
from conftest import natural, run_main, sane_generator


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


def test_cmyk(net, tmp_path):
    Image.fromarray(rgb()).convert('CMYK').save(tmp_path / 'c.jpg', quality=95)
    r = photo(tmp_path / 'c.jpg', net, tmp_path)
    assert r['sr'].mode == 'RGB' and r['sr'].size == (32, 32) and r['sr'].format == 'JPEG'


def test_16bit_colour_notice(net, tmp_path):
    tifffile = pytest.importorskip('tifffile')  # Pillow cannot write 16-bit colour
    tifffile.imwrite(tmp_path / 'c.tif', rgb().astype(np.uint16) * 257)
    r = photo(tmp_path / 'c.tif', net, tmp_path)
    assert r['sr'].mode == 'RGB' and 'read as 8' in r['notes'][0]


def srgb_icc() -> bytes:
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
