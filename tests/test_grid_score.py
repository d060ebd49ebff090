"""utils.grid_score, the lattice-artifact check: its unit (full-range grey levels), its
phases (counted from the top-left pixel), a generator with a drifted sub-pixel phase against
bicubic, and the issue's Set14 figures for HR and bicubic."""
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import utils
from conftest import ROOT, sane_generator

SET14 = Path(os.environ.get('SRGAN_BENCHMARKS') or ROOT / 'data') / 'Set14'


def test_a_flat_image_scores_zero():
    assert utils.grid_score(np.full((40, 48, 3), 117, np.uint8), 4) == 0.0
    assert utils.grid_score(torch.full((3, 40, 48), 0.25), 2) == 0.0


@pytest.mark.parametrize('scale', [2, 4, 8])
def test_one_brighter_phase_scores_its_excess_in_grey_levels(scale):
    """A grey image whose phase (1, scale-1) is 10 levels brighter: 10 grey levels, on every
    input form (uint8 RGB, [0, 1] tensor, the luma itself); a full-range unit, so the studio
    range of the PSNR's Y (which would give 10 * 219 / 255) is not what it measures."""
    rgb = np.full((8 * scale, 6 * scale, 3), 100, np.uint8)
    rgb[1::scale, scale - 1::scale] = 110
    assert utils.grid_score(rgb, scale) == pytest.approx(10, abs=1e-9)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    assert utils.grid_score(tensor, scale) == pytest.approx(10, abs=1e-9)
    assert utils.grid_score(rgb[..., 0].astype(np.float64), scale) == pytest.approx(10)
    # weighted as luma: the same excess in blue alone counts 0.114 of it
    blue = np.full_like(rgb, 100)
    blue[1::scale, scale - 1::scale, 2] = 110
    assert utils.grid_score(blue, scale) == pytest.approx(1.14, abs=1e-9)


def test_phases_count_from_the_top_left_and_partial_cells_are_left_out():
    """The pattern on rows/columns 0, 4, 8 ... scores; the same image with one partial cell row
    and column added (a size not a multiple of the scale) scores the same."""
    y = np.full((32, 32), 50.0)
    y[0::4, 0::4] = 60
    assert utils.grid_score(y, 4) == pytest.approx(10)
    grown = np.full((35, 34), 50.0)
    grown[:32, :32] = y
    grown[32:, :] = 255  # the partial cells: left out, or they would move the phase means
    grown[:, 32:] = 255
    assert utils.grid_score(grown, 4) == pytest.approx(10)
    # and a pattern on every 2nd pixel is on the x4 lattice too, but not on an x3 one
    y2 = np.full((36, 36), 50.0)
    y2[::2, ::2] = 58
    assert utils.grid_score(y2, 4) == pytest.approx(8)
    assert utils.grid_score(y2, 3) < 8 / 2


def test_a_drifted_subpixel_phase_scores_above_the_limit_where_bicubic_does_not():
    """A generator whose first pixel shuffle makes 4 of the 16 output phases 3 levels darker: above
    GRID_LIMIT on a photo, where bicubic, the HR and the undrifted network stay below."""
    from skimage import data
    hr = torch.from_numpy(data.coffee()).permute(2, 0, 1).float() / 255  # 400 x 600
    lr = utils.downscale(hr, 4)
    g = sane_generator(4)
    clean = g(lr[None]).detach()[0].clamp(0, 1)
    with torch.no_grad():
        # the first upsampler's conv feeds the pixel shuffle: its channel 4c + k is phase k of
        # input channel c at that stage; darken phase 3 of the RGB carriers at the first x2
        for c in range(3):
            g.upsample[0].conv.bias[4 * c + 3] -= 3 / 255
    drifted = g(lr[None]).detach()[0].clamp(0, 1)
    bicubic = utils.imresize(lr, 4).clamp(0, 1)
    for name, img in (('HR', hr), ('bicubic', bicubic), ('network', clean)):
        assert utils.grid_score(img, 4) < utils.GRID_LIMIT, name
    assert utils.grid_score(drifted, 4) > utils.GRID_LIMIT
    assert utils.grid_score(drifted, 4) > 2 * utils.grid_score(clean, 4)


def test_too_small_or_no_lattice_is_a_value_error():
    with pytest.raises(ValueError, match='at least'):
        utils.grid_score(np.zeros((3, 3, 3), np.uint8), 4)
    with pytest.raises(ValueError, match='scale of at least 2'):
        utils.grid_score(np.zeros((8, 8, 3), np.uint8), 1)


@pytest.mark.skipif(not (SET14 / 'baboon.png').is_file(),
                    reason=f'{SET14 / "baboon.png"} not found (python scripts/download_data.py '
                           'benchmarks, or set SRGAN_BENCHMARKS)')
def test_set14_hr_and_bicubic_give_the_issues_figures():
    """Issue 19's table, x4 on Set14 (mean over the images): HR 1.21, bicubic 0.70."""
    hr_scores, bicubic_scores = [], []
    for path in sorted(glob.glob(str(SET14 / '*.png'))):
        hr, lr = utils.load_hr_lr(path, 4)
        hr_scores.append(utils.grid_score(hr, 4))
        bicubic_scores.append(utils.grid_score(utils.imresize(lr, 4).clamp(0, 1), 4))
    assert len(hr_scores) == 14
    assert np.mean(hr_scores) == pytest.approx(1.21, abs=0.006)
    assert np.mean(bicubic_scores) == pytest.approx(0.70, abs=0.006)


