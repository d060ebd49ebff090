"""Faults and bad input, second trial (issue 24): nothing lost, nothing wrong, nothing hung.

Each test reproduces one defect the trial found, with tiny networks (one residual block, 8
channels) and 32 px images; the item number of issue 24 is in the test's docstring.
docs/reliability.md lists the promises these tests hold."""
import os
import signal
import subprocess
import sys
import time
import warnings
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
from conftest import ROOT, natural, one_error, run_main
from model import Generator

sys.path.insert(0, str(ROOT / 'scripts'))
import export_onnx  # noqa: E402
import transfer_scale  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')


def tiny(scale: int = 4, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(scale, num_blocks=1, channels=8)


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('weights') / 'tiny_x4.pth'
    utils.save_weights(tiny(), str(path))
    return path


@pytest.fixture(scope='module')
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('photo') / 'a.png'
    Image.fromarray(natural(32, 32)).save(path)
    return path


@pytest.fixture(scope='module')
def hr_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('hr') / 'Set5'
    folder.mkdir()
    for i in range(2):
        Image.fromarray(natural(32, 32, top=100 + 20 * i)).save(folder / f'{i}.png')
    return folder


def edited(weights: Path, tmp_path: Path, change) -> Path:
    """A copy of the weights file with change(state) applied."""
    state = torch.load(weights, map_location='cpu', weights_only=True)
    change(state)
    path = tmp_path / 'edited.pth'
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------------------------------
# 5. weights that are not finite floats; an output that is not finite
# ---------------------------------------------------------------------------------------------

def poison_nan(state):
    state['generator']['tail.bias'][0] = float('nan')


def poison_int(state):
    state['generator']['tail.weight'] = state['generator']['tail.weight'].to(torch.int32)


@pytest.mark.parametrize('poison, says', [(poison_nan, 'not finite'),
                                          (poison_int, 'int32')])
def test_non_finite_or_integer_weights_are_refused(weights, photo, tmp_path, capsys, poison,
                                                   says):
    """5: NaN or integer-typed weights gave a black picture and exit 0."""
    path = edited(weights, tmp_path, poison)
    rc, _, err = run_main(test_image.main, ['--image', photo, '--weight', path, '--out_dir',
                                            tmp_path / 'out'], capsys)
    line = one_error(err)
    assert rc == 2 and str(path) in line and 'tail.' in line and says in line, err
    assert not (tmp_path / 'out' / 'a').exists()


def test_non_finite_output_is_an_error(photo, tmp_path, capsys, monkeypatch):
    """5: a network whose output is NaN (finite weights that overflow) is an error per image."""
    g = tiny()
    with torch.no_grad():
        g.tail.weight.fill_(3e38)
    path = tmp_path / 'overflow.pth'
    utils.save_weights(g, str(path))
    rc, _, err = run_main(test_image.main, ['--image', photo, '--weight', path, '--out_dir',
                                            tmp_path / 'out', '--amp', 'off'], capsys)
    line = one_error(err)
    assert rc == 1 and str(photo) in line and 'not finite' in line, err
    assert not list((tmp_path / 'out').rglob('sr_*'))


# ---------------------------------------------------------------------------------------------
# 6. weights-file settings of the wrong type or range, checked before a network is built
# ---------------------------------------------------------------------------------------------

BAD_SETTINGS = [('upscale_factor', [4]), ('channels', 1e12), ('channels', 10 ** 12),
                ('num_blocks', -1), ('upscale_factor', True)]


@pytest.mark.parametrize('key, value', BAD_SETTINGS)
def test_bad_settings_are_refused_by_the_loader(weights, tmp_path, key, value, monkeypatch):
    """6: a list or 1e12 in the settings crashed with a TypeError or an allocator error."""
    path = edited(weights, tmp_path, lambda s: s.__setitem__(key, value))
    monkeypatch.setattr(utils, 'Generator', lambda *a, **k: pytest.fail('network built'))
    with pytest.raises(utils.CheckpointError) as e:
        utils.load_generator(str(path))
    assert e.value.exit_status == 2 and str(path) in str(e.value) and key in str(e.value)


@pytest.mark.parametrize('script', ['test_image', 'evaluate', 'train', 'export_onnx',
                                    'transfer_scale'])
def test_bad_settings_are_one_line_in_every_script(weights, photo, hr_dir, tmp_path, capsys,
                                                   script):
    """6: every script that loads a weights file says it in one line, exit 2."""
    path = edited(weights, tmp_path, lambda s: s.__setitem__('upscale_factor', [4]))
    out = tmp_path / 'out'
    main, argv = {
        'test_image': (test_image.main, ['--image', photo, '--weight', path, '--out_dir', out]),
        'evaluate': (evaluate.main, ['--data', hr_dir, '--weight', path]),
        'train': (train.main, ['--trainset_dir', hr_dir, '--pretrain', path, '--out_dir', out,
                               '--num_blocks', '1', '--epochs', '1', '--workers', '0',
                               '--crop_size', '16']),
        'export_onnx': (export_onnx.main, ['--weight', path, '--output', out / 'g.onnx']),
        'transfer_scale': (transfer_scale.main, ['--weight', path, '--upscale_factor', '2',
                                                 '--output', out / 'g.pth']),
    }[script]
    rc, _, err = run_main(main, argv, capsys)
    line = one_error(err)
    assert rc == 2 and str(path) in line and 'upscale_factor' in line, err


# ---------------------------------------------------------------------------------------------
# 2. outputs never overwrite inputs
# ---------------------------------------------------------------------------------------------

def test_get_img_crop_refuses_to_overwrite_an_input(tmp_path, capsys):
    """2: --image d/a.png d/annotated_a.png replaced the second input."""
    a, b = tmp_path / 'a.png', tmp_path / 'annotated_a.png'
    Image.fromarray(natural(32, 32)).save(a)
    Image.fromarray(natural(32, 32, top=150)).save(b)
    before = b.read_bytes()
    rc, _, err = run_main(get_img_crop.main, ['--image', a, b, '--box', '0,0,8,8'], capsys)
    line = one_error(err)
    assert rc == 2 and str(b) in line, err
    assert b.read_bytes() == before and not (tmp_path / '0_crop_a.png').exists()


def test_get_img_crop_with_coords_refuses_too(tmp_path, capsys):
    """2: the same with the boxes from a coords file, through a symbolic link."""
    a = tmp_path / 'a.png'
    Image.fromarray(natural(32, 32)).save(a)
    assert run_main(get_img_crop.main, ['--image', a, '--box', '0,0,8,8'], capsys)[0] == 0
    link = tmp_path / 'link.png'
    link.symlink_to(tmp_path / '0_crop_a.png')
    before = link.read_bytes()
    rc, _, err = run_main(get_img_crop.main, ['--image', a, link, '--coords',
                                              tmp_path / 'a_coords.json',
                                              '--out_dir', tmp_path], capsys)
    assert rc == 2 and 'link.png' in one_error(err)
    assert link.read_bytes() == before


@pytest.mark.parametrize('which', ['json_is_input', 'csv_is_input', 'json_is_csv'])
def test_evaluate_outputs_are_not_inputs(hr_dir, tmp_path, capsys, which, monkeypatch):
    """2: --json or --csv could name an input image, or both one file."""
    image = hr_dir / '0.png'
    before = image.read_bytes()
    out = tmp_path / 'x.json'
    flags = {'json_is_input': ['--json', image], 'csv_is_input': ['--csv', image],
             'json_is_csv': ['--json', out, '--csv', out]}[which]
    monkeypatch.setattr(utils, 'load_generator', lambda *a, **k: pytest.fail('model loaded'))
    rc, _, err = run_main(evaluate.main, ['--data', hr_dir, '--metrics', 'psnr', *flags],
                          capsys)
    line = one_error(err)
    assert rc == 2 and 'refusing to overwrite' in line, err
    assert image.read_bytes() == before and not out.exists()


def test_transfer_scale_output_is_not_its_weight(weights, tmp_path, capsys):
    """2: --output could be its own --weight."""
    copy = tmp_path / 'w.pth'
    copy.write_bytes(weights.read_bytes())
    rc, _, err = run_main(transfer_scale.main, ['--weight', copy, '--upscale_factor', '2',
                                                '--output', copy], capsys)
    assert rc == 2 and '--output' in one_error(err)
    assert copy.read_bytes() == weights.read_bytes()


# ---------------------------------------------------------------------------------------------
# 3. evaluate.py: one row per distinct folder
# ---------------------------------------------------------------------------------------------

def test_evaluate_keeps_same_named_folders_apart_and_counts_a_folder_once(hr_dir, tmp_path,
                                                                          capsys):
    """3: --data a/Set5 b/Set5 gave one 'Set5' row over both; --data X X/ counted twice."""
    other = tmp_path / 'b' / 'Set5'
    other.mkdir(parents=True)
    Image.fromarray(natural(32, 32, top=300)).save(other / 'x.png')
    rc, out, err = run_main(evaluate.main, ['--data', hr_dir, f'{hr_dir}/', other,
                                            '--metrics', 'psnr', '--json', tmp_path / 't.json'],
                            capsys)
    assert rc == 0, err
    rows = {r['dataset']: r['images'] for r in
            __import__('json').loads((tmp_path / 't.json').read_text())}
    assert rows == {f'{hr_dir.parent.name}/Set5': 2, 'b/Set5': 1}, rows
    assert 'counted once' in err and str(hr_dir) in err


# ---------------------------------------------------------------------------------------------
# 8. out of CPU memory: retried with a smaller tile, else one line per image
# ---------------------------------------------------------------------------------------------

CPU_OOM = ('[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: '
           'you tried to allocate 8589934592 bytes.')


def test_cpu_out_of_memory_retries_with_half_the_tile(weights, tmp_path, capsys, monkeypatch):
    """8: out of CPU memory was a RuntimeError traceback; now the tile is halved once."""
    path = tmp_path / 'big.png'
    Image.fromarray(natural(128, 128)).save(path)
    real, tiles = utils.tiled_forward, []

    def forward(model, lr, scale, tile=0, *a, **k):
        tiles.append(tile)
        if tile == 0:
            raise RuntimeError(CPU_OOM)
        return real(model, lr, scale, tile, *a, **k)
    monkeypatch.setattr(utils, 'tiled_forward', forward)
    rc, _, err = run_main(test_image.main, ['--image', path, '--weight', weights, '--tile', '0',
                                            '--out_dir', tmp_path / 'out'], capsys)
    assert rc == 0 and tiles[:2] == [0, 64], (tiles, err)
    assert 'retrying with --tile 64' in err and 'Traceback' not in err
    assert (tmp_path / 'out' / 'big' / 'sr_big.png').exists()


def test_cpu_out_of_memory_in_evaluate_keeps_the_table(weights, hr_dir, tmp_path, capsys,
                                                       monkeypatch):
    """8: in evaluate.py it lost the whole table; now the image is named, the rest scored."""
    real, calls = utils.tiled_forward, []

    def forward(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(CPU_OOM)
        return real(*a, **k)
    monkeypatch.setattr(utils, 'tiled_forward', forward)
    rc, out, err = run_main(evaluate.main, ['--data', hr_dir, '--weight', f'G={weights}',
                                            '--metrics', 'psnr'], capsys)
    assert rc == 1 and 'Traceback' not in err, err
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and '0.png' in errors[0] and '--tile' in errors[0], err
    assert '1 of 2 image(s) not scored' in err
    assert '| Set5 | G | 1 |' in out, out


# ---------------------------------------------------------------------------------------------
# 9. Ctrl-C and SIGTERM: 'error: interrupted', exit 130, nothing partial under a final name
# ---------------------------------------------------------------------------------------------

def interrupt(argv: list, delay: float, sig=signal.SIGINT) -> subprocess.CompletedProcess:
    """Run `argv` under Python, send `sig` after `delay` seconds; its exit code and output."""
    p = subprocess.Popen([sys.executable, *map(str, argv)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


@pytest.mark.parametrize('argv', [['test_image.py', '--image', 'x.png'],
                                  ['evaluate.py', '--data', 'x'],
                                  ['utils.py', '--input', 'x', '--output', 'y'],
                                  ['scripts/export_onnx.py', '--output', 'x.onnx']])
def test_ctrl_c_while_loading_is_one_line(argv):
    """9: Ctrl-C while torch was being imported printed a 20-line traceback."""
    r = interrupt(argv, 1.0)  # torch takes longer than that to import
    assert r.returncode == 130 and r.stderr.strip() == 'error: interrupted', r.stderr


def test_ctrl_c_in_evaluate_writes_nothing(hr_dir, tmp_path, capsys, monkeypatch):
    """9: Ctrl-C during the work: one line, 130, no --json or --csv."""
    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(utils, 'load_hr_lr', stop)
    rc, _, err = run_main(evaluate.main, ['--data', hr_dir, '--metrics', 'psnr', '--json',
                                          tmp_path / 't.json', '--csv', tmp_path / 't.csv'],
                          capsys)
    assert rc == 130 and one_error(err) == 'error: interrupted'
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_in_export_onnx_is_not_an_export_failure(weights, tmp_path, capsys,
                                                        monkeypatch):
    """9: the exporter wraps Ctrl-C in an error: 'export failed', escape codes, exit 1."""
    def export(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError('\x1b[1mFailed to export\x1b[0m') from e
    monkeypatch.setattr(torch.onnx, 'export', export)
    rc, _, err = run_main(export_onnx.main, ['--weight', weights, '--output',
                                             tmp_path / 'g.onnx'], capsys)
    assert rc == 130 and one_error(err) == 'error: interrupted'
    assert list(tmp_path.iterdir()) == []


SIGTERM_VIDEO = '''
import os, signal, sys
import test_video
real, calls = test_video.super_resolve_frames, []
def frames(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
test_video.super_resolve_frames = frames
sys.exit(test_video.main(sys.argv[1:]))
'''


def test_sigterm_stops_test_video_cleanly(weights, tmp_path):
    """9: SIGTERM killed test_video.py on the spot, leaving .tmp_* files."""
    from test_test_video import make_video
    clip = tmp_path / 'clip.mp4'
    make_video(clip, n=utils.MAX_BATCH + 4, audio=False)
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-c', SIGTERM_VIDEO, '--video', clip, '--weight',
                        weights, '--out_dir', out, '--tile', '0'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 130 and 'interrupted' in one_error(r.stderr), r.stderr
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 4. a truncated video
# ---------------------------------------------------------------------------------------------

def cut_video(path: Path, n: int = 20, keep: float = 0.9) -> None:
    """An MP4 that declares n frames (index at the front) with its end cut off."""
    import av
    c = av.open(str(path), 'w', options={'movflags': 'faststart'})
    v = c.add_stream('libx264', rate=25)
    v.width, v.height, v.pix_fmt = 32, 24, 'yuv420p'
    photo = natural(24 + 3 * n, 32 + 2 * n)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(photo[3 * i:3 * i + 24, 2 * i:2 * i + 32]), format='rgb24')
        frame.pts = i
        c.mux(v.encode(frame))
    c.mux(v.encode())
    c.close()
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])


@pytest.mark.parametrize('allow', [False, True])
def test_truncated_video_is_said_and_kept(weights, tmp_path, capsys, allow):
    """4: a truncated video gave a shorter output with exit 0 (or lost it at a decode error)."""
    import test_video
    clip = tmp_path / 'clip.mp4'
    cut_video(clip)
    out = tmp_path / 'out'
    rc, _, err = run_main(test_video.main, ['--video', clip, '--weight', weights, '--out_dir',
                                            out] + (['--allow_partial'] if allow else []),
                          capsys)
    said = [line for line in err.splitlines() if 'of the 20 frames' in line]
    assert len(said) == 1 and str(clip) in said[0], err
    assert rc == (0 if allow else 1) and 'Traceback' not in err
    assert said[0].startswith('warning: ' if allow else 'error: ')
    assert (out / 'sr_clip.mp4').is_file()


# ---------------------------------------------------------------------------------------------
# 10, 15. paths of the wrong kind: named by kind, never opened; file names escaped
# ---------------------------------------------------------------------------------------------

def test_fifo_as_coords_is_refused_not_waited_on(photo, tmp_path):
    """10: a FIFO as --coords hung get_img_crop.py."""
    fifo = tmp_path / 'coords.json'
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, 'get_img_crop.py', '--image', photo, '--coords', fifo,
                        '--out_dir', tmp_path / 'out'], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    line = one_error(r.stderr)
    assert r.returncode == 2 and str(fifo) in line and 'not a regular file: FIFO' in line


def test_fifo_as_image_is_named_by_kind(weights, photo, tmp_path, capsys):
    """15: a FIFO was 'empty file (0 bytes)'; in a folder it is skipped, the rest done."""
    fifo = tmp_path / 'pipe.png'
    os.mkfifo(fifo)
    rc, _, err = run_main(test_image.main, ['--image', fifo, '--weight', weights], capsys)
    assert rc == 2 and 'not a regular file: FIFO' in one_error(err)
    folder = tmp_path / 'in'
    folder.mkdir()
    os.mkfifo(folder / 'pipe.png')
    (folder / 'a.png').write_bytes(photo.read_bytes())
    rc, _, err = run_main(test_image.main, ['--image', folder, '--weight', weights,
                                            '--out_dir', tmp_path / 'out'], capsys)
    errors = [line for line in err.splitlines() if line.startswith('error: ')]
    assert rc == 1 and 'pipe.png: not a regular file: FIFO' in errors[0], err
    assert (tmp_path / 'out' / 'a' / 'sr_a.png').exists()


@pytest.mark.parametrize('make, says', [
    (lambda p: p.mkdir(), 'is a folder'),
    (lambda p: p.symlink_to(p), 'symbolic link loop'),
    (lambda p: p.symlink_to(p.parent / 'gone.mp4'), 'broken symbolic link')])
def test_wrong_kind_of_video_path_is_named(weights, tmp_path, capsys, make, says):
    """15: a folder or a symbolic link loop as --video was 'file not found'."""
    import test_video
    video = tmp_path / 'v.mp4'
    make(video)
    rc, _, err = run_main(test_video.main, ['--video', video, '--weight', weights,
                                            '--out_dir', tmp_path / 'out'], capsys)
    assert rc == 2 and says in one_error(err), err


def test_control_characters_in_file_names_are_escaped(weights, tmp_path, capsys):
    """15: a newline or a terminal escape in a file name split the error over lines."""
    name = tmp_path / 'two\nlines\x1b[2J.png'
    rc, _, err = run_main(test_image.main, ['--image', name, '--weight', weights], capsys)
    assert rc == 2 and err.count('\n') == 1 and '\x1b' not in err, repr(err)
    assert 'two\\nlines\\x1b[2J.png' in err


# ---------------------------------------------------------------------------------------------
# 16. output folders are checked before the model, and a failed write names the real file
# ---------------------------------------------------------------------------------------------

def test_video_out_dir_that_is_a_file_fails_before_the_model(weights, tmp_path, capsys,
                                                             monkeypatch):
    """16: test_video.py --out_dir FILE failed only after loading the model."""
    import test_video
    from test_test_video import make_video
    clip, not_a_folder = tmp_path / 'c.mp4', tmp_path / 'file'
    make_video(clip, n=2, audio=False)
    not_a_folder.write_text('x')
    monkeypatch.setattr(test_video, 'generator_from_flags',
                        lambda *a: pytest.fail('model loaded'))
    rc, _, err = run_main(test_video.main, ['--video', clip, '--weight', weights,
                                            '--out_dir', not_a_folder], capsys)
    assert rc == 2 and 'not a folder' in one_error(err)


def read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` read-only for this process, as it is for a user (root ignores modes)."""
    real_access, real_mkstemp = os.access, utils.tempfile.mkstemp

    def access(path, mode, *a, **k):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    def mkstemp(*a, dir=None, **k):
        if dir and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, 'Permission denied', str(folder / '.tmp_x.json'))
        return real_mkstemp(*a, dir=dir, **k)
    monkeypatch.setattr(utils.os, 'access', access)
    monkeypatch.setattr(utils.tempfile, 'mkstemp', mkstemp)


def test_read_only_out_dir_is_a_usage_error_naming_the_folder(photo, tmp_path, capsys,
                                                              monkeypatch):
    """16: a read-only --out_dir gave exit 1 naming a temporary .tmp_*.json."""
    ro = tmp_path / 'ro'
    ro.mkdir()
    read_only(monkeypatch, ro)
    rc, _, err = run_main(get_img_crop.main, ['--image', photo, '--box', '0,0,8,8',
                                              '--out_dir', ro], capsys)
    line = one_error(err)
    assert rc == 2 and str(ro) in line and '.tmp_' not in line, err


def test_failed_write_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    """16: a write refused by the folder named the temporary file."""
    ro = tmp_path / 'ro'
    ro.mkdir()
    read_only(monkeypatch, ro)
    with pytest.raises(OSError) as e:
        utils.atomic_write(str(ro / 'x.json'), lambda tmp: None)
    assert e.value.filename == str(ro / 'x.json')


# ---------------------------------------------------------------------------------------------
# 11. other tracebacks: a non-UTF-8 file name in --csv, --opset, a wrong-shaped --from_json
# ---------------------------------------------------------------------------------------------

def test_evaluate_csv_with_a_non_utf8_file_name(hr_dir, tmp_path, capsys):
    """11: a file name that is not UTF-8 gave a UnicodeEncodeError and no CSV."""
    folder = tmp_path / 'Set'
    folder.mkdir()
    name = os.fsencode(folder) + b'/caf\xe9.png'
    with open(name, 'wb') as f:
        f.write((hr_dir / '0.png').read_bytes())
    out = tmp_path / 'm.csv'
    rc, _, err = run_main(evaluate.main, ['--data', folder, '--metrics', 'psnr', '--csv', out],
                          capsys)
    assert rc == 0, err
    assert b'caf\xe9.png' in out.read_bytes()


@pytest.mark.parametrize('opset', [13, 17, 99])
def test_export_onnx_refuses_opsets_it_cannot_write(weights, tmp_path, capsys, opset,
                                                   monkeypatch):
    """11: --opset 13 exited 0 after a traceback, claiming opset 13 for an opset-18 file."""
    monkeypatch.setattr(export_onnx, 'generator_from_flags',
                        lambda *a: pytest.fail('model loaded'))
    rc, _, err = run_main(export_onnx.main, ['--weight', weights, '--opset', opset,
                                             '--output', tmp_path / 'g.onnx'], capsys)
    line = one_error(err)
    assert rc == 2 and f'--opset {opset}' in line and 'opsets 18 to ' in line, err


def test_export_onnx_checks_the_opset_it_wrote(weights, tmp_path, capsys, monkeypatch):
    """11: an opset other than the one asked for is not written."""
    monkeypatch.setattr(export_onnx, 'written_opset', lambda path: 13)
    rc, _, err = run_main(export_onnx.main, ['--weight', weights, '--output',
                                             tmp_path / 'g.onnx'], capsys)
    assert rc == 1 and 'opset 13, not 18' in one_error(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('content', ['{"a": 1}', '[1, 2]', '[{"method": "HR", "niqe": 3}]',
                                     '[{"method": "Bicubic", "psnr_y": "x", "niqe": 1}, '
                                     '{"method": "HR", "niqe": 3}, '
                                     '{"method": "blend", "strength": 0, "psnr_y": 1, "niqe": 1}]'])
def test_plot_strength_wrong_shaped_json_names_the_file(tmp_path, capsys, content):
    """11: --from_json with a wrong-shaped file crashed, without naming the file."""
    import plot_strength
    scores = tmp_path / 's.json'
    scores.write_text(content)
    rc, _, err = run_main(plot_strength.main, ['--from_json', scores, '--out',
                                               tmp_path / 'p.png'], capsys)
    line = one_error(err)
    assert rc == 1 and str(scores) in line and 'not a scores file' in line, err
    assert not (tmp_path / 'p.png').exists()


# ---------------------------------------------------------------------------------------------
# 14. clearer messages: old pickles, the scale nobody asked for, --vgg_weights
# ---------------------------------------------------------------------------------------------

def test_old_format_pickle_is_called_so_without_torch_warnings(tmp_path, capsys):
    """14: a plain or old-format pickle was 'corrupt or truncated' after a 2-line UserWarning."""
    import pickle
    path = tmp_path / 'old.pth'
    with open(path, 'wb') as f:
        pickle.dump({'generator': {'head.0.weight': torch.zeros(1)}}, f, protocol=4)
    image = tmp_path / 'a.png'
    Image.fromarray(natural(32, 32)).save(image)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a warning torch gave would fail the load here
        rc, _, err = run_main(test_image.main, ['--image', image, '--weight', path], capsys)
    line = one_error(err)
    assert rc == 1 and str(path) in line and 'old-format (non-zip) pickle' in line, err


def test_vgg_weights_error_names_the_file_and_cause(tmp_path):
    """14: --vgg_weights errors showed torch's multi-line text without naming the cause."""
    from model import FeatureExtractor, VGGWeightsError
    path = tmp_path / 'vgg.pth'
    torch.save(tiny(), path)  # a whole module: pickled Python objects
    with pytest.raises(VGGWeightsError) as e:
        FeatureExtractor(str(path))
    text = str(e.value)
    assert str(path) in text and 'model.Generator' in text and '\n' not in text, text


def test_evaluate_scale_from_the_first_weight_is_not_called_a_flag(hr_dir, tmp_path, capsys):
    """14: without --upscale_factor, a second file of another scale was said to disagree with
    '--upscale_factor N was asked for'."""
    x2 = tmp_path / 'x2.pth'
    utils.save_weights(tiny(2), str(x2))
    x4 = tmp_path / 'x4.pth'
    utils.save_weights(tiny(4), str(x4))
    rc, _, err = run_main(evaluate.main, ['--data', hr_dir, '--weight', f'A={x2}',
                                          '--weight', f'B={x4}', '--metrics', 'psnr'], capsys)
    line = one_error(err)
    assert rc == 1 and '--upscale_factor 2 was asked' not in line and 'first --weight' in line


# ---------------------------------------------------------------------------------------------
# 17. flags that would be ignored are said; warnings are one line each
# ---------------------------------------------------------------------------------------------

def test_weight_psnr_without_strength_is_said(weights, photo, hr_dir, tmp_path, capsys):
    """17: --weight_psnr without --strength was ignored silently."""
    rc, _, err = run_main(test_image.main, ['--image', photo, '--weight', weights,
                                            '--weight_psnr', weights, '--out_dir', tmp_path],
                          capsys)
    assert rc == 0 and 'warning: --weight_psnr is used only with --strength' in err, err
    rc, _, err = run_main(evaluate.main, ['--data', hr_dir, '--weight', weights,
                                          '--weight_psnr', weights, '--metrics', 'psnr'], capsys)
    assert rc == 0 and 'warning: --weight_psnr is used only with --strength' in err, err


def test_dp_on_the_cpu_is_said(hr_dir, capsys):
    """17: --dp without a GPU was ignored silently."""
    args = train.get_args(['--trainset_dir', str(hr_dir), '--dp'])
    ran = []
    train.launch(args, lambda a, rt: ran.append(rt))
    err = capsys.readouterr().err
    assert ran and 'warning: --dp' in err and 'CPU' in err and err.count('\n') == 1


def test_python_warnings_are_one_line_each(weights, photo, tmp_path, capsys, monkeypatch):
    """17: UserWarnings printed their source line under them."""
    real = utils.load_photo  # what process_image reads a photo with

    def noisy(*args, **kwargs):
        warnings.warn('something odd\nin two lines', UserWarning)
        return real(*args, **kwargs)
    monkeypatch.setattr(utils, 'load_photo', noisy)
    rc, _, err = run_main(test_image.main, ['--image', photo, '--weight', weights,
                                            '--out_dir', tmp_path], capsys)
    said = [line for line in err.splitlines() if 'something odd' in line]
    assert rc == 0 and len(said) == 1 and 'warnings.warn' not in err, err
    assert said[0].startswith('warning: something odd\\nin two lines (UserWarning, ')


def test_video_out_of_memory_names_the_video(weights, tmp_path, capsys, monkeypatch):
    """8: in test_video.py, out of CPU memory is one line naming the video."""
    import test_video
    from test_test_video import make_video
    clip = tmp_path / 'c.mp4'
    make_video(clip, n=2, audio=False)

    def forward(*a, **k):
        raise RuntimeError(CPU_OOM)
    monkeypatch.setattr(utils, 'tiled_forward', forward)
    out = tmp_path / 'out'
    rc, _, err = run_main(test_video.main, ['--video', clip, '--weight', weights, '--out_dir',
                                            out], capsys)
    line = one_error(err)
    assert rc == 1 and str(clip) in line and 'out of memory' in line and '--tile' in line
    assert list(out.iterdir()) == []


def test_test_image_refuses_to_overwrite_an_input(weights, photo, tmp_path, capsys):
    """2: test_image.py could write sr_NAME over an input of the same run."""
    folder = tmp_path / 'a'
    folder.mkdir()
    (folder / 'a.png').write_bytes(photo.read_bytes())
    (folder / 'sr_a.png').write_bytes(photo.read_bytes())
    before = (folder / 'sr_a.png').read_bytes()
    rc, _, err = run_main(test_image.main, ['--image', folder, '--weight', weights,
                                            '--out_dir', tmp_path], capsys)
    line = one_error(err)
    assert rc == 2 and 'sr_a.png' in line and 'refusing to overwrite' in line, err
    assert (folder / 'sr_a.png').read_bytes() == before


def test_ctrl_c_in_preparation_stops_the_workers_quietly(tmp_path):
    """9: Ctrl-C during `python utils.py` printed a traceback from every worker, and killed
    workers left .tmp_* files."""
    rng = np.random.default_rng(0)
    src, out = tmp_path / 'hr', tmp_path / 'sub'
    src.mkdir()
    for i in range(12):  # noise: slow to compress, so the run is still going when stopped
        Image.fromarray(rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(
            src / f'{i}.png', compress_level=0)
    p = subprocess.Popen([sys.executable, 'utils.py', '--input', src, '--output', out,
                          '--workers', '2'], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.glob('*.png'))) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and 'Traceback' not in err, err
    assert [line for line in err.splitlines() if 'error' in line] == ['error: interrupted']
    assert not list(out.glob('.tmp_*'))


def test_fifo_as_weights_is_named_by_kind(photo, tmp_path, capsys):
    """10, 15: a FIFO as --weight was 'file not found' (and torch.load would wait on it)."""
    fifo = tmp_path / 'w.pth'
    os.mkfifo(fifo)
    rc, _, err = run_main(test_image.main, ['--image', photo, '--weight', fifo, '--out_dir',
                                            tmp_path / 'out'], capsys)
    assert rc == 2 and 'not a regular file: FIFO' in one_error(err)
