"""evaluate.py: the table, JSON and CSV outputs, --metrics (NIQE, LPIPS, the HR row), and bad
input, on small generated data."""
import csv
import json
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import utils
from conftest import run_main
from model import Generator

ROOT = Path(__file__).resolve().parents[1]
HEADER = ('| dataset | method | images | PSNR-Y | SSIM-Y | PSNR-YCbCr | SSIM-YCbCr | NIQE |')
NAMES = ['a.png', 'b.png', 'c.png']
FULL_REFERENCE = ['psnr_y', 'ssim_y', 'psnr_ycbcr', 'ssim_ycbcr']


@pytest.fixture
def folder(tmp_path):
    """Three 104x200 crops of natural images: after the 4-pixel border, two 96x96 NIQE blocks."""
    from skimage import data
    root = tmp_path / 'Tiny'
    root.mkdir()
    for name, img in zip(NAMES, [data.astronaut()[100:204, 180:380],
                                 data.coffee()[150:254, 200:400],
                                 data.chelsea()[100:204, 150:350]]):
        Image.fromarray(img).save(root / name)
    return root


@pytest.fixture
def alexnet_cache(tmp_path, monkeypatch):
    """torch's hub cache holding a stand-in (untrained) AlexNet file where LPIPS looks for
    torchvision's ImageNet one, which cannot be downloaded on the test machine."""
    from torchvision.models import alexnet
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    checkpoints = tmp_path / 'torch' / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(alexnet(weights=None).state_dict(), checkpoints / 'alexnet-owt-7be5be79.pth')
    return checkpoints


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'tiny_x4.pth'
    utils.save_weights(Generator(4, num_blocks=1), str(path))
    return path


def table_rows(out: str, header: str = HEADER) -> list:
    """The data rows of the Markdown table in `out`, as lists of cells."""
    lines = out.strip().splitlines()
    start = lines.index(header)
    columns = header.count('|') - 1
    assert re.fullmatch(r'\|---\|---\|(---:\|){%d}' % (columns - 2), lines[start + 1])
    return [[c.strip() for c in line.strip('|').split('|')] for line in lines[start + 2:]]


def test_table_json_and_csv(folder, weights, tmp_path, capsys):
    json_path, csv_path = tmp_path / 'out' / 'r.json', tmp_path / 'r.csv'
    code = evaluate.main(['--data', str(folder), '--upscale_factor', '4',
                          '--weight', f'Tiny={weights}', '--json', str(json_path),
                          '--csv', str(csv_path)])
    assert code == 0
    rows = table_rows(capsys.readouterr().out)
    assert [r[:3] for r in rows] == [['Tiny', 'Bicubic', '3'], ['Tiny', 'Tiny', '3'],
                                     ['Tiny', 'HR', '3']]
    for r in rows[:2]:
        assert all(re.fullmatch(r'\d+\.\d\d', r[i]) for i in (3, 5, 7)), r
        assert all(re.fullmatch(r'[01]\.\d{4}', r[i]) for i in (4, 6)), r
    # HR: NIQE only; the full-reference columns are blank
    assert rows[2][3:7] == ['-'] * 4 and re.fullmatch(r'\d+\.\d\d', rows[2][7])

    summary = json.loads(json_path.read_text())
    assert [(s['dataset'], s['method'], s['images']) for s in summary] == \
        [('Tiny', 'Bicubic', 3), ('Tiny', 'Tiny', 3), ('Tiny', 'HR', 3)]
    assert all(list(s) == ['dataset', 'method', 'images', *FULL_REFERENCE, 'niqe']
               for s in summary)
    assert all(summary[2][key] is None for key in FULL_REFERENCE)

    with open(csv_path, newline='') as f:
        per_image = list(csv.DictReader(f))
    assert list(per_image[0]) == ['dataset', 'method', 'image', *FULL_REFERENCE, 'niqe']
    assert sorted((r['method'], r['image']) for r in per_image) == \
        sorted((m, n) for m in ('Bicubic', 'Tiny', 'HR') for n in NAMES)
    assert all(r[key] == '' for r in per_image if r['method'] == 'HR' for key in FULL_REFERENCE)

    generator = utils.load_generator(str(weights), 4)
    methods = {'Bicubic': lambda lr: utils.imresize(lr, 4),
               'Tiny': lambda lr: generator(lr[None])[0], 'HR': None}
    for s, row in zip(summary, rows):
        mine = [r for r in per_image if r['method'] == s['method']]
        for key in FULL_REFERENCE + ['niqe']:
            if s[key] is not None:
                # the JSON and the table are the means of the CSV rows
                assert s[key] == pytest.approx(np.mean([float(r[key]) for r in mine]), abs=1e-9)
        assert row[7] == f"{s['niqe']:.2f}"
        if s['method'] != 'HR':
            assert row[3] == f"{s['psnr_y']:.2f}" and row[4] == f"{s['ssim_y']:.4f}"
        for r in mine:
            # and each CSV row is what the pipeline gives when done by hand (the generator
            # unfused, so only rounding of a few pixels may differ)
            hr, lr = utils.load_hr_lr(str(folder / r['image']), 4)
            if s['method'] == 'HR':
                assert float(r['niqe']) == utils.niqe(hr, 4)
                continue
            with torch.no_grad():
                sr = methods[s['method']](lr)
            expected = utils.image_metrics(sr, hr, 4)
            assert float(r['psnr_y']) == pytest.approx(expected['psnr_y'], abs=0.01)
            assert float(r['ssim_ycbcr']) == pytest.approx(expected['ssim_ycbcr'], abs=1e-3)
            assert float(r['niqe']) == pytest.approx(utils.niqe(sr, 4), abs=0.05)