# ---------------------------------------------------------------------------------------------
# evaluate.py --metrics grid, and train.py's adversarial validation (history.csv, best.pth)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Two 96x128 crops of natural photos (one folder of HR images)."""
    from skimage import data
    from PIL import Image
    root = tmp_path_factory.mktemp('grid') / 'Tiny'
    root.mkdir()
    Image.fromarray(data.astronaut()[100:196, 180:308]).save(root / 'a.png')
    Image.fromarray(data.coffee()[150:246, 200:328]).save(root / 'b.png')
    return root


def test_evaluate_grid_column_is_the_mean_grid_score_with_an_hr_row(photos, tmp_path, capsys):
    import json
    import evaluate
    json_path, csv_path = tmp_path / 'r.json', tmp_path / 'r.csv'
    assert evaluate.main(['--data', str(photos), '--metrics', 'psnr,grid', '--json',
                          str(json_path), '--csv', str(csv_path)]) == 0
    assert '| dataset | method | images | PSNR-Y | PSNR-YCbCr | Grid |' in capsys.readouterr().out
    summary = {s['method']: s for s in json.loads(json_path.read_text())}
    assert list(summary) == ['Bicubic', 'HR']
    assert summary['HR']['psnr_y'] is None  # the HR row: no-reference columns only
    bicubic, hr = [], []
    for path in sorted(photos.iterdir()):
        h, lr = utils.load_hr_lr(str(path), 4)
        hr.append(utils.grid_score(h, 4))
        bicubic.append(utils.grid_score(utils.imresize(lr, 4), 4))
    assert summary['Bicubic']['grid'] == pytest.approx(np.mean(bicubic), abs=1e-12)
    assert summary['HR']['grid'] == pytest.approx(np.mean(hr), abs=1e-12)
    assert csv_path.read_text().splitlines()[0] == 'dataset,method,image,psnr_y,psnr_ycbcr,grid'


def test_evaluate_help_calls_grid_a_lattice_artifact_check_not_a_quality_measure(capsys):
    import evaluate
    with pytest.raises(SystemExit):
        evaluate.parse_args(['-h'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'grid' in text and 'lattice-artifact check' in text and 'not a quality measure' in text


def grid_rows(*psnr_niqe_grid) -> list:
    return [{'epoch': i + 1, 'psnr_y': p, 'niqe': n, 'grid': g}
            for i, (p, n, g) in enumerate(psnr_niqe_grid)]


def test_best_epoch_never_picks_a_gridded_epoch():
    h = grid_rows((26.0, 6.0, 1.0), (25.9, 4.0, 3.8), (25.8, 5.0, 1.4), (26.5, 5.5, 2.0))
    import train
    assert [train.best_epoch(h[:n], 'niqe', 0.5, 1.5) for n in range(1, 5)] \
        == [1, 1, 3, 3]
    assert train.best_epoch(h, 'psnr', 0.5, 1.5) == 1
    assert train.best_epoch(h, 'psnr', 0.5, 0) == 4   # 0: no limit, as before
    assert train.best_epoch(h[:2], 'niqe', 0.5) == 2  # without a limit the gridded one wins
    assert train.best_epoch(h[1:2], 'niqe', 0.5, 1.5) is None  # every epoch gridded: none
    assert train.get_args([]).grid_limit == utils.GRID_LIMIT == 1.5


@pytest.mark.slow
def test_adversarial_run_logs_grid_and_keeps_no_gridded_best(tmp_path, capsys):
    """A tiny SRGAN-MSE run: history.csv's grid is the validation images' mean grid score of
    the epoch's generator; a --grid_limit below it leaves no best.pth and says why."""
    import csv
    import warnings
    from PIL import Image
    import train
    from conftest import natural
    (tmp_path / 'train').mkdir()
    (tmp_path / 'valid').mkdir()
    for i in range(2):
        Image.fromarray(natural(64, 64, 100 + 40 * i)).save(tmp_path / 'train' / f'{i}.png')
    Image.fromarray(natural(48, 48, 300)).save(tmp_path / 'valid' / 'v.png')
    base = ['--mode', 'adversarial', '--content_weight', '0', '--num_blocks', '1',
            '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '1', '--workers', '0',
            '--amp', 'off', '--epochs', '1', '--trainset_dir', str(tmp_path / 'train'),
            '--validset_dir', str(tmp_path / 'valid')]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert train.main(base + ['--out_dir', str(tmp_path / 'a'), '--grid_limit', '0']) == 0
        with open(tmp_path / 'a' / 'history.csv', newline='') as f:
            row, = csv.DictReader(f)
        g = utils.load_generator(str(tmp_path / 'a' / 'weights' / 'best.pth'))
        hr, _ = utils.load_image(str(tmp_path / 'valid' / 'v.png'))
        with torch.no_grad():
            sr = g(utils.downscale(hr, 4)[None])[0]
        assert float(row['grid']) == pytest.approx(utils.grid_score(sr, 4), abs=1e-6)
        limit = float(row['grid']) / 2
        capsys.readouterr()
        assert train.main(base + ['--out_dir', str(tmp_path / 'b'), '--grid_limit',
                                  str(limit)]) == 0
    assert not (tmp_path / 'b' / 'weights' / 'best.pth').exists()
    assert (tmp_path / 'b' / 'weights' / 'G_epoch_1.pth').exists()
    assert 'draws a dot grid' in capsys.readouterr().out
