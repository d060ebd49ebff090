"""utils.py: MATLAB-style imresize, YCbCr, PSNR/SSIM, and image loading (modes, bad files)."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import utils
from conftest import benchmark_set

SCALES = [1 / 4, 1 / 3, 1 / 2, 2, 3, 4]


# ---------------------------------------------------------------------------------------------
# imresize
# ---------------------------------------------------------------------------------------------

def cubic(t: float) -> float:
    """Keys' cubic kernel, a = -0.5, as MATLAB's imresize defines it."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    if t <= 2:
        return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
    return 0.0


def reflect(i: int, n: int) -> int:
    """1-based index i mirrored into 1..n, edge pixel repeated (MATLAB's 'symmetric')."""
    while i < 1 or i > n:
        i = 1 - i if i < 1 else 2 * n + 1 - i
    return i


def reference_weights(n_in: int, n_out: int, scale: float) -> list:
    """For each output pixel, a list of (0-based input index, weight), the slow way."""
    width = 4 / scale if scale < 1 else 4  # antialiasing: the kernel is stretched by 1/scale
    rows = []
    for x in range(1, n_out + 1):
        centre = x / scale + 0.5 * (1 - 1 / scale)
        first = math.floor(centre - width / 2)
        taps = []
        for i in range(first, first + math.ceil(width) + 2):
            d = centre - i
            w = scale * cubic(scale * d) if scale < 1 else cubic(d)
            taps.append((reflect(i, n_in) - 1, w))
        total = sum(w for _, w in taps)
        rows.append([(i, w / total) for i, w in taps])
    return rows


def reference_imresize(img: list, scale: float) -> np.ndarray:
    """MATLAB imresize(img, scale, 'bicubic') of a 2-D list with plain loops: rows, then columns."""
    h, w = len(img), len(img[0])
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    wh, ww = reference_weights(h, out_h, scale), reference_weights(w, out_w, scale)
    tmp = [[sum(wt * img[i][c] for i, wt in wh[r]) for c in range(w)] for r in range(out_h)]
    return np.array([[sum(wt * tmp[r][j] for j, wt in ww[c]) for c in range(out_w)]
                     for r in range(out_h)])


@pytest.mark.parametrize('scale', SCALES)
def test_imresize_matches_slow_reference(scale):
    img = np.random.default_rng(1).random((13, 17))
    expected = reference_imresize(img.tolist(), scale)
    got = utils.imresize(torch.from_numpy(img), scale).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('scale', SCALES)
def test_imresize_constant_stays_constant_and_sizes_are_ceil(scale):
    x = torch.full((3, 13, 17), 0.37, dtype=torch.float64)
    y = utils.imresize(x, scale)
    assert y.shape == (3, math.ceil(13 * scale), math.ceil(17 * scale))
    torch.testing.assert_close(y, torch.full_like(y, 0.37), rtol=0, atol=1e-12)


def test_imresize_upscale_known_values():
    # [0, 1] x2: output centres at 0.75, 1.25, 1.75, 2.25 (1-based); the cubic kernel's weights
    # at distances 0.25, 0.75, 1.25, 1.75 are 0.8671875, 0.2265625, -0.0703125, -0.0234375, and
    # the mirrored edges repeat the end pixels, e.g. out[0] = 0 * (0.2265625 + 0.8671875)
    # + 1 * (-0.0234375 - 0.0703125).
    y = utils.imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), 2)
    expected = torch.tensor([-0.09375, 0.203125, 0.796875, 1.09375], dtype=torch.float64)
    torch.testing.assert_close(y, expected.expand(2, 4), rtol=0, atol=1e-12)