def test_bare_weight_path_is_labelled_by_its_stem(folder, weights, capsys):
    assert evaluate.main(['--data', str(folder), '--weight', str(weights)]) == 0
    assert [r[1] for r in table_rows(capsys.readouterr().out)] == ['Bicubic', 'tiny_x4', 'HR']


def test_parse_weight(tmp_path, monkeypatch):
    assert utils.weight_spec('SRGAN=w/g.pth') == ('SRGAN', 'w/g.pth')
    assert utils.weight_spec('w/srgan_x4.pth') == ('srgan_x4', 'w/srgan_x4.pth')
    assert utils.weight_spec('runs/lr=1e-4/g.pth') == ('g', 'runs/lr=1e-4/g.pth')
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'lr=1e-4.pth').write_bytes(b'')  # an existing file is a path, '=' or not
    assert utils.weight_spec('lr=1e-4.pth') == ('lr=1e-4', 'lr=1e-4.pth')


@pytest.mark.parametrize('label', ['Bicubic', 'HR'])
def test_duplicate_labels_are_refused(folder, weights, label, capsys):
    with pytest.raises(SystemExit) as err:
        evaluate.main(['--data', str(folder), '--weight', f'{label}={weights}'])
    assert err.value.code == 2
    assert f"the label '{label}' is used twice" in capsys.readouterr().err


def test_bf16_stays_close_to_float32(folder, weights):
    generator = utils.load_generator(str(weights), 4)
    _, lr = utils.load_hr_lr(str(folder / 'a.png'), 4)
    cpu = torch.device('cpu')
    exact = utils.generator_method(generator, 4, cpu)(lr)
    bf16 = utils.generator_method(generator, 4, cpu, torch.bfloat16)(lr)
    assert bf16.dtype == torch.float32 and bf16.shape == exact.shape == (3, 104, 200)
    assert 0 < (bf16 - exact).abs().max() < 0.05


def test_tiles_give_the_whole_image_result():
    generator = Generator(4, num_blocks=1, channels=8).eval()
    lr = torch.rand(3, 60, 57)  # tiles of 52 starting at 0 and 8 (rows), 0 and 5 (columns)
    cpu = torch.device('cpu')
    whole = utils.generator_method(generator, 4, cpu)(lr)
    tiled = utils.generator_method(generator, 4, cpu, tile=52)(lr)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_tile_too_small_for_the_overlap_is_refused(folder, capsys):
    rc, _, err = run_main(evaluate.main, ['--data', folder, '--tile', '32'], capsys)
    assert rc == 2 and err == ('error: --tile 32 must be 0 or larger than twice --tile_overlap '
                               '(24)\n')


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
    summary = json.loads(json_path.read_text())
    assert [(s['method'], s['images']) for s in summary] == [('Bicubic', 3), ('HR', 3)]


def test_too_small_image_is_skipped(folder, capsys):
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / 'small.png')
    rows, errors = evaluate.evaluate_folder(str(folder), {'Bicubic': utils.bicubic_method(4)},
                                            4, progress=False)
    assert len(rows) == 6 and len(errors) == 1 and 'small.png' in errors[0]  # Bicubic and HR
    assert 'too small' in capsys.readouterr().err


