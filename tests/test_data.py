"""Data pipeline: sub-image preparation CLI, TrainSet / ValidSet, make_loader, the decoder."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import utils
from utils import ImageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 image of smooth random colour: every window of it is different."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def save(arr: np.ndarray, path, **kwargs) -> str:
    Image.fromarray(arr).save(path, **kwargs)
    return str(path)


def image_folder(root, sizes, seed: int = 0) -> str:
    """A folder of smooth PNGs of the given (h, w) sizes."""
    os.makedirs(root, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        save(smooth(h, w, seed + i), os.path.join(root, f'img{i:02d}.png'))
    return str(root)


def dihedral(x: torch.Tensor) -> list:
    """The 8 orientations of a (C, H, W) tensor: 4 rotations, with and without a flip."""
    return [torch.rot90(y, k, (-2, -1)) for y in (x, x.flip(-1)) for k in range(4)]


# ---------------------------------------------------------------------------------------------
# Sub-image preparation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('length, thresh, expected', [
    (1000, 0, [0, 240, 480, 520]),   # leftover 40 > 0: one window flush with the edge
    (700, 0, [0, 220]),
    (1000, 39, [0, 240, 480, 520]),
    (1000, 40, [0, 240, 480]),       # leftover 40 is not > 40: dropped
    (720, 0, [0, 240]),              # fits exactly: no extra window
    (480, 0, [0]),
])
def test_window_starts(length, thresh, expected):
    assert utils.window_starts(length, 480, 240, thresh) == expected


def test_prepare_1000x700_gives_8_exact_windows(tmp_path, capsys):
    src = smooth(700, 1000)
    save(src, tmp_path / 'photo.png')
    out = tmp_path / 'sub'
    rc = utils.main(['--input', str(tmp_path), '--output', str(out), '--crop_size', '480',
                     '--step', '240', '--workers', '1'])
    assert rc == 0
    names = sorted(os.listdir(out))
    assert names == [f'photo_s{i:03d}.png' for i in range(1, 9)]
    boxes = [(top, left) for top in (0, 220) for left in (0, 240, 480, 520)]  # row by row
    for name, (top, left) in zip(names, boxes):
        sub = np.asarray(Image.open(out / name))
        assert sub.shape == (480, 480, 3)
        assert np.array_equal(sub, src[top:top + 480, left:left + 480]), name
    assert '1 images read, 8 sub-images written, 0 skipped' in capsys.readouterr().out


# A small geometry for the other CLI tests: 250 wide -> lefts 0, 60, 120 and (leftover 10)
# 130; 175 high -> top 0 and (leftover 55) 55.
SMALL = ['--crop_size', '120', '--step', '60', '--workers', '1']


@pytest.mark.parametrize('thresh, count', [(0, 8), (9, 8), (10, 6), (54, 6), (55, 3)])
def test_thresh_size_drops_narrow_strips(tmp_path, thresh, count):
    save(smooth(175, 250), tmp_path / 'a.png')
    out = tmp_path / 'sub'
    assert utils.main(['--input', str(tmp_path), '--output', str(out), *SMALL,
                       '--thresh_size', str(thresh)]) == 0
    assert len(os.listdir(out)) == count


def test_rerun_skips_identical_outputs_and_repairs_broken_ones(tmp_path, capsys):
    src_dir, out = tmp_path / 'hr', tmp_path / 'sub'
    src_dir.mkdir()
    save(smooth(175, 250), src_dir / 'a.png')
    args = ['--input', str(src_dir), '--output', str(out), *SMALL]
    assert utils.main(args) == 0
    capsys.readouterr()
    stamps = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    assert utils.main(args) == 0
    assert '0 sub-images written, 8 skipped' in capsys.readouterr().out
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == stamps
    # a half-written file (as from a tool that does not write atomically) is redone
    good = np.asarray(Image.open(out / 'a_s003.png'))
    with open(out / 'a_s003.png', 'r+b') as f:
        f.truncate(200)
    assert utils.main(args) == 0
    assert '1 sub-images written, 7 skipped' in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(out / 'a_s003.png')), good)
    assert sorted(os.listdir(out)) == sorted(stamps)  # no temporary files left behind


def test_small_image_copied_whole_with_a_warning(tmp_path, capsys):
    src = smooth(80, 100)
    save(src, tmp_path / 'tiny.png')
    out = tmp_path / 'sub'
    assert utils.main(['--input', str(tmp_path), '--output', str(out), *SMALL]) == 0
    assert os.listdir(out) == ['tiny_s001.png']
    assert np.array_equal(np.asarray(Image.open(out / 'tiny_s001.png')), src)
    err = capsys.readouterr().err
    assert 'warning' in err and 'tiny.png' in err and '100x80' in err


def test_cli_reports_unreadable_files_by_name_and_does_the_rest(tmp_path):
    src_dir, out = tmp_path / 'hr', tmp_path / 'sub'
    src_dir.mkdir()
    save(smooth(175, 250), src_dir / 'a.png')
    save(smooth(130, 130, 1), src_dir / 'b.jpg', quality=90)
    (src_dir / 'garbage.png').write_bytes(b'not a png at all')
    whole = (src_dir / 'a.png').read_bytes()
    (src_dir / 'cut.png').write_bytes(whole[:len(whole) // 2])
    proc = subprocess.run([sys.executable, 'utils.py', '--input', str(src_dir), '--output',
                           str(out), '--crop_size', '120', '--step', '60', '--workers', '2'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if 'error' in line]
    assert len(error_lines) == 2
    assert any('garbage.png' in line for line in error_lines)
    assert any('cut.png' in line for line in error_lines)
    assert len([n for n in os.listdir(out) if n.startswith('a_')]) == 8
    assert len([n for n in os.listdir(out) if n.startswith('b_')]) == 4
    assert '2 images read, 12 sub-images written, 0 skipped (already there), 2 failed' \
        in proc.stdout


def test_cli_rejects_bad_folders(tmp_path, capsys):
    rc = utils.run_main(utils.main, ['--input', str(tmp_path / 'missing'),
                                     '--output', str(tmp_path / 'o')])
    assert rc == 2 and 'missing: input folder not found' in capsys.readouterr().err
    assert utils.run_main(utils.main, ['--input', str(tmp_path), '--output', str(tmp_path)]) == 2
    assert 'must differ' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# TrainSet, ValidSet, make_loader
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [2, 4])
def test_trainset_shapes_range_and_degradation(tmp_path, scale):
    ds = utils.TrainSet(image_folder(tmp_path, [(40, 50), (60, 33)]), scale, crop_size=24)
    torch.manual_seed(0)
    for i in range(len(ds)):
        lr, hr = ds[i]
        assert hr.shape == (3, 24, 24) and lr.shape == (3, 24 // scale, 24 // scale)
        assert hr.dtype == lr.dtype == torch.float32
        assert 0 <= hr.min() and hr.max() <= 1 and 0 <= lr.min() and lr.max() <= 1
        assert torch.equal(lr, utils.downscale(hr, scale))


def test_trainset_crop_is_a_window_of_the_image(tmp_path):
    src = smooth(40, 37)
    save(src, tmp_path / 'a.png')
    ds = utils.TrainSet(str(tmp_path), 4, crop_size=24, augment=False)
    full = torch.from_numpy(src).permute(2, 0, 1).float() / 255
    torch.manual_seed(0)
    for _ in range(10):
        hr = ds[0][1]
        assert any(torch.equal(hr, full[:, t:t + 24, l:l + 24])
                   for t in range(40 - 23) for l in range(37 - 23))


def test_augmentation_is_the_same_for_lr_and_hr_and_covers_8_orientations(tmp_path):
    # crop = whole image, so every sample is an orientation of it
    src = smooth(24, 24)
    save(src, tmp_path / 'a.png')
    ds = utils.TrainSet(str(tmp_path), 4, crop_size=24)
    orientations = dihedral(torch.from_numpy(src).permute(2, 0, 1).float() / 255)
    seen = set()
    torch.manual_seed(0)
    for _ in range(80):
        lr, hr = ds[0]
        matches = [k for k, o in enumerate(orientations) if torch.equal(hr, o)]
        assert len(matches) == 1
        seen.add(matches[0])
        assert torch.equal(lr, utils.downscale(hr, 4))
    assert seen == set(range(8))


def test_trainset_is_deterministic_under_a_seed(tmp_path):
    ds = utils.TrainSet(image_folder(tmp_path, [(40, 50), (45, 45)]), 4, crop_size=24)

    def draw(seed):
        torch.manual_seed(seed)
        return [ds[i % 2] for i in range(6)]

    a, b, c = draw(3), draw(3), draw(4)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c))


def test_cache_gives_the_same_samples(tmp_path):
    root = image_folder(tmp_path, [(40, 50), (45, 45)])
    plain, cached = utils.TrainSet(root, 4, 24), utils.TrainSet(root, 4, 24, cache=True)
    for i in range(2):
        torch.manual_seed(i)
        x = plain[i]
        torch.manual_seed(i)
        y = cached[i]
        assert torch.equal(x[1], y[1]) and torch.equal(x[0], y[0])


def test_loader_with_two_workers_is_reproducible(tmp_path):
    ds = utils.TrainSet(image_folder(tmp_path, [(40, 40)] * 8), 4, crop_size=24)

    def epoch(seed):
        loader = utils.make_loader(ds, batch_size=2, workers=2, seed=seed)
        return [hr for _, hr in loader]

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert len(a) == 4
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_loader_without_seed_follows_torch_manual_seed(tmp_path):
    ds = utils.TrainSet(image_folder(tmp_path, [(40, 40)] * 4), 4, crop_size=24)

    def epoch():
        torch.manual_seed(5)
        return [hr for _, hr in utils.make_loader(ds, batch_size=2, workers=0)]

    assert all(torch.equal(x, y) for x, y in zip(epoch(), epoch()))


def test_loader_settings(tmp_path):
    ds = utils.TrainSet(image_folder(tmp_path, [(40, 40)] * 4), 4, crop_size=24)
    gpu = utils.make_loader(ds, batch_size=2, workers=2, device_type='cuda')
    assert gpu.pin_memory and gpu.persistent_workers and gpu.prefetch_factor == 4
    assert gpu.drop_last and gpu.worker_init_fn is utils.seed_worker
    cpu = utils.make_loader(ds, batch_size=2, workers=0)
    assert not cpu.pin_memory and not cpu.persistent_workers and cpu.prefetch_factor is None
    sampler = torch.utils.data.SequentialSampler(ds)
    assert utils.make_loader(ds, 2, 0, sampler=sampler).sampler is sampler
    with pytest.raises(ValueError, match='one batch'):
        utils.make_loader(ds, batch_size=8, workers=0)


def test_small_images_left_out_with_one_warning_counting_them(tmp_path):
    root = image_folder(tmp_path, [(40, 40), (20, 60), (40, 40), (60, 23), (30, 30)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ds = utils.TrainSet(root, 4, crop_size=24)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and '2 image(s) smaller than the 24px crop' in messages[0]
    assert len(ds) == 3


def test_missing_empty_and_all_small_folders_are_clear_errors(tmp_path):
    # a folder missing or empty is a command-line problem (exit status 2 in train.py)
    with pytest.raises(utils.UsageError, match='missing: training folder not found'):
        utils.TrainSet(str(tmp_path / 'missing'))
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
    with pytest.raises(utils.UsageError, match='no images'):
        utils.TrainSet(str(tmp_path / 'empty'))
    with pytest.raises(ImageError, match='no usable image'), pytest.warns(UserWarning):
        utils.TrainSet(image_folder(tmp_path / 'small', [(10, 10)]), 4, crop_size=24)


def test_broken_files_in_the_folder(tmp_path, capsys):
    root = image_folder(tmp_path, [(40, 40), (40, 40)])
    (tmp_path / 'broken.png').write_bytes(b'garbage')
    with pytest.warns(UserWarning, match=r'1 image\(s\) not readable.*broken\.png'):
        ds = utils.TrainSet(root, 4, crop_size=24)
    assert len(ds) == 2
    # a readable header over cut-off data shows up only when read: a warning naming the file,
    # and the next readable image in its place (tests/test_faults.py tests the policy)
    whole = open(ds.paths[1], 'rb').read()
    with open(ds.paths[1], 'wb') as f:
        f.write(whole[:len(whole) // 2])
    torch.manual_seed(0)
    hr = ds[1][1]
    assert 'img01.png' in capsys.readouterr().err
    torch.manual_seed(0)
    assert torch.equal(ds[0][1], hr)


def test_validset_modcrops_and_is_deterministic(tmp_path):
    ds = utils.ValidSet(image_folder(tmp_path, [(37, 50)]), upscale_factor=4)
    lr, hr, name = ds[0]
    assert hr.shape == (3, 36, 48) and lr.shape == (3, 9, 12) and name == 'img00.png'
    assert torch.equal(lr, utils.downscale(hr, 4))
    lr2, hr2, _ = ds[0]
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)


# ---------------------------------------------------------------------------------------------
# Decoder: torchvision must give PIL's pixels
# ---------------------------------------------------------------------------------------------

def _orientation_exif(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


DECODER_CASES = {
    'png_rgb': lambda a: (Image.fromarray(a), 'png', {}),
    'png_gray': lambda a: (Image.fromarray(a).convert('L'), 'png', {}),
    'png_palette': lambda a: (Image.fromarray(a).convert('P'), 'png', {}),
    'png_rgba': lambda a: (Image.fromarray(np.dstack([a, a[..., :1]])), 'png', {}),
    'jpeg_420': lambda a: (Image.fromarray(a), 'jpg', {'quality': 90}),
    'jpeg_444': lambda a: (Image.fromarray(a), 'jpg', {'quality': 95, 'subsampling': 0}),
    'jpeg_gray': lambda a: (Image.fromarray(a).convert('L'), 'jpg', {'quality': 90}),
    'jpeg_exif_rotated': lambda a: (Image.fromarray(a), 'jpg',
                                    {'quality': 90, 'exif': _orientation_exif(6)}),
}


@pytest.mark.parametrize('case', sorted(DECODER_CASES))
def test_torchvision_decoder_gives_pil_pixels(tmp_path, case):
    arr = data.astronaut()[100:260, 150:330]  # 160x180 crop of a photo
    img, ext, kwargs = DECODER_CASES[case](arr)
    path = str(tmp_path / f'{case}.{ext}')
    img.save(path, **kwargs)
    reference = utils.image_to_uint8(utils.open_image(path))  # PIL, EXIF applied
    tio = utils._torchvision_io()
    fast = tio.decode_image(tio.read_file(path), mode=tio.ImageReadMode.RGB,
                            apply_exif_orientation=True)
    assert fast.dtype == torch.uint8
    assert np.array_equal(fast.permute(1, 2, 0).numpy(), reference)
    assert np.array_equal(utils.read_uint8(path).permute(1, 2, 0).numpy(), reference)


@pytest.mark.parametrize('ext', ['png', 'jpg'])
def test_read_uint8_names_a_truncated_file(tmp_path, ext):
    path = save(data.astronaut()[:128, :128], tmp_path / f'cut.{ext}')
    whole = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(whole[:len(whole) // 2])
    with pytest.raises(ImageError, match=f'cut.{ext}: truncated'):
        utils.read_uint8(path)


def test_read_uint8_falls_back_to_pil_for_16_bit_png(tmp_path):
    a = (np.arange(32 * 40).reshape(32, 40) * 50).astype(np.uint16)
    path = save(a, tmp_path / 'deep.png')
    out = utils.read_uint8(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 40)
    assert np.array_equal(out[1].numpy(), np.rint(a / 65535 * 255).astype(np.uint8))
