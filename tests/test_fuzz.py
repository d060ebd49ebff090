"""Mangled image files fed to test_image.py: a clean one-line ImageError or a result, never
another exception, a traceback or a hang."""
import io
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import test_image
import utils
from model import Generator

ROOT = Path(__file__).resolve().parents[1]


def encoded(fmt: str) -> bytes:
    from skimage import data
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()[100:116, 150:170]).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {'png': encoded('PNG'), 'jpg': encoded('JPEG')}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return utils.inference_model(Generator(2, num_blocks=1, channels=8),
                                       torch.device('cpu'))


@st.composite
def mangled(draw):
    """(extension, bytes): a valid PNG or JPEG with some bytes changed and maybe cut short."""
    ext = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[ext])
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return ext, bytes(data)


class Hang(Exception):
    pass


def alarm(signum, frame):
    raise Hang('no answer within 60 s')


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True,  # hangs: the 60 s alarm below
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mangled())
def test_mangled_file_gives_clean_error_or_result(model, tmp_path, case):
    ext, data = case
    path = tmp_path / f'fuzz.{ext}'
    path.write_bytes(data)
    opts = utils.PhotoOptions(scale=2, out_dir=str(tmp_path / 'out'))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    try:
        result = utils.process_image(str(path), model, opts)
    except utils.ImageError as e:
        msg = str(e)
        assert msg.startswith(f'{path}: ') and '\n' not in msg and len(msg) < 400
    else:
        w, h = result['in_size']
        assert result['out_size'] == (2 * w, 2 * h)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_cli_prints_no_traceback(tmp_path):
    """Several kinds of damage in one folder run, by subprocess."""
    torch.manual_seed(0)
    utils.save_weights(Generator(2, num_blocks=1, channels=8), str(tmp_path / 'w.pth'))
    src = tmp_path / 'in'
    src.mkdir()
    rng = np.random.default_rng(0)
    for i, (ext, data) in enumerate(sorted(SEEDS.items()) * 2):
        data = np.frombuffer(data, dtype=np.uint8).copy()
        cut = len(data) // (2 + i)
        data[rng.integers(0, cut, 4)] = rng.integers(0, 256, 4)
        (src / f'{i}.{ext}').write_bytes(data[:cut].tobytes())
    res = subprocess.run([sys.executable, str(ROOT / 'test_image.py'), '--image', str(src),
                          '--weight', str(tmp_path / 'w.pth'), '--out_dir', str(tmp_path / 'o')],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert 'Traceback' not in res.stdout + res.stderr
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if not line.endswith('failed')]
    assert errors and all(line.startswith(f'error: {src}/') for line in errors)
