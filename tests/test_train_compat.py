"""Checkpoints stay compatible (issue 20, item 5): a checkpoint written by train.py before its
restructuring (commit f217b77) resumes bit for bit with today's train.py.

tests/data/compat/checkpoint_epoch_1.pth is the old code's epoch-1 checkpoint of a tiny run, and
expected.json the SHA-256 of the generator and Adam state that the old code reached at epoch 2
resuming it (equal to its straight 2-epoch run); make_old_checkpoint.py there says how they
were made. Today's train.py resumes the same checkpoint on the same images for epoch 2 and
must reach the same bits."""
import functools
import importlib.util
import json
import shutil

import pytest

import train
from conftest import ROOT, ckpt
from model import Generator
import test_train

COMPAT = ROOT / 'tests' / 'data' / 'compat'

pytestmark = pytest.mark.usefixtures('one_thread')  # the old run used one thread
data = test_train.data  # the four training images the old run used (a module fixture)


def maker():
    spec = importlib.util.spec_from_file_location('make_old_checkpoint',
                                                  COMPAT / 'make_old_checkpoint.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_old_checkpoint_resumes_bitwise(data, tmp_path, monkeypatch, capsys):
    expected = json.loads((COMPAT / 'expected.json').read_text())
    monkeypatch.setattr(train, 'Generator',
                        functools.partial(Generator, channels=expected['channels']))
    out = tmp_path / 'run'
    (out / 'checkpoints').mkdir(parents=True)
    shutil.copy(COMPAT / 'checkpoint_epoch_1.pth', out / 'checkpoints')
    rc = train.main(['--trainset_dir', str(data / 'train'), '--out_dir', str(out),
                     *expected['flags'], '--resume', '1'])
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert 'CPU threads' not in said.out + said.err  # same conditions as the old run
    state = ckpt(out, 2)
    assert state['epoch'] == 2 and state['opt_g']['param_groups'][0]['lr'] == pytest.approx(1e-5)
    assert maker().digest(state) == expected['epoch_2_sha256']
