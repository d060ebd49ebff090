"""Faults and bad input (issue 16): every script fails early, in one line, and loses no work.

Each test reproduces one defect a fault-and-bad-input trial found, with tiny settings (two
residual blocks, 32 px crops, 5 iterations of 4 images); the defect number is in the test's
docstring."""
import errno
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import get_img_crop
import test_image
import train
import utils
from conftest import ROOT, load, run_main, same_tensors
from model import Generator

pytestmark = pytest.mark.usefixtures('one_thread')  # resumes are compared bit for bit
TINY = ['--num_blocks', '2', '--batch_size', '4', '--crop_size', '32', '--iters_per_epoch', '5',
        '--workers', '0', '--log_every', '1000', '--amp', 'off']
ADV = ['--mode', 'adversarial', '--content_weight', '0']  # SRGAN-MSE: no VGG
SHIPPED = ROOT / 'weights' / 'srgan_x4.pth'


def photos(n: int, size: int = 64) -> list:
    """n crops of natural photos, size x size."""
    from skimage import data
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [photos[i % 4][40 + 20 * (i // 4):40 + 20 * (i // 4) + size, 100:100 + size]
            for i in range(n)]


def write_images(folder: Path, images: list) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f'{i:02d}.png')
        Image.fromarray(img).save(paths[-1])
    return paths


def truncate(path: Path) -> None:
    """Keep the first half of the file: the header still reads, the pixels do not."""
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Four 64 px training images, two 48 px validation images."""
    root = tmp_path_factory.mktemp('data')
    write_images(root / 'train', photos(4))
    write_images(root / 'valid', [img[8:56, 8:56] for img in photos(2)])
    return root


def fit(data: Path, out: Path, *extra) -> int:
    """train.main in this process on the tiny data set; returns its exit code."""
    argv = ['--trainset_dir', str(data / 'train'), '--out_dir', str(out), *TINY,
            *[str(a) for a in extra]]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return train.main(argv)


def the_error(err: str) -> str:
    """The single line of stderr that mentions an error: no traceback, no second error. Unlike
    conftest.one_error it need not come last or start the line: argparse writes 'PROG: error:',
    and a progress bar may share the line or follow it."""
    assert 'Traceback' not in err, err
    errors = [line for line in err.replace('\r', '\n').splitlines() if 'error' in line.lower()]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def steps(monkeypatch) -> list:
    """Counts the training iterations run in this process."""
    calls = []
    real = train.train_step

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(train, 'train_step', counted)
    return calls


def checkpoint(out: Path, epoch: int) -> Path:
    return out / 'checkpoints' / f'checkpoint_epoch_{epoch}.pth'


def epochs_in_history(out: Path) -> list:
    path = out / 'history.csv'
    if not path.exists():
        return []
    return [int(line.split(',')[0]) for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'tiny_x4.pth'
    utils.save_weights(Generator(4, num_blocks=1, channels=16), str(path))
    return path


def huge_png(path: Path, width: int = 12000, height: int = 12000) -> None:
    """A valid grayscale PNG of width x height black pixels, in a few hundred KB: written a
    row at a time, never held as an image."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xffffffff))
    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    idat = b''.join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b'\x89PNG\r\n\x1a\n'
                     + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', idat) + chunk(b'IEND', b''))


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if any image is decoded (a header-only check must refuse first)."""
    def refuse(path, *a, **k):
        raise AssertionError(f'{path} was decoded')
    monkeypatch.setattr(utils, 'open_image', refuse)
    monkeypatch.setattr(utils, 'read_uint8', refuse)


# ---------------------------------------------------------------------------------------------
# 1. Every input path, output path and weights file is checked before the first iteration
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('mode', ['generator', 'adversarial'])
@pytest.mark.parametrize('problem', ['missing', 'empty', 'file'])
def test_bad_validset_fails_before_training(data, tmp_path, capsys, steps, mode, problem):
    """1: a missing or empty --validset_dir was found only after a whole epoch."""
    valid = tmp_path / 'valid'
    if problem == 'empty':
        valid.mkdir()
    elif problem == 'file':
        valid.write_text('not a folder')
    extra = ADV if mode == 'adversarial' else []
    rc = fit(data, tmp_path / 'run', '--validset_dir', valid, '--epochs', '1', *extra)
    line = the_error(capsys.readouterr().err)
    assert rc == 2 and str(valid) in line
    assert steps == [], 'training started before the validation folder was checked'
    assert not checkpoint(tmp_path / 'run', 1).exists()


@pytest.mark.parametrize('where', ['out_dir is a file', 'out_dir under a file'])
def test_unwritable_out_dir_fails_before_training(data, tmp_path, capsys, steps, where):
    """1: the output folder's writability is checked before the first iteration."""
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file where a folder should be')
    out = blocker if where == 'out_dir is a file' else blocker / 'run'
    rc = fit(data, out, '--epochs', '1')
    line = the_error(capsys.readouterr().err)
    assert rc == 2 and str(blocker) in line
    assert steps == []


@pytest.mark.parametrize('problem', ['missing', 'folder'])
def test_bad_pretrain_fails_before_training(data, tmp_path, capsys, steps, problem):
    """1 and 12: --pretrain is checked first, and a folder is called a folder."""
    pretrain = tmp_path / 'weights'
    if problem == 'folder':
        pretrain.mkdir()
    rc = fit(data, tmp_path / 'run', '--epochs', '1', '--pretrain', pretrain, *ADV)
    line = the_error(capsys.readouterr().err)
    assert rc != 0 and str(pretrain) in line
    assert ('folder' in line) == (problem == 'folder')
    assert steps == []


PROBE = '''
import os, sys
sys.path.insert(0, {root!r})
import train
real = train.train_step

def marked(args, rt, *a, **k):
    open(os.path.join({marks!r}, f'step_rank{{rt.rank}}'), 'w').close()
    return real(args, rt, *a, **k)

train.train_step = marked
if __name__ == '__main__':
    sys.exit(train.main(sys.argv[1:]))
'''


def test_ddp_bad_validset_reported_once_before_training(data, tmp_path):
    """1 under DDP: rank 0 checks, the other rank is told; nobody trains, one error line."""
    marks = tmp_path / 'marks'
    marks.mkdir()
    probe = tmp_path / 'probe.py'
    probe.write_text(PROBE.format(root=str(ROOT), marks=str(marks)))
    valid = tmp_path / 'missing'
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'TORCHELASTIC_')) and k not in
           ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    p = subprocess.run([sys.executable, str(probe), '--trainset_dir', str(data / 'train'),
                        '--validset_dir', str(valid), '--out_dir', str(tmp_path / 'run'),
                        '--epochs', '1', '--ddp', '--nproc', '2', '--dist_timeout', '60', *TINY],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    line = the_error(p.stderr)
    assert p.returncode == 2 and str(valid) in line, p.stderr
    assert list(marks.iterdir()) == [], 'a rank trained before the validation folder was checked'


# ---------------------------------------------------------------------------------------------
# 2. Truncated training images: skipped with one warning, too many stop in one line
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def broken_data(tmp_path) -> Path:
    """Four good training images and one whose second half is missing."""
    paths = write_images(tmp_path / 'train', photos(5))
    truncate(paths[2])
    return tmp_path


def test_broken_training_image_is_replaced_deterministically(broken_data):
    """2: a broken image is replaced by the next readable one, with the same random crop, so
    a resumed run draws what an uninterrupted one did."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = utils.TrainSet(str(broken_data / 'train'), 4, 32)
    torch.manual_seed(7)
    lr, hr = ds[2]
    torch.manual_seed(7)
    lr_next, hr_next = ds[3]
    assert torch.equal(hr, hr_next) and torch.equal(lr, lr_next)
    fresh = utils.TrainSet(str(broken_data / 'train'), 4, 32)
    torch.manual_seed(7)
    assert torch.equal(fresh[2][1], hr)


@pytest.mark.parametrize('workers', [0, 2])
def test_truncated_training_image_is_skipped_with_one_warning(broken_data, tmp_path, capfd,
                                                              workers):
    """2: a truncated image stopped training mid-epoch (a worker traceback with workers)."""
    out = tmp_path / 'run'
    rc = fit(broken_data, out, '--epochs', '2', '--iters_per_epoch', '4', '--workers', workers)
    err = capfd.readouterr().err
    assert rc == 0, err
    assert 'Traceback' not in err
    warned = [line for line in err.splitlines() if '02.png' in line]
    assert len(warned) == 1 and 'skipped' in warned[0], err
    assert checkpoint(out, 2).exists()


@pytest.mark.parametrize('workers', [0, 2])
def test_too_many_broken_training_images_stop_in_one_line(broken_data, tmp_path, capfd,
                                                          workers):
    """2: more broken images than the tolerated share stop the run, in one line."""
    truncate(broken_data / 'train' / '03.png')
    rc = fit(broken_data, tmp_path / 'run', '--epochs', '2', '--iters_per_epoch', '4',
             '--workers', workers)
    err = capfd.readouterr().err
    line = the_error(err)
    assert rc == 1 and 'training images' in line and '02.png' in line


# ---------------------------------------------------------------------------------------------
# 3. A pixel limit, checked from the header before anything is decoded
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def huge(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('huge') / 'huge.png'
    huge_png(path)
    assert path.stat().st_size < 1_000_000
    return path


def test_huge_image_refused_from_header_by_test_image(huge, tiny_weights, tmp_path, capsys,
                                                      no_decoding):
    """3: a 12000x12000 PNG of a few hundred KB made test_image.py allocate 13.8 GB."""
    rc, out, err = run_main(test_image.main, ['--image', huge, '--weight', tiny_weights,
                                              '--out_dir', tmp_path / 'res'], capsys)
    line = the_error(err)
    assert rc != 0 and str(huge) in line
    assert '12000x12000' in line and '48000x48000' in line and '--max_megapixels' in line
    assert not (tmp_path / 'res').exists()


def test_huge_image_refused_from_header_by_evaluate(huge, tiny_weights, capsys, no_decoding):
    """3: the same for evaluate.py (the HR image is what it holds at full size)."""
    rc, out, err = run_main(evaluate.main, ['--data', huge.parent, '--weight', tiny_weights],
                            capsys)
    line = the_error(err)
    assert rc != 0 and str(huge) in line and '--max_megapixels' in line


def test_huge_image_refused_from_header_by_get_img_crop(huge, tmp_path, capsys, no_decoding):
    """3: the same for get_img_crop.py."""
    rc, out, err = run_main(get_img_crop.main, ['--image', huge, '--box', '0,0,8,8',
                                                '--out_dir', tmp_path / 'crops'], capsys)
    line = the_error(err)
    assert rc != 0 and str(huge) in line and '--max_megapixels' in line


def test_max_megapixels_flag_sets_the_limit(tiny_weights, tmp_path, capsys):
    """3: the limit is on the output (64x64 at x4 = 0.066 megapixels) and the flag moves it."""
    path = write_images(tmp_path / 'in', photos(1))[0]
    common = ['--image', path, '--weight', tiny_weights, '--out_dir', tmp_path / 'res']
    rc, _, err = run_main(test_image.main, common + ['--max_megapixels', '0.05'], capsys)
    assert rc != 0 and '256x256' in the_error(err)
    rc, _, err = run_main(test_image.main, common + ['--max_megapixels', '0.07'], capsys)
    assert rc == 0, err
    for script, argv in ((evaluate.main, ['--data', path.parent]),
                         (get_img_crop.main, ['--image', path, '--box', '0,0,8,8',
                                              '--out_dir', tmp_path / 'crops'])):
        rc, _, err = run_main(script, argv + ['--max_megapixels', '0.004'], capsys)
        assert rc != 0 and '64x64' in the_error(err)
    for flag in ('0', '-1', 'nan'):
        rc, _, err = run_main(test_image.main, common + ['--max_megapixels', flag], capsys)
        assert rc == 2 and '--max_megapixels' in the_error(err)


# ---------------------------------------------------------------------------------------------
# 4. Disk full: one line, and history.csv never lists an epoch whose checkpoint is missing
# ---------------------------------------------------------------------------------------------

def test_disk_full_is_one_line_and_resume_is_exact(data, tmp_path, capsys, monkeypatch):
    """4: two chained tracebacks, and history.csv listing an unsaved epoch."""
    straight = tmp_path / 'straight'
    assert fit(data, straight, '--epochs', '2', '--lr_step', '1') == 0
    capsys.readouterr()

    out = tmp_path / 'full'
    real_save = torch.save

    def full_at_epoch_2(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get('epoch') == 2 and 'rng' in obj:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(torch, 'save', full_at_epoch_2)
        rc = fit(data, out, '--epochs', '2', '--lr_step', '1')
    line = the_error(capsys.readouterr().err)
    assert rc == 1 and 'no space left writing' in line and 'checkpoint_epoch_2.pth' in line
    assert epochs_in_history(out) == [1]
    assert not checkpoint(out, 2).exists()
    assert not [f for f in out.rglob('.tmp_*')], 'a temporary file was left behind'

    # space freed: the resumed run ends exactly where the uninterrupted one did
    assert fit(data, out, '--epochs', '2', '--lr_step', '1', '--resume', 'latest') == 0
    assert same_tensors(load(checkpoint(out, 2))['generator'],
                        load(checkpoint(straight, 2))['generator'])
    assert epochs_in_history(out) == [1, 2]


def test_history_is_written_after_the_checkpoint(data, tmp_path, monkeypatch):
    """4: history.csv only ever lists epochs whose checkpoint is on disk."""
    out = tmp_path / 'run'
    seen = []
    real = utils.atomic_write

    def watch(path, write):
        if os.path.basename(path) == 'history.csv':
            listed = epochs_in_history(out)
            seen.append((max(listed, default=0), checkpoint(out, len(listed) + 1).exists()))
        return real(path, write)

    monkeypatch.setattr(utils, 'atomic_write', watch)
    assert fit(data, out, '--epochs', '2') == 0
    assert seen and all(on_disk for _, on_disk in seen), seen


# ---------------------------------------------------------------------------------------------
# 5. evaluate.py checks --json / --csv before the work, and keeps the table if writing fails
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def hr_folder(tmp_path) -> Path:
    folder = tmp_path / 'Tiny'
    write_images(folder, [img[:48, :48] for img in photos(2)])
    return folder


@pytest.mark.parametrize('flag', ['--json', '--csv'])
@pytest.mark.parametrize('where', ['a folder', 'under a file'])
def test_evaluate_checks_outputs_before_work(hr_folder, tmp_path, capsys, monkeypatch, flag,
                                             where):
    """5: an unwritable --json/--csv threw a traceback after the whole run."""
    calls = []
    monkeypatch.setattr(evaluate, 'evaluate_folder', lambda *a, **k: calls.append(1))
    blocker = tmp_path / 'blocker'
    if where == 'a folder':
        blocker.mkdir()
        target = blocker
    else:
        blocker.write_text('a file')
        target = blocker / 'out.json'
    rc, out, err = run_main(evaluate.main, ['--data', hr_folder, flag, target], capsys)
    line = the_error(err)
    assert rc == 2 and flag in line and str(blocker) in line
    assert calls == []


def test_evaluate_write_failure_keeps_the_table(hr_folder, tmp_path, capsys, monkeypatch):
    """5: if writing still fails at the end, the table is printed and the error said."""
    def no_space(summary, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(evaluate, 'write_json', no_space)
    target = tmp_path / 'x4.json'
    csv_path = tmp_path / 'x4.csv'
    rc, out, err = run_main(evaluate.main, ['--data', hr_folder, '--json', target,
                                            '--csv', csv_path], capsys)
    line = the_error(err)
    assert rc == 1 and str(target) in line and 'no space left' in line.lower()
    assert '| Tiny | Bicubic | 2 |' in out
    assert csv_path.exists()  # the other output is still written


# ---------------------------------------------------------------------------------------------
# 6. get_img_crop.py: coordinates, read-only image folders, --out_dir
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def crop_inputs(tmp_path) -> list:
    lr = photos(1, 40)[0]
    folder = tmp_path / 'images'
    folder.mkdir()
    Image.fromarray(lr).save(folder / 'lr.png')
    Image.fromarray(lr.repeat(4, 0).repeat(4, 1)).save(folder / 'sr.png')
    return [folder / 'lr.png', folder / 'sr.png']


@pytest.mark.parametrize('value', ['Infinity', '1e400', '-Infinity', 'NaN', '2.5', 'true',
                                   '"3"'])
def test_coords_values_must_be_integers(crop_inputs, tmp_path, capsys, value):
    """6: Infinity and 1e400 threw OverflowError; floats and booleans were truncated."""
    coords = tmp_path / 'c.json'
    coords.write_text('{"size": [40, 40], "boxes": [{"box": [0, 0, %s, 8]}]}' % value)
    rc, out, err = run_main(get_img_crop.main, ['--image', *crop_inputs, '--coords', coords,
                                                '--out_dir', tmp_path / 'crops'], capsys)
    line = the_error(err)
    assert rc != 0 and str(coords) in line and 'integer' in line


def test_out_dir_receives_every_output(crop_inputs, tmp_path, capsys):
    """6: crops went next to the input images even with --out_dir."""
    folder = crop_inputs[0].parent
    before = sorted(os.listdir(folder))
    out_dir = tmp_path / 'crops'
    rc, out, err = run_main(get_img_crop.main, ['--image', *crop_inputs, '--box', '4,4,16,16',
                                                '--out_dir', out_dir], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(folder)) == before, 'files were written next to the inputs'
    assert sorted(os.listdir(out_dir)) == sorted(
        ['0_crop_lr.png', '0_crop_sr.png', 'annotated_lr.png', 'annotated_sr.png',
         'comparison_0.png', 'lr_coords.json'])


def test_out_dir_keeps_same_named_images_apart(tmp_path, capsys):
    """6: two inputs called x.png in different folders must not overwrite each other's crops."""
    a, b = tmp_path / 'a' / 'x.png', tmp_path / 'b' / 'x.png'
    for path, img in zip((a, b), photos(2, 40)):
        path.parent.mkdir()
        Image.fromarray(img).save(path)
    out_dir = tmp_path / 'crops'
    rc, _, err = run_main(get_img_crop.main, ['--image', a, b, '--box', '0,0,8,8',
                                              '--out_dir', out_dir], capsys)
    assert rc == 0, err
    crops = sorted(f for f in os.listdir(out_dir) if f.startswith('0_crop_'))
    assert len(crops) == 2


def test_unwritable_image_folder_with_coords(crop_inputs, tmp_path, capsys, monkeypatch):
    """6: images in a read-only folder with --coords gave 'max() arg is an empty sequence'."""
    coords = tmp_path / 'c.json'
    coords.write_text('{"size": [40, 40], "boxes": [{"box": [0, 0, 8, 8]}]}')
    folder = str(crop_inputs[0].parent)
    real = get_img_crop.save

    def read_only(img, path):  # root ignores permissions, so the folder is made read-only here
        if os.path.dirname(os.path.abspath(path)) == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(img, path)

    monkeypatch.setattr(get_img_crop, 'save', read_only)
    rc, out, err = run_main(get_img_crop.main, ['--image', *crop_inputs, '--coords', coords],
                            capsys)
    assert rc == 1 and 'Traceback' not in err and 'max()' not in err
    assert all(line.startswith('error: ') for line in err.strip().splitlines()), err
    assert 'Permission denied' in err and '--out_dir' in err


# ---------------------------------------------------------------------------------------------
# 7. python utils.py (sub-image preparation)
# ---------------------------------------------------------------------------------------------

def prepare(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, 'utils.py', *[str(a) for a in argv]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_prepare_output_that_cannot_be_created(tmp_path):
    """7: an output folder that cannot be created threw a PermissionError traceback."""
    write_images(tmp_path / 'in', photos(1))
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file')
    p = prepare(['--input', tmp_path / 'in', '--output', blocker / 'sub', '--workers', '1'])
    line = the_error(p.stderr)
    assert p.returncode == 2 and str(blocker) in line


def test_prepare_empty_input_says_so(tmp_path):
    """7: an empty input folder exited 0 silently."""
    (tmp_path / 'in').mkdir()
    p = prepare(['--input', tmp_path / 'in', '--output', tmp_path / 'sub'])
    assert p.returncode != 0
    assert '0 images found' in the_error(p.stderr)


# ---------------------------------------------------------------------------------------------
# 8. Numeric flags validated by argparse; --epochs 0 and resuming past --epochs
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('flag,value', [
    ('--batch_size', '0'), ('--batch_size', '-1'), ('--workers', '-1'), ('--epochs', '0'),
    ('--epochs', '-3'), ('--crop_size', '0'), ('--lr', '0'), ('--lr', 'nan'), ('--lr', '-1e-4'),
    ('--num_blocks', '0'), ('--val_every', '0'), ('--iters_per_epoch', '0'),
    ('--log_every', '0'), ('--keep', '-1'), ('--ema', '1'), ('--ema', '-0.5'),
    ('--nproc', '0'), ('--dist_timeout', '0'), ('--time_limit', '-1'), ('--lr_step', '-1'),
    ('--pixel_weight', '-1'), ('--content_weight', 'inf'), ('--adversarial_weight', 'nan'),
    ('--seed', '-1')])
def test_numeric_flags_are_validated(data, tmp_path, capsys, steps, flag, value):
    """8: --batch_size 0 threw ZeroDivisionError, -1 and --workers -1 ValueError tracebacks."""
    rc = None
    try:
        rc = fit(data, tmp_path / 'run', flag, value)
    except SystemExit as e:
        rc = e.code
    line = the_error(capsys.readouterr().err)
    assert rc == 2 and flag in line
    assert steps == []


def test_resume_past_epochs_says_so(data, tmp_path, capsys):
    """8: resuming a run that already reached --epochs exited 0 silently."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    capsys.readouterr()
    assert fit(data, out, '--epochs', '1', '--resume', 'latest') == 0
    said = capsys.readouterr().out
    assert 'nothing to train' in said and 'epoch 1' in said and '--epochs' in said


# ---------------------------------------------------------------------------------------------
# 9. Malicious pickles are refused, and said to be
# ---------------------------------------------------------------------------------------------

REFUSED = 'refused: the file holds pickled Python objects (weights_only)'


class Payload:
    """Unpickling this runs a shell command: it must never be loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture
def malicious(tmp_path) -> tuple:
    """A checkpoint-looking file whose generator entry runs a command when unpickled."""
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    torch.save({'generator': Payload(marker), 'upscale_factor': 4, 'epoch': 1}, path)
    # what this torch says about it (the message the old code failed to recognise)
    with pytest.raises(Exception) as raised:
        torch.load(path, weights_only=True)
    assert 'corrupt' not in str(raised.value)
    return path, marker


def test_malicious_pickle_refused_by_test_image(malicious, tmp_path, capsys):
    """9: a malicious pickle was refused but reported as 'corrupt or truncated'."""
    path, marker = malicious
    image = write_images(tmp_path / 'in', photos(1))[0]
    rc, out, err = run_main(test_image.main, ['--image', image, '--weight', path,
                                              '--out_dir', tmp_path / 'res'], capsys)
    line = the_error(err)
    assert rc != 0 and str(path) in line and REFUSED in line
    assert not marker.exists()


def test_malicious_pickle_refused_by_evaluate_and_train(malicious, data, tmp_path, capsys):
    """9: the same message from evaluate.py --weight and train.py --pretrain / --resume."""
    path, marker = malicious
    rc, out, err = run_main(evaluate.main, ['--data', data / 'valid', '--weight', path], capsys)
    assert rc != 0 and REFUSED in the_error(err)
    rc = fit(data, tmp_path / 'run', '--pretrain', path, *ADV)
    assert rc != 0 and REFUSED in the_error(capsys.readouterr().err)
    ckpt = checkpoint(tmp_path / 'run2', 1)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(path.read_bytes())
    rc = fit(data, tmp_path / 'run2', '--resume', '1', '--epochs', '2')
    assert rc != 0 and REFUSED in the_error(capsys.readouterr().err)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# 10. Inputs smaller than the receptive field
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not SHIPPED.exists(), reason='the shipped weights are not there')
@pytest.mark.parametrize('h,w,color', [(1, 1, (255, 0, 0)), (2, 2, (0, 200, 0)),
                                       (3, 50, (40, 60, 220))])
def test_tiny_input_gives_a_sane_output(tmp_path, capsys, h, w, color):
    """10: a red 1x1 pixel became (14, 10, 7); tiny inputs are mirrored out to the minimum
    size first, so a flat colour stays that colour."""
    path = tmp_path / 'tiny.png'
    Image.new('RGB', (w, h), color).save(path)
    rc, out, err = run_main(test_image.main, ['--image', path, '--weight', SHIPPED, '--amp',
                                              'off', '--out_dir', tmp_path / 'res'], capsys)
    assert rc == 0, err
    sr = np.asarray(Image.open(tmp_path / 'res' / 'tiny' / 'sr_tiny.png'), dtype=float)
    assert sr.shape == (4 * h, 4 * w, 3)
    # SRGAN adds some texture even to a flat colour, but no more than that
    assert np.abs(sr.reshape(-1, 3).mean(0) - color).max() <= 8, sr.reshape(-1, 3).mean(0)
    assert np.abs(sr - np.array(color)).max() <= 32


# ---------------------------------------------------------------------------------------------
# 11. --resume latest falls back to the newest checkpoint that loads
# ---------------------------------------------------------------------------------------------

def test_resume_latest_skips_a_truncated_checkpoint(data, tmp_path, capsys):
    """11: a truncated newest checkpoint stopped --resume latest; the older one is used, and
    the run ends exactly where an uninterrupted one does."""
    straight, out = tmp_path / 'straight', tmp_path / 'run'
    assert fit(data, straight, '--epochs', '3', '--lr_step', '2') == 0
    assert fit(data, out, '--epochs', '2', '--lr_step', '2') == 0
    capsys.readouterr()
    truncate(checkpoint(out, 2))
    assert fit(data, out, '--epochs', '3', '--lr_step', '2', '--resume', 'latest') == 0
    said = capsys.readouterr()
    text = said.out + said.err
    assert 'Traceback' not in text
    assert 'checkpoint_epoch_2.pth' in text and 'skipped' in text
    assert 'resumed from' in said.out and 'checkpoint_epoch_1.pth' in said.out
    assert same_tensors(load(checkpoint(out, 3))['generator'],
                        load(checkpoint(straight, 3))['generator'])


def test_resume_latest_without_a_checkpoint_starts_fresh(data, tmp_path, capsys):
    """11: a run killed before its first checkpoint could not be requeued with --resume
    latest (the SLURM recipe's)."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1', '--resume', 'latest') == 0
    assert 'starting fresh' in capsys.readouterr().out
    assert checkpoint(out, 1).exists()


def test_resume_number_stays_strict(data, tmp_path, capsys):
    """11: --resume N does not fall back."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '2') == 0
    truncate(checkpoint(out, 2))
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '3', '--resume', '2')
    line = the_error(capsys.readouterr().err)
    assert rc == 1 and 'checkpoint_epoch_2.pth' in line