def test_imresize_downscale_ramp_known_values():
    # A ramp 0..15 halved: the antialiased kernel (8 px wide) is symmetric, so where it does
    # not reach an edge the output is the ramp at the output centre 2x - 0.5, minus 1 (1-based).
    # At the left edge the mirrored ramp is |.|-shaped; with the weights above, halved:
    # out[0] = (-0.0234375*2 - 0.0703125*1 + 0.8671875*1 + 0.2265625*2 - 0.0703125*3
    #           - 0.0234375*4) / 2 = 0.44921875; the right edge mirrors it: 15 - 0.44921875.
    y = utils.imresize(torch.arange(16, dtype=torch.float64)[None], 0.5)[0]
    assert y.shape == (8,)
    torch.testing.assert_close(y[2:6], torch.tensor([4.5, 6.5, 8.5, 10.5], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert y[0].item() == pytest.approx(0.44921875, abs=1e-12)
    assert y[7].item() == pytest.approx(15 - 0.44921875, abs=1e-12)


def test_imresize_batch_equals_single_images():
    x = torch.rand(3, 3, 20, 24)
    batched = utils.imresize(x, 1 / 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], utils.imresize(x[i], 1 / 4))


# ---------------------------------------------------------------------------------------------
# YCbCr
# ---------------------------------------------------------------------------------------------

def test_ycbcr_known_values():
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    torch.testing.assert_close(utils.rgb_to_ycbcr(white).flatten(),
                               torch.tensor([235, 128, 128]) / 255.0)
    torch.testing.assert_close(utils.rgb_to_ycbcr(black).flatten(),
                               torch.tensor([16, 128, 128]) / 255.0)
    red = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(utils.rgb_to_ycbcr(red) * 255,
                               [16 + 65.481, 128 - 37.797, 128 + 112.0], atol=1e-9)


def test_ycbcr_round_trip():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(utils.ycbcr_to_rgb(utils.rgb_to_ycbcr(x)), x)
    a = np.random.default_rng(0).random((5, 7, 3))
    np.testing.assert_allclose(utils.ycbcr_to_rgb(utils.rgb_to_ycbcr(a)), a, atol=1e-12)
    # channels first for tensors, last for arrays: the same pixel gives the same answer
    np.testing.assert_allclose(utils.rgb_to_ycbcr(x[0, :, 2, 3].view(3, 1, 1)).flatten().numpy(),
                               utils.rgb_to_ycbcr(x[0, :, 2, 3].numpy()), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------

def gray(value: int, size: int = 24) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_psnr_identical_is_inf():
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert utils.psnr(img, img.copy(), 2) == float('inf')
    assert utils.psnr(img, img.copy(), 2, y_channel=False) == float('inf')


def test_psnr_constant_offset():
    # Grey RGB (v, v, v) has Y = 16 + 219 v / 255 and Cb = Cr = 128 (their rows sum to 0), so
    # an offset of k grey levels is an offset of 219 k / 255 in Y and of nothing in Cb, Cr.
    k = 10
    a, b = gray(100), gray(100 + k)
    b[:2] = 255  # differences inside the 2-pixel border must not count
    dy = 219 * k / 255
    expected_y = 10 * math.log10(255 ** 2 / dy ** 2)
    assert utils.psnr(a, b, 2) == pytest.approx(expected_y, abs=1e-9)
    assert utils.psnr(a, b, 2, y_channel=False) == pytest.approx(
        10 * math.log10(255 ** 2 / (dy ** 2 / 3)), abs=1e-9)
    assert utils.psnr(a, b, 0) < expected_y - 1


@pytest.fixture(scope='module')
def astronaut_pair():
    """A natural 128x128 uint8 image and a noisy copy."""
    from skimage import data
    img = np.asarray(Image.fromarray(data.astronaut()).resize((128, 128), Image.BICUBIC))
    noise = np.random.default_rng(0).normal(0, 12, img.shape)
    return img, np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


def luma(img: np.ndarray) -> np.ndarray:
    """BT.601 (MATLAB) Y on the 0-255 scale, float64, from a uint8 RGB array."""
    r, g, b = (img[..., c].astype(np.float64) / 255 for c in range(3))
    return 16 + 65.481 * r + 128.553 * g + 24.966 * b


def test_ssim_and_psnr_match_skimage(astronaut_pair):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    clean, noisy = astronaut_pair
    border = 4
    ya = luma(clean)[border:-border, border:-border]
    yb = luma(noisy)[border:-border, border:-border]
    expected = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert 0.2 < expected < 0.95  # a real test: neither trivial nor degenerate
    assert utils.ssim(clean, noisy, border, y_channel=True) == pytest.approx(expected, abs=1e-4)
    assert utils.psnr(clean, noisy, border) == pytest.approx(
        peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-6)


def test_ssim_identical_is_one(astronaut_pair):
    clean, _ = astronaut_pair
    assert utils.ssim(clean, clean.copy(), 4) == pytest.approx(1.0, abs=1e-12)
    assert utils.ssim(clean, clean.copy(), 4, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_metrics_accept_tensors_like_uint8(astronaut_pair):
    clean, noisy = astronaut_pair
    as_tensor = torch.from_numpy(noisy).permute(2, 0, 1).float() / 255
    assert utils.image_metrics(as_tensor, clean, 4) == utils.image_metrics(noisy, clean, 4)


# ---------------------------------------------------------------------------------------------
# Image loading
# ---------------------------------------------------------------------------------------------

def noise_png(path, size=64):
    arr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def bad_image(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / 'bad.png'
    if kind == 'missing':
        pass
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'text':
        path.write_text('this is not a PNG\n')
    elif kind == 'truncated':
        data = noise_png(path).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'folder':
        path.mkdir()
    return path


@pytest.mark.parametrize('kind', ['missing', 'empty', 'text', 'truncated', 'folder'])
def test_bad_image_raises_image_error_naming_the_file(tmp_path, kind):
    path = bad_image(kind, tmp_path)
    with pytest.raises(utils.ImageError) as err:
        utils.load_image(str(path))
    message = str(err.value)
    assert str(path) in message and '\n' not in message


def load_array(path) -> tuple:
    rgb, alpha = utils.load_image(str(path))
    return rgb.permute(1, 2, 0).numpy(), None if alpha is None else alpha[0].numpy()


def test_load_rgb_png_exact(tmp_path):
    path = noise_png(tmp_path / 'rgb.png', 16)
    rgb, alpha = load_array(path)
    assert alpha is None and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb, np.asarray(Image.open(path)) / 255.0, atol=1e-7)


def test_load_grayscale_gives_three_equal_channels(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(arr).save(tmp_path / 'g.png')
    rgb, alpha = load_array(tmp_path / 'g.png')
    assert rgb.shape == (12, 10, 3) and alpha is None
    for c in range(3):
        np.testing.assert_allclose(rgb[..., c], arr / 255.0, atol=1e-7)


def test_load_palette(tmp_path):
    img = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode='P')
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    img.save(tmp_path / 'p.png')
    rgb, alpha = load_array(tmp_path / 'p.png')
    assert alpha is None
    np.testing.assert_array_equal(rgb, [[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 1, 0]]])
    img.save(tmp_path / 'pt.png', transparency=1)  # palette entry 1 transparent
    rgb, alpha = load_array(tmp_path / 'pt.png')
    np.testing.assert_array_equal(alpha, [[1, 0], [1, 0]])


def test_load_rgba_and_la_return_alpha(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / 'rgba.png')
    rgb, alpha = load_array(tmp_path / 'rgba.png')
    np.testing.assert_allclose(rgb, rgba[..., :3] / 255.0, atol=1e-7)
    np.testing.assert_allclose(alpha, rgba[..., 3] / 255.0, atol=1e-7)

    la = rng.integers(0, 256, (8, 6, 2), dtype=np.uint8)
    Image.fromarray(la).save(tmp_path / 'la.png')
    rgb, alpha = load_array(tmp_path / 'la.png')
    np.testing.assert_allclose(rgb, np.repeat(la[..., :1], 3, axis=2) / 255.0, atol=1e-7)
    np.testing.assert_allclose(alpha, la[..., 1] / 255.0, atol=1e-7)


def test_load_16bit_grayscale(tmp_path):
    arr = (np.arange(12 * 10).reshape(12, 10) * 547).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == 'I;16'
    img.save(tmp_path / 'g16.png')
    rgb, _ = load_array(tmp_path / 'g16.png')
    for c in range(3):
        np.testing.assert_allclose(rgb[..., c], arr / 65535.0, atol=1e-6)
    assert rgb.max() > 0.99  # not squeezed into 8 bits


def test_load_cmyk_jpeg(tmp_path):
    Image.new('CMYK', (16, 16), (0, 255, 255, 0)).save(tmp_path / 'c.jpg', quality=95)
    rgb, alpha = load_array(tmp_path / 'c.jpg')
    assert rgb.shape == (16, 16, 3) and alpha is None
    np.testing.assert_allclose(rgb, np.broadcast_to([1.0, 0.0, 0.0], rgb.shape), atol=0.03)


@pytest.mark.parametrize('orientation, corner', [(6, 'top-right'), (8, 'bottom-left')])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = np.zeros((24, 40, 3), dtype=np.uint8)  # 40 wide, 24 high as stored
    stored[:8, :8] = 255                             # white top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotate 90 degrees clockwise to display; 8: anticlockwise
    Image.fromarray(stored).save(tmp_path / 'o.jpg', exif=exif, quality=95)
    rgb, _ = load_array(tmp_path / 'o.jpg')
    assert rgb.shape == (40, 24, 3)
    corners = {'top-left': rgb[:8, :8], 'top-right': rgb[:8, -8:],
               'bottom-left': rgb[-8:, :8], 'bottom-right': rgb[-8:, -8:]}
    for name, patch in corners.items():
        assert (patch.mean() > 0.8) == (name == corner), name


# ---------------------------------------------------------------------------------------------
# The published Set5 bicubic numbers, through evaluate.py's pipeline
# ---------------------------------------------------------------------------------------------

def test_set5_bicubic_x4():
    # Set5 from $SRGAN_BENCHMARKS (missing there: fails) or data/ (missing: skipped)
    folder = benchmark_set('Set5', 'baby.png', 'bird.png', 'butterfly.png', 'head.png',
                           'woman.png')
    # evaluate.py's per-image pipeline, scoring only Y: evaluate_folder would also compute the
    # three-channel SSIM, which triples the cost of this test and is checked elsewhere.
    bicubic = utils.bicubic_method(4)
    psnrs, ssims = [], []
    for path in evaluate.find_images(str(folder)):
        hr, lr = utils.load_hr_lr(path, 4)
        sr = bicubic(lr[None])[0]
        psnrs.append(utils.psnr(sr, hr, 4, y_channel=True))
        ssims.append(utils.ssim(sr, hr, 4, y_channel=True))
    assert len(psnrs) == 5
    assert np.mean(psnrs) == pytest.approx(28.43, abs=0.005)
    assert np.mean(ssims) == pytest.approx(0.8113, abs=0.0001)


def test_imresize_sparse_path_matches_dense(monkeypatch):
    # Large axes use a sparse matrix (memory out x taps, not out x in); same numbers.
    x = torch.rand(2, 3, 29, 41, dtype=torch.float64)
    dense = {s: utils.imresize(x, s) for s in (0.25, 1 / 3, 2, 4)}
    monkeypatch.setattr(utils, '_DENSE_LIMIT', 0)
    utils._resize_matrix.cache_clear()
    try:
        assert utils._resize_matrix(29, 116, 4.0, True).is_sparse
        for s, ref in dense.items():
            assert torch.allclose(utils.imresize(x, s), ref, atol=1e-12)
    finally:
        utils._resize_matrix.cache_clear()


def test_saved_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        utils.save_image(torch.rand(3, 8, 8), str(tmp_path / 'a.png'))
        utils.save_checkpoint({'x': torch.zeros(1)}, str(tmp_path / 'c.pth'))
    finally:
        os.umask(old)
    for name in ('a.png', 'c.pth'):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == 0o644