def test_fp16_on_cpu_is_one_line_error(folder, capsys):
    assert evaluate.main(['--data', str(folder), '--amp', 'fp16']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --amp fp16 needs --cuda') and err.count('\n') == 1


# ---------------------------------------------------------------------------------------------
# --metrics: the columns, the HR row, NIQE and LPIPS
# ---------------------------------------------------------------------------------------------

def test_parse_metrics():
    assert evaluate.parse_metrics('psnr,ssim,niqe,lpips') == ('psnr', 'ssim', 'niqe', 'lpips')
    assert evaluate.parse_metrics(' niqe, psnr,niqe') == ('niqe', 'psnr')


@pytest.mark.parametrize('bad', ['psnr,fid', '', ',', 'PSNR'])
def test_bad_metrics_are_one_line_errors(folder, capsys, bad):
    with pytest.raises(SystemExit) as err:
        evaluate.main(['--data', str(folder), '--metrics', bad])
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert len(lines) == 1 and 'argument --metrics' in lines[0]
    assert 'psnr, ssim, niqe, lpips' in lines[0]


@pytest.mark.parametrize('metrics, header, methods', [
    ('psnr', '| dataset | method | images | PSNR-Y | PSNR-YCbCr |', ['Bicubic']),
    ('ssim,psnr', '| dataset | method | images | PSNR-Y | SSIM-Y | PSNR-YCbCr | SSIM-YCbCr |',
     ['Bicubic']),
    ('niqe', '| dataset | method | images | NIQE |', ['Bicubic', 'HR']),
])
def test_metrics_choose_the_columns(folder, tmp_path, capsys, metrics, header, methods):
    json_path, csv_path = tmp_path / 'r.json', tmp_path / 'r.csv'
    assert evaluate.main(['--data', str(folder), '--metrics', metrics, '--json', str(json_path),
                          '--csv', str(csv_path)]) == 0
    assert [r[1] for r in table_rows(capsys.readouterr().out, header)] == methods
    keys = [key for key, title, _ in evaluate.METRICS if f' {title} ' in header]
    assert all(list(s)[3:] == keys for s in json.loads(json_path.read_text()))
    assert csv_path.read_text().splitlines()[0] == ','.join(['dataset', 'method', 'image', *keys])


def test_lpips_column(folder, alexnet_cache, tmp_path, capsys):
    json_path = tmp_path / 'r.json'
    assert evaluate.main(['--data', str(folder), '--metrics', 'psnr,lpips,niqe',
                          '--json', str(json_path)]) == 0
    header = '| dataset | method | images | PSNR-Y | PSNR-YCbCr | NIQE | LPIPS |'
    rows = table_rows(capsys.readouterr().out, header)
    assert [r[1] for r in rows] == ['Bicubic', 'HR'] and rows[1][6] == '-'
    summary = {s['method']: s for s in json.loads(json_path.read_text())}
    assert summary['HR']['lpips'] is None
    # the mean of what utils.LPIPS (with the same AlexNet file) gives each image
    metric = utils.LPIPS()
    expected = []
    for name in NAMES:
        hr, lr = utils.load_hr_lr(str(folder / name), 4)
        expected.append(metric(utils.imresize(lr, 4), hr, 4))
    assert summary['Bicubic']['lpips'] == pytest.approx(np.mean(expected), abs=1e-6)
    assert rows[0][6] == f"{summary['Bicubic']['lpips']:.4f}" and 0 < np.mean(expected)


def test_lpips_offline_is_one_line_error_before_any_work(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    assert evaluate.main(['--data', str(folder), '--metrics', 'psnr,lpips']) == 2
    out, err = capsys.readouterr()
    assert out == ''
    (line,) = [line for line in err.splitlines() if 'error:' in line]
    expected = tmp_path / 'torch' / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'
    assert line.startswith('error: --metrics lpips: LPIPS needs') and line.endswith(str(expected))


def test_image_too_small_for_niqe_leaves_it_blank(folder, weights, tmp_path, capsys):
    """A 48x48 image still gets PSNR/SSIM; its NIQE is blank, and so is its folder's mean."""
    from skimage import data
    Image.fromarray(data.camera()[:48, :48]).save(folder / 'small.png')
    json_path = tmp_path / 'r.json'
    assert evaluate.main(['--data', str(folder), '--weight', f'Tiny={weights}',
                          '--json', str(json_path)]) == 0
    out, err = capsys.readouterr()
    rows = table_rows(out)
    assert [r[:3] for r in rows] == [['Tiny', 'Bicubic', '4'], ['Tiny', 'Tiny', '4'],
                                     ['Tiny', 'HR', '3']]
    assert rows[0][7] == rows[1][7] == '-' and rows[2][7] != '-'
    warnings = [line for line in err.splitlines() if line.startswith('warning:')]
    assert warnings == [f"warning: {folder / 'small.png'}: NIQE needs at least two 96x96 "
                        'blocks, got a 40x40 image after cropping 4 border pixels; left blank']
    summary = json.loads(json_path.read_text())
    assert summary[0]['niqe'] is None and summary[0]['psnr_y'] > 0
