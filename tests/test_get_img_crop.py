"""get_img_crop.py: boxes from --box and --coords on images of two sizes, the outputs, bad
arguments, and the interactive window driven for real on a virtual X screen."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import get_img_crop as gic
import utils
from conftest import ROOT, run_main


@pytest.fixture
def pair(tmp_path):
    """An LR image and its x4 'SR' (a 4x nearest enlargement), in different folders."""
    from skimage import data
    lr = data.astronaut()[120:152, 180:220]                 # 40x32
    (tmp_path / 'lr').mkdir()
    (tmp_path / 'sr').mkdir()
    Image.fromarray(lr).save(tmp_path / 'lr' / 'x.png')
    Image.fromarray(lr.repeat(4, 0).repeat(4, 1)).save(tmp_path / 'sr' / 'x.png')  # 160x128
    return tmp_path / 'lr' / 'x.png', tmp_path / 'sr' / 'x.png'


def run(argv, capsys) -> tuple:
    return run_main(gic.main, argv, capsys)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def check_outputs(lr: Path, sr: Path, boxes: list) -> None:
    """Crops of the same region from both images, framed; annotated copies; the JSON."""
    b = utils.CROP_BORDER
    for i, (x, y, w, h) in enumerate(boxes):
        small = pixels(lr.parent / f'{i}_crop_x.png')
        big = pixels(sr.parent / f'{i}_crop_x.png')
        assert small.shape == (h + 2 * b, w + 2 * b, 3)
        assert big.shape == (4 * h + 2 * b, 4 * w + 2 * b, 3)
        inner_small, inner_big = small[b:-b, b:-b], big[b:-b, b:-b]
        assert np.array_equal(inner_small, pixels(lr)[y:y + h, x:x + w])
        assert np.array_equal(inner_big, inner_small.repeat(4, 0).repeat(4, 1))  # same region
        color = tuple(int(utils.PALETTE[i][k:k + 2], 16) for k in (1, 3, 5))
        assert tuple(small[0, 0]) == color and tuple(big[-1, -1]) == color
    for img in (lr, sr):
        assert pixels(img.parent / 'annotated_x.png').shape == pixels(img).shape


def test_boxes_scaled_between_sizes(pair, tmp_path, capsys):
    lr, sr = pair
    rc, out, err = run(['--image', lr, sr, '--box', '2,3,10,8', '--box', '20,16,12,12',
                        '--labels', 'Low Res,SRGAN'], capsys)
    assert rc == 0, err
    check_outputs(lr, sr, [(2, 3, 10, 8), (20, 16, 12, 12)])
    saved = json.loads((lr.parent / 'x_coords.json').read_text())
    assert saved['size'] == [40, 32]
    assert [b['box'] for b in saved['boxes']] == [[2, 3, 10, 8], [20, 16, 12, 12]]
    assert [b['color'] for b in saved['boxes']] == list(utils.PALETTE[:2])
    # one comparison picture per box, next to the first image: two columns at the size of
    # the largest patch (the SR one), enlarged by a whole factor to at least MIN_DISPLAY wide
    with Image.open(lr.parent / 'comparison_0.png') as c0:  # 40x32 in SR, x4
        assert c0.size == (2 * 160 + 3 * utils.GAP, 128 + utils.LABEL_HEIGHT + 2 * utils.GAP)
    with Image.open(lr.parent / 'comparison_1.png') as c1:  # 48x48 in SR, x4
        assert c1.size == (2 * 192 + 3 * utils.GAP, 192 + utils.LABEL_HEIGHT + 2 * utils.GAP)


def test_coords_file_reused_from_the_other_size(pair, tmp_path, capsys):
    lr, sr = pair
    assert run(['--image', lr, '--box', '4,4,16,12'], capsys)[0] == 0
    coords = lr.parent / 'x_coords.json'
    for f in lr.parent.glob('*crop*'):
        f.unlink()
    # the SR image first: the boxes, saved in LR pixels, are scaled up for it
    rc, out, err = run(['--image', sr, lr, '--coords', coords], capsys)
    assert rc == 0, err
    check_outputs(lr, sr, [(4, 4, 16, 12)])
    with Image.open(sr.parent / 'comparison_0.png') as c:  # 64x48 in SR, x3
        assert c.size == (2 * 64 * 3 + 3 * utils.GAP, 48 * 3 + utils.LABEL_HEIGHT + 2 * utils.GAP)


def test_scale_box():
    assert utils.scale_box((2, 3, 10, 8), (40, 32), (160, 128)) == (8, 12, 40, 32)
    assert utils.scale_box((8, 12, 40, 32), (160, 128), (40, 32)) == (2, 3, 10, 8)
    assert utils.scale_box((0, 0, 1, 1), (160, 128), (40, 32)) == (0, 0, 1, 1)  # never empty


@pytest.mark.parametrize('argv, problem', [
    (['--box', '1,2,3'], '--box 1,2,3: expected X,Y,W,H'),
    (['--box', '30,20,20,20'], '--box 30,20,20,20: box 30,20,20,20 is not inside the 40x32'),
    (['--box', '1,1,4,4', '--coords', 'c.json'], 'either --coords or --box'),
    (['--coords', 'nowhere.json'], 'nowhere.json: file not found'),
    (['--box', '1,1,4,4', '--labels', 'a,b,c'], '--labels gives 3 label(s) for 1 image(s)'),
])
def test_bad_arguments(pair, capsys, argv, problem):
    rc, _, err = run(['--image', pair[0]] + argv, capsys)
    assert rc != 0 and problem in err and err.startswith('error: ')


def test_bad_coords_file_and_pickle(pair, tmp_path, capsys):
    (tmp_path / 'c.json').write_text('{"size": [40, 32], "boxes": [{"box": [1, 2]}]}')
    rc, _, err = run(['--image', pair[0], '--coords', tmp_path / 'c.json'], capsys)
    assert rc == 1 and 'not a coords file' in err
    import pickle
    (tmp_path / 'c.pkl').write_bytes(pickle.dumps([(1, 2, 3, 4)]))  # the original's format
    rc, _, err = run(['--image', pair[0], '--coords', tmp_path / 'c.pkl'], capsys)
    assert rc == 1 and 'not a JSON coords file' in err


def test_bad_image_skipped(pair, tmp_path, capsys):
    bad = tmp_path / 'bad.png'
    bad.write_text('nope')
    rc, _, err = run(['--image', pair[0], bad, pair[1], '--box', '0,0,8,8'], capsys)
    assert rc == 1 and f'error: {bad}: not an image' in err
    assert (pair[1].parent / '0_crop_x.png').exists()
    assert run(['--image', bad, '--box', '0,0,8,8'], capsys)[0] == 1


def test_no_display_no_boxes(pair):
    env = {k: v for k, v in os.environ.items() if k not in ('DISPLAY', 'WAYLAND_DISPLAY')}
    res = subprocess.run([sys.executable, str(ROOT / 'get_img_crop.py'), '--image', str(pair[0])],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 2  # the command cannot run here as given (README "Conventions")
    assert 'pass --box X,Y,W,H' in res.stderr and '--coords' in res.stderr
    assert 'Traceback' not in res.stderr


# ---------------------------------------------------------------------------------------------
# The interactive window, for real
# ---------------------------------------------------------------------------------------------

def free_display() -> int:
    for n in range(90, 190):
        if not os.path.exists(f'/tmp/.X{n}-lock') and not os.path.exists(f'/tmp/.X11-unix/X{n}'):
            return n
    pytest.skip('no free X display number')


@pytest.fixture
def display():
    """DISPLAY of a fresh Xvfb screen (1280x1024), or of the session when Xvfb is missing."""
    if not shutil.which('Xvfb'):
        if os.environ.get('DISPLAY'):
            yield os.environ['DISPLAY']
            return
        pytest.skip('neither a display nor Xvfb')
    n = free_display()
    xvfb = subprocess.Popen(['Xvfb', f':{n}', '-screen', '0', '1280x1024x24', '-nolisten', 'tcp'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(f'/tmp/.X11-unix/X{n}'):
        if time.time() > deadline or xvfb.poll() is not None:
            xvfb.kill()
            pytest.skip('Xvfb did not start')
        time.sleep(0.05)
    yield f':{n}'
    xvfb.terminate()
    xvfb.wait(timeout=10)


def xdotool(*args, env):
    return subprocess.run(['xdotool', *map(str, args)], env=env, check=True, timeout=30,
                          capture_output=True, text=True).stdout


def open_window(images, env):
    """Start get_img_crop.py on `images` without boxes; returns (process, window id) once
    its selection window is mapped."""
    proc = subprocess.Popen([sys.executable, str(ROOT / 'get_img_crop.py'), '--image',
                             *map(str, images)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wid = xdotool('search', '--sync', '--onlyvisible', '--name', gic.WINDOW_TITLE,
                      env=env).split()[0]
    except BaseException:
        proc.kill()
        raise
    time.sleep(0.3)  # let Tk finish mapping before events arrive
    return proc, wid


@pytest.mark.skipif(not shutil.which('xdotool'), reason='xdotool is not installed')
def test_interactive_selection(pair, display):
    lr, sr = pair
    env = {**os.environ, 'DISPLAY': display}
    proc, wid = open_window([lr, sr], env)
    try:
        # the 40x32 image on a 1280x1024 screen is shown enlarged, at the window's top left
        scale = gic.window_scale((40, 32), (1280, 1024))
        assert scale == 4
        xdotool('mousemove', '--window', wid, 8 * scale, 4 * scale, env=env)
        xdotool('mousedown', '1', env=env)
        xdotool('mousemove', '--window', wid, 20 * scale, 14 * scale, env=env)
        xdotool('mousemove', '--window', wid, 28 * scale, 20 * scale, env=env)
        xdotool('mouseup', '1', env=env)
        time.sleep(0.2)
        xdotool('key', 'Return', env=env)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'shown at scale 4' in out
    saved = json.loads((lr.parent / 'x_coords.json').read_text())
    assert [b['box'] for b in saved['boxes']] == [[8, 4, 20, 16]]
    assert saved['size'] == [40, 32]
    check_outputs(lr, sr, [(8, 4, 20, 16)])


@pytest.mark.skipif(not shutil.which('xdotool'), reason='xdotool is not installed')
def test_interactive_escape_cancels(pair, display):
    env = {**os.environ, 'DISPLAY': display}
    proc, _ = open_window([pair[0]], env)
    try:
        xdotool('key', 'Escape', env=env)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and 'cancelled' in err
    assert not (pair[0].parent / 'x_coords.json').exists()
