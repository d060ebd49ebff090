"""evaluate.py: the table, JSON and CSV outputs, and bad input, on tiny generated data."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import utils
from model import Generator

ROOT = Path(__file__).resolve().parents[1]
HEADER = '| dataset | method | images | PSNR-Y | SSIM-Y | PSNR-YCbCr | SSIM-YCbCr |'
NAMES = ['a.png', 'b.png', 'c.png']


@pytest.fixture
def folder(tmp_path):
    """Three 48x48 crops of natural images."""
    from skimage import data
    root = tmp_path / 'Tiny'
    root.mkdir()
    for name, img in zip(NAMES, [data.astronaut()[100:148, 180:228],
                                 data.coffee()[150:198, 200:248],
                                 data.chelsea()[100:148, 150:198]]):
        Image.fromarray(img).save(root / name)
    return root


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'tiny_x4.pth'
    utils.save_weights(Generator(4, num_blocks=1), str(path))
    return path


def table_rows(out: str) -> list:
    """The data rows of the Markdown table in `out`, as lists of cells."""
    lines = out.strip().splitlines()
    start = lines.index(HEADER)
    assert re.fullmatch(r'\|---\|---\|(---:\|){5}', lines[start + 1])
    return [[c.strip() for c in line.strip('|').split('|')] for line in lines[start + 2:]]


def direct_metrics(path: Path, method) -> dict:
    """The metrics of one image, computed here from the utils functions step by step."""
    hr, _ = utils.load_image(str(path))
    hr = utils.modcrop(hr, 4)
    lr = utils.downscale(hr, 4)
    with torch.no_grad():
        return utils.image_metrics(method(lr), hr, 4)


def test_table_json_and_csv(folder, weights, tmp_path, capsys):
    json_path, csv_path = tmp_path / 'out' / 'r.json', tmp_path / 'r.csv'
    code = evaluate.main(['--data', str(folder), '--upscale_factor', '4',
                          '--weight', f'Tiny={weights}', '--json', str(json_path),
                          '--csv', str(csv_path)])
    assert code == 0
    rows = table_rows(capsys.readouterr().out)
    assert [r[:3] for r in rows] == [['Tiny', 'Bicubic', '3'], ['Tiny', 'Tiny', '3']]
    for r in rows:
        assert all(re.fullmatch(r'\d+\.\d\d', r[i]) for i in (3, 5)), r
        assert all(re.fullmatch(r'[01]\.\d{4}', r[i]) for i in (4, 6)), r

    summary = json.loads(json_path.read_text())
    assert [(s['dataset'], s['method'], s['images']) for s in summary] == \
        [('Tiny', 'Bicubic', 3), ('Tiny', 'Tiny', 3)]
    assert set(summary[0]) == {'dataset', 'method', 'images', 'psnr_y', 'ssim_y',
                               'psnr_ycbcr', 'ssim_ycbcr'}

    with open(csv_path, newline='') as f:
        per_image = list(csv.DictReader(f))
    assert list(per_image[0]) == ['dataset', 'method', 'image', 'psnr_y', 'ssim_y',
                                  'psnr_ycbcr', 'ssim_ycbcr']
    assert sorted((r['method'], r['image']) for r in per_image) == \
        sorted((m, n) for m in ('Bicubic', 'Tiny') for n in NAMES)

    generator = utils.load_generator(str(weights), 4)
    methods = {'Bicubic': lambda lr: utils.imresize(lr, 4), 'Tiny': lambda lr: generator(lr[None])[0]}
    for s, row in zip(summary, rows):
        mine = [r for r in per_image if r['method'] == s['method']]
        for key in ('psnr_y', 'ssim_y', 'psnr_ycbcr', 'ssim_ycbcr'):
            # the JSON and the table are the means of the CSV rows
            assert s[key] == pytest.approx(np.mean([float(r[key]) for r in mine]), abs=1e-9)
        assert row[3] == f"{s['psnr_y']:.2f}" and row[4] == f"{s['ssim_y']:.4f}"
        for r in mine:
            # and each CSV row is what the pipeline gives when done by hand (the generator
            # unfused, so only rounding of a few pixels may differ)
            expected = direct_metrics(folder / r['image'], methods[s['method']])
            assert float(r['psnr_y']) == pytest.approx(expected['psnr_y'], abs=0.01)
            assert float(r['ssim_ycbcr']) == pytest.approx(expected['ssim_ycbcr'], abs=1e-3)


def test_bare_weight_path_is_labelled_by_its_stem(folder, weights, capsys):
    assert evaluate.main(['--data', str(folder), '--weight', str(weights)]) == 0
    assert [r[1] for r in table_rows(capsys.readouterr().out)] == ['Bicubic', 'tiny_x4']


def test_parse_weight():
    assert evaluate.parse_weight('SRGAN=w/g.pth') == ('SRGAN', 'w/g.pth')
    assert evaluate.parse_weight('w/srgan_x4.pth') == ('srgan_x4', 'w/srgan_x4.pth')
    assert evaluate.parse_weight('runs/lr=1e-4/g.pth') == ('g', 'runs/lr=1e-4/g.pth')


def test_duplicate_labels_are_refused(folder, weights):
    with pytest.raises(SystemExit) as err:
        evaluate.main(['--data', str(folder), '--weight', f'Bicubic={weights}'])
    assert err.value.code == 2


def test_bf16_stays_close_to_float32(folder, weights):
    generator = utils.load_generator(str(weights), 4)
    _, lr = evaluate.load_hr_lr(str(folder / 'a.png'), 4)
    cpu = torch.device('cpu')
    exact = evaluate.generator_method(generator, 4, cpu)(lr)
    bf16 = evaluate.generator_method(generator, 4, cpu, torch.bfloat16)(lr)
    assert bf16.dtype == torch.float32 and bf16.shape == exact.shape == (3, 48, 48)
    assert 0 < (bf16 - exact).abs().max() < 0.05


def test_tiles_give_the_whole_image_result():
    generator = Generator(4, num_blocks=1, channels=8).eval()
    lr = torch.rand(3, 60, 57)  # tiles of 52 starting at 0 and 8 (rows), 0 and 5 (columns)
    cpu = torch.device('cpu')
    whole = evaluate.generator_method(generator, 4, cpu)(lr)
    tiled = evaluate.generator_method(generator, 4, cpu, tile=52)(lr)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_tile_too_small_for_the_overlap_is_refused(folder):
    with pytest.raises(SystemExit) as err:
        evaluate.main(['--data', str(folder), '--tile', '32'])
    assert err.value.code == 2


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'evaluate.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bad_weights_file_is_one_line_error(folder, tmp_path):
    bad = tmp_path / 'broken.pth'
    bad.write_bytes(b'not a torch file')
    result = run_cli('--data', str(folder), '--weight', f'SRGAN={bad}')
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f'error: {bad}: ')
    assert result.stdout == ''  # nothing evaluated


@pytest.mark.parametrize('kind', ['missing', 'empty'])
def test_bad_folder_is_one_line_error(tmp_path, capsys, kind):
    target = tmp_path / 'Set5'
    if kind == 'empty':
        target.mkdir()
        (target / 'notes.txt').write_text('no images here')
    assert evaluate.main(['--data', str(target)]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f'error: {target}: ') and err.count('\n') == 1


def test_broken_image_is_skipped_and_reported(folder, tmp_path, capsys):
    (folder / 'broken.png').write_text('not an image')
    json_path = tmp_path / 'r.json'
    assert evaluate.main(['--data', str(folder), '--json', str(json_path)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder / 'broken.png'}: ")
    assert 'Traceback' not in err
    (summary,) = json.loads(json_path.read_text())
    assert summary['images'] == 3


def test_too_small_image_is_skipped(folder, capsys):
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / 'small.png')
    rows, errors = evaluate.evaluate_folder(str(folder), {'Bicubic': evaluate.bicubic_method(4)},
                                            4, progress=False)
    assert len(rows) == 3 and len(errors) == 1 and 'small.png' in errors[0]
    assert 'too small' in capsys.readouterr().err


def test_fp16_on_cpu_is_one_line_error(folder, capsys):
    assert evaluate.main(['--data', str(folder), '--amp', 'fp16']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --amp fp16 needs --cuda') and err.count('\n') == 1