# ---------------------------------------------------------------------------------------------
# 12. Messages that say enough
# ---------------------------------------------------------------------------------------------

def test_resume_mismatch_names_keys_and_cause(data, tmp_path, capsys):
    """12: a state-dict mismatch ended at 'Error(s) in loading state_dict for Generator:'."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '2', '--resume', '1', '--num_blocks', '3')
    line = the_error(capsys.readouterr().err)
    assert rc == 1 and 'body.2.' in line and '--num_blocks' in line
    rc = fit(data, out, '--epochs', '2', '--resume', '1', '--upscale_factor', '2')
    line = the_error(capsys.readouterr().err)
    assert rc == 1 and 'upsample.1.' in line and 'scale' in line


def test_weights_mismatch_names_keys_and_cause(tmp_path, capsys):
    """12: the same for a weights file whose recorded settings disagree with its tensors."""
    torch.manual_seed(0)
    state = utils.weights_dict(Generator(4, num_blocks=2, channels=16))
    state['num_blocks'] = 3
    path = tmp_path / 'odd.pth'
    torch.save(state, path)
    image = write_images(tmp_path / 'in', photos(1))[0]
    rc, out, err = run_main(test_image.main, ['--image', image, '--weight', path,
                                              '--out_dir', tmp_path / 'res'], capsys)
    line = the_error(err)
    assert rc != 0 and 'body.2.' in line and 'num_blocks' in line


def test_weight_folder_is_called_a_folder(tmp_path, capsys):
    """12: --weight given a folder said 'file not found'."""
    image = write_images(tmp_path / 'in', photos(1))[0]
    rc, out, err = run_main(test_image.main, ['--image', image, '--weight', tmp_path,
                                              '--out_dir', tmp_path / 'res'], capsys)
    line = the_error(err)
    assert rc != 0 and 'folder' in line and 'not found' not in line


def test_negative_box_value_is_accepted(crop_inputs, tmp_path, capsys):
    """12: --box -5,0,10,10 was read by argparse as an unknown option."""
    rc, out, err = run_main(get_img_crop.main, ['--image', *crop_inputs, '--box', '-5,0,10,10',
                                                '--out_dir', tmp_path / 'crops'], capsys)
    line = the_error(err)
    assert rc != 0 and 'box -5,0,10,10 is not inside the 40x40 image' in line
    rc, out, err = run_main(get_img_crop.main, ['--image', *crop_inputs, '--box', '5,0,10,10',
                                                '--box', '-5', '--out_dir', tmp_path / 'c'],
                            capsys)
    assert rc != 0 and '--box -5' in the_error(err)


def test_test_image_banner_only_after_inputs_are_checked(tiny_weights, tmp_path, capsys):
    """12: test_image.py printed its '1 image(s)' banner before saying the file is missing."""
    missing = tmp_path / 'missing.png'
    rc, out, err = run_main(test_image.main, ['--image', missing, '--weight', tiny_weights,
                                              '--out_dir', tmp_path / 'res'], capsys)
    line = the_error(err)
    assert rc != 0 and str(missing) in line and 'not found' in line
    assert 'image(s)' not in out


# ---------------------------------------------------------------------------------------------
# Also: CPU threads and bitwise resume
# ---------------------------------------------------------------------------------------------

def test_checkpoint_records_threads_and_resume_warns_on_a_change(data, tmp_path, capsys):
    """Bitwise resume needs the same number of CPU threads: the checkpoint records it, and a
    resume with another count says so."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    assert load(checkpoint(out, 1))['num_threads'] == 1
    capsys.readouterr()
    torch.set_num_threads(2)
    try:
        assert fit(data, out, '--epochs', '2', '--resume', 'latest') == 0
    finally:
        torch.set_num_threads(1)
    said = capsys.readouterr()
    warned = [line for line in (said.out + said.err).splitlines() if 'CPU threads' in line]
    assert len(warned) == 1 and 'with 1 CPU threads' in warned[0] and 'has 2' in warned[0]
