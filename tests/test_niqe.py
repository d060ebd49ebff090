"""utils.niqe: MATLAB's value on Set14's baboon, input conventions, behaviour on natural vs
degraded images, and agreement with the one-block-at-a-time reference in bench_niqe.py."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import utils
from conftest import benchmark_set

ROOT = Path(__file__).resolve().parents[1]
MATLAB_BABOON = 5.72957338  # MATLAB R2021a niqe, the full 500x480 Set14 baboon.png


def load_reference():
    path = ROOT / 'benchmarks' / 'bench_niqe.py'
    spec = importlib.util.spec_from_file_location('bench_niqe', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.niqe_per_block


niqe_per_block = load_reference()


@pytest.fixture(scope='module')
def camera():
    """skimage's cameraman cut to 288x384: 3x4 blocks, with flat sky and textured grass."""
    from skimage import data
    return data.camera()[:288, 64:448].copy()


@pytest.fixture(scope='module')
def coffee():
    from skimage import data
    return data.coffee()[:300, :400].copy()


def test_baboon_matches_matlab():
    # Set14 from $SRGAN_BENCHMARKS (missing there: fails) or data/ (missing: skipped)
    rgb = np.asarray(Image.open(benchmark_set('Set14', 'baboon.png') / 'baboon.png')
                     .convert('RGB'))
    assert rgb.shape == (480, 500, 3)
    assert utils.niqe(rgb) == pytest.approx(MATLAB_BABOON, abs=1e-3)


@pytest.mark.parametrize('name', ['camera', 'coffee'])
def test_agrees_with_the_per_block_reference(name, request):
    img = request.getfixturevalue(name)
    expected = niqe_per_block(utils.niqe_luma(img).numpy())
    assert utils.niqe(img) == pytest.approx(expected, abs=1e-9)


def test_blocks_without_texture_are_left_out_as_matlab_does(camera):
    """A flat block has no fit (NaN features): it is left out of the covariance and of the
    means of the features it lacks, in both implementations."""
    img = camera.copy()
    img[:96, :96] = 128
    value = utils.niqe(img)
    assert np.isfinite(value) and value != pytest.approx(utils.niqe(camera), abs=1e-3)
    assert value == pytest.approx(niqe_per_block(utils.niqe_luma(img).numpy()), abs=1e-9)


def test_flat_image_gives_nan():
    assert np.isnan(utils.niqe(np.full((192, 192, 3), 77, np.uint8)))


def test_tensor_and_uint8_give_the_same_value(coffee):
    tensor = torch.from_numpy(coffee).permute(2, 0, 1).float() / 255
    assert utils.niqe(tensor) == utils.niqe(coffee)


def test_crop_border_crops(coffee):
    assert utils.niqe(coffee, crop_border=4) == utils.niqe(coffee[4:-4, 4:-4])
    assert utils.niqe(coffee, crop_border=4) != utils.niqe(coffee)


def test_grey_is_scored_as_r_equals_g_equals_b(camera):
    value = utils.niqe(camera)
    assert utils.niqe(np.stack([camera] * 3, axis=-1)) == value
    assert utils.niqe(torch.from_numpy(camera)[None].float() / 255) == value
    # the Y channel, not the first channel: a colour image differs from its red plane
    from skimage import data
    rgb = data.astronaut()[:192, :288]
    assert utils.niqe(rgb) != utils.niqe(rgb[..., 0])


def test_y_channel_is_rounded_as_matlab():
    rgb = np.array([[[10, 200, 30], [255, 0, 128], [0, 204, 68], [255, 255, 255]]], np.uint8)
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255: 122.33.., 94.01.., exactly 125.5
    # (rounded up, half away from zero, as MATLAB's uint8 rgb2ycbcr), 235
    assert utils.niqe_luma(rgb).tolist() == [[122, 94, 126, 235]]


def test_noise_and_blur_score_worse_than_the_photo(coffee):
    rng = np.random.default_rng(0)
    noisy = np.clip(coffee + rng.normal(0, 25, coffee.shape), 0, 255).astype(np.uint8)
    blurred = utils.to_uint8(utils.imresize(utils.imresize(
        torch.from_numpy(coffee).permute(2, 0, 1).float() / 255, 0.25), size=coffee.shape[:2]))
    clean = utils.niqe(coffee)
    assert 2 < clean < 6  # the range natural photos score in
    assert utils.niqe(noisy) > clean + 3
    assert utils.niqe(blurred) > clean + 1


@pytest.mark.parametrize('shape, crop, message', [
    ((96, 96), 0, 'got a 96x96 image'),
    ((95, 400), 0, 'got a 400x95 image'),
    ((104, 200), 5, 'got a 190x94 image after cropping 5 border pixels'),
])
def test_too_small_images_are_refused(shape, crop, message):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match='NIQE needs at least two 96x96 blocks') as err:
        utils.niqe(img, crop_border=crop)
    assert str(err.value).endswith(message) and '\n' not in str(err.value)


def test_two_blocks_are_enough():
    img = np.random.default_rng(0).integers(0, 256, (96, 192, 3), dtype=np.uint8)
    assert np.isfinite(utils.niqe(img))


def test_parameter_file_holds_plain_arrays():
    with np.load(utils.NIQE_PARAMS, allow_pickle=False) as f:
        assert f['mu_pris_param'].shape == (1, 36) and f['cov_pris_param'].shape == (36, 36)
        window = f['gaussian_window']
    # the separable filtering in utils._mscn relies on the window being an outer product
    np.testing.assert_allclose(np.outer(window.sum(1), window.sum(1)), window, atol=1e-15)
