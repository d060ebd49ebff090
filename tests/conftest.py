"""Helpers the test files share: the repository root, small natural images, a generator that
behaves like a trained one, a script's main() run in-process, one-line error checks, and what
a training run leaves behind (history, checkpoints). Test files import them by name:
`from conftest import natural, run_main`; the one_thread fixture pins torch to one thread."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model import Generator

ROOT = Path(__file__).resolve().parents[1]


def benchmark_set(name: str, *files: str) -> Path:
    """A real benchmark folder (Set5, Set14 ...) for the tests that tie the metrics to published
    numbers: $SRGAN_BENCHMARKS/NAME when that variable is set (CI sets it, so the folder or a
    file in it missing FAILS the test), else data/NAME as `python scripts/download_data.py
    benchmarks` leaves it (missing: the test is skipped)."""
    root = os.environ.get('SRGAN_BENCHMARKS')
    folder = Path(root or ROOT / 'data') / name
    missing = [str(folder / f) for f in files if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        what = ', '.join(missing) if folder.is_dir() else str(folder)
        if root:
            pytest.fail(f'SRGAN_BENCHMARKS is set but {what} is missing')
        pytest.skip(f'{what} not present (python scripts/download_data.py benchmarks, or set '
                    'SRGAN_BENCHMARKS)')
    return folder


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread for a module's tests: the machine is shared, and resumes are compared
    bit for bit (use with pytestmark = pytest.mark.usefixtures('one_thread'))."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Images and networks
# ---------------------------------------------------------------------------------------------

def natural(h: int, w: int, top: int = 100, left: int = 150) -> np.ndarray:
    """An h x w crop of skimage's astronaut photo (uint8 RGB): natural texture, no files."""
    from skimage import data
    return data.astronaut()[top:top + h, left:left + w]


def sane_generator(scale: int, num_blocks: int = 1, channels: int = 16, seed: int = 0):
    """A random generator with weights scaled so that it behaves like a trained one: its
    output is a nearest-neighbour upscale of the input plus small perturbations from every
    layer (so the whole receptive field matters, but outputs stay in range)."""
    torch.manual_seed(seed)
    g = Generator(scale, num_blocks, channels)
    with torch.no_grad():
        for block in g.body:
            block.conv2.weight.mul_(0.1)
        g.body_tail[0].weight.mul_(0.1)
        for bn in [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]:
            bn.running_mean.uniform_(-0.05, 0.05)
            bn.running_var.uniform_(0.8, 1.25)
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.uniform_(-0.05, 0.05)
        head = g.head[0]
        head.weight[:3] = 0
        head.bias[:3] = 0
        for c in range(3):  # channels 0-2 carry the RGB input ...
            head.weight[c, c, 4, 4] = 1
        for up in g.upsample:  # ... through each sub-pixel upsampler (nearest neighbour) ...
            up.conv.weight[:12] = 0
            up.conv.bias[:12] = 0
            for c in range(3):
                up.conv.weight[4 * c:4 * c + 4, c, 1, 1] = 1
        g.tail.weight.mul_(0.1)  # ... to the output
        g.tail.bias.zero_()
        for c in range(3):
            g.tail.weight[c, :3] = 0
            g.tail.weight[c, c, 4, 4] = 1
    return g.eval()


# ---------------------------------------------------------------------------------------------
# Running scripts
# ---------------------------------------------------------------------------------------------

def run_main(main, argv: list, capsys) -> tuple:
    """A script's main() in this process: (exit code, stdout, stderr). argparse's SystemExit
    becomes its code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(err: str) -> str:
    """The one 'error: ' line on stderr, checked: no traceback, no other line about an error
    (progress bars and warnings aside)."""
    assert 'Traceback' not in err, err
    lines = [line.strip() for line in err.replace('\r', '\n').splitlines() if line.strip()]
    assert lines and lines[-1].startswith('error: '), err
    assert sum('error' in line for line in lines) == 1, err
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# What a training run leaves behind
# ---------------------------------------------------------------------------------------------

def history(out) -> list:
    """history.csv of the run in `out`, one dict per epoch."""
    with open(Path(out) / 'history.csv', newline='') as f:
        return list(csv.DictReader(f))


def load(path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def ckpt(out, epoch: int) -> dict:
    return load(Path(out) / 'checkpoints' / f'checkpoint_epoch_{epoch}.pth')


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_state(a, b) -> bool:
    """Equal nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same_state(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b
