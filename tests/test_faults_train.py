"""train.py's part of issue 24 (faults and bad input), each test reproducing a defect first:
resuming an earlier epoch starts a branch (refused, or the later run moved aside), a mode
change on resume, optimiser flags on resume, a full disk at every write, SIGTERM / Ctrl-C,
FIFOs in the training folder. Tiny runs: one residual block, 32 px crops, one iteration."""
import os
import re
import shutil

import pytest

import train
from conftest import ckpt, history, one_error
import test_train

TINY1 = ['--num_blocks', '1', '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '1',
         '--workers', '0', '--log_every', '1000', '--amp', 'off']

pytestmark = pytest.mark.usefixtures('one_thread')
data = test_train.data  # the four-image training set (a module fixture)


def fit(data, out, *extra) -> int:
    return train.main(['--trainset_dir', str(data / 'train'), '--out_dir', str(out), *TINY1,
                       *map(str, extra)])


def epochs(out) -> list:
    return [int(r['epoch']) for r in history(out)]


def checkpoints(out) -> list:
    return sorted(int(re.search(r'\d+', f).group()) for f in os.listdir(out / 'checkpoints'))


# ---------------------------------------------------------------------------------------------
# 1. Resuming an earlier epoch: a new branch, never pruning the run you are in
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def five(data, tmp_path_factory):
    """A run trained to epoch 5, every checkpoint kept."""
    out = tmp_path_factory.mktemp('five') / 'run'
    assert fit(data, out, '--epochs', '5', '--keep', '0') == 0
    return out


@pytest.fixture
def five_copy(five, tmp_path, capsys):
    shutil.copytree(five, tmp_path / 'run')
    capsys.readouterr()
    return tmp_path / 'run'


def test_resuming_an_earlier_epoch_is_refused_without_overwrite_later(data, five_copy, capsys):
    """The issue's repro: trained to 5, resume 1 with --epochs 2 (--keep 3). Pruning kept the
    highest numbers (3, 4, 5 of the old run), deleting the checkpoint just written and the one
    resumed from; --resume latest then jumped back to the abandoned epoch 5."""
    out = five_copy
    rc = fit(data, out, '--epochs', '2', '--resume', '1')
    line = one_error(capsys.readouterr().err)
    assert rc == 2 and '(2, 3, 4, 5)' in line and '--overwrite_later' in line
    assert checkpoints(out) == [1, 2, 3, 4, 5] and epochs(out) == [1, 2, 3, 4, 5]
    # starting afresh in a folder with checkpoints is the same branch problem
    rc = fit(data, out, '--epochs', '1')
    assert rc == 2 and '(1, 2, 3, 4, 5)' in one_error(capsys.readouterr().err)
    assert checkpoints(out) == [1, 2, 3, 4, 5]


def test_overwrite_later_moves_the_abandoned_run_aside(data, five, five_copy, capsys):
    out = five_copy
    assert fit(data, out, '--epochs', '2', '--resume', '1', '--overwrite_later') == 0
    said = capsys.readouterr().out
    aside = [d for d in os.listdir(out) if d.startswith('abandoned_after_epoch_1_')]
    assert len(aside) == 1 and aside[0] in said and 'epochs 2, 3, 4, 5' in said
    aside = out / aside[0]
    assert checkpoints(aside) == [2, 3, 4, 5] and epochs(aside) == [1, 2, 3, 4, 5]
    assert sorted(os.listdir(aside / 'weights')) == [f'G_epoch_{e}.pth' for e in (2, 3, 4, 5)]
    # nothing lost: the old branch's files are the old ones, byte for byte
    for e in (2, 3, 4, 5):
        name = f'checkpoints/checkpoint_epoch_{e}.pth'
        assert (aside / name).read_bytes() == (five / name).read_bytes()
    # history.csv, the checkpoints and --resume latest agree on the new branch
    assert checkpoints(out) == [1, 2] and epochs(out) == [1, 2]
    assert sorted(os.listdir(out / 'weights')) == ['G_epoch_1.pth', 'G_epoch_2.pth']
    assert ckpt(out, 2)['epoch'] == 2 and len(ckpt(out, 2)['history']) == 2
    assert fit(data, out, '--epochs', '3', '--resume', 'latest') == 0
    assert 'checkpoint_epoch_2.pth (epoch 2)' in capsys.readouterr().out
    assert checkpoints(out) == [1, 2, 3] and epochs(out) == [1, 2, 3]


def test_overwrite_later_starting_afresh(data, five_copy, capsys):
    out = five_copy
    assert fit(data, out, '--epochs', '1', '--overwrite_later') == 0
    assert checkpoints(out) == [1] and epochs(out) == [1]
    aside = [d for d in os.listdir(out) if d.startswith('abandoned_after_epoch_0_')]
    assert len(aside) == 1 and checkpoints(out / aside[0]) == [1, 2, 3, 4, 5]


def test_prune_leaves_later_epochs_alone(tmp_path):
    for e in (1, 2, 3, 7, 8):
        (tmp_path / f'checkpoint_epoch_{e}.pth').write_bytes(b'x')
    train.prune(str(tmp_path), r'checkpoint_epoch_(\d+)\.pth', 2, epoch=3)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint_epoch_2.pth', 'checkpoint_epoch_3.pth',
                                            'checkpoint_epoch_7.pth', 'checkpoint_epoch_8.pth']


# ---------------------------------------------------------------------------------------------
# 12 and 14. A checkpoint resumes in its own mode; messages name the file and the cause
# ---------------------------------------------------------------------------------------------

ADV = ['--mode', 'adversarial', '--content_weight', '0']


@pytest.fixture(scope='module')
def small_d():
    """An 8-channel discriminator: the full one makes each checkpoint ~225 MB."""
    import functools

    from model import Discriminator
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, 'Discriminator', functools.partial(Discriminator, channels=8))
        yield


@pytest.fixture(scope='module')
def adversarial_run(data, small_d, tmp_path_factory):
    out = tmp_path_factory.mktemp('adv') / 'run'
    assert fit(data, out, *ADV, '--epochs', '1') == 0
    return out


def test_adversarial_checkpoint_in_generator_mode_needs_drop_discriminator(
        data, adversarial_run, tmp_path, capsys):
    """12: the discriminator was dropped silently and history.csv mixed both modes."""
    out = tmp_path / 'run'
    shutil.copytree(adversarial_run, out)
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '2', '--resume', '1')
    line = one_error(capsys.readouterr().err)
    assert rc == 2 and 'checkpoint_epoch_1.pth' in line and '--drop_discriminator' in line
    assert checkpoints(out) == [1]
    assert fit(data, out, '--epochs', '2', '--resume', '1', '--drop_discriminator') == 0
    assert 'discriminator is dropped' in capsys.readouterr().out
    assert 'discriminator' not in ckpt(out, 2) and ckpt(out, 2)['args']['mode'] == 'generator'


def test_generator_checkpoint_in_adversarial_mode_names_the_file_and_cause(data, small_d,
                                                                          tmp_path, capsys):
    """14: it said "(KeyError: 'opt_d')"."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    capsys.readouterr()
    rc = fit(data, out, *ADV, '--epochs', '2', '--resume', '1')
    line = one_error(capsys.readouterr().err)
    assert rc == 2 and 'checkpoint_epoch_1.pth' in line and 'KeyError' not in line
    assert 'generator checkpoint' in line and '--pretrain' in line


@pytest.mark.parametrize('kind', ['junk', 'shapes'])
def test_vgg_weights_errors_name_the_file(kind, data, small_d, tmp_path, capsys):
    """14: the last line of a torch error, without the file name."""
    import torch
    vgg = tmp_path / 'vgg.pth'
    if kind == 'junk':
        vgg.write_bytes(os.urandom(300))
    else:
        torch.save({'features.0.weight': torch.zeros(3, 3, 3, 3)}, vgg)
    rc = fit(data, tmp_path / 'run', '--mode', 'adversarial', '--vgg_weights', vgg, '--epochs', '1')
    line = one_error(capsys.readouterr().err)
    assert rc == 1 and str(vgg) in line, line
    assert ('corrupt or truncated' if kind == 'junk' else 'size mismatch for 0.weight') in line


# ---------------------------------------------------------------------------------------------
# 13. Optimiser flags given with --resume are applied, and said
# ---------------------------------------------------------------------------------------------

def lrs(state) -> tuple:
    return tuple(state[k]['param_groups'][0]['lr'] for k in ('opt_g', 'opt_d') if k in state)


@pytest.fixture(scope='module')
def two_epochs(data, small_d, tmp_path_factory):
    """An adversarial run of 2 epochs at --lr 1e-4, never stepped down (--lr_step 0)."""
    out = tmp_path_factory.mktemp('two') / 'run'
    assert fit(data, out, *ADV, '--epochs', '2', '--lr_step', '0') == 0
    return out


@pytest.mark.parametrize('flags, expected', [
    ([], (1e-4, 1e-4)),                              # untouched when not given
    (['--lr', '1e-3'], (1e-3, 1e-3)),                # D follows --lr
    (['--lr_d', '5e-4'], (1e-4, 5e-4)),
    (['--lr', '1e-3', '--lr_step', '1'], (1e-4, 1e-4)),  # step passed: 1e-3 / 10
])
def test_optimiser_flags_with_resume_are_applied(flags, expected, data, two_epochs, tmp_path,
                                                 capsys):
    """13: they were ignored without notice (the checkpoint's rates and schedule kept)."""
    out = tmp_path / 'run'
    shutil.copytree(two_epochs, out)
    capsys.readouterr()
    assert fit(data, out, *ADV, '--epochs', '3', '--resume', '2', *flags) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if 'applying' in line]
    assert len(said) == (1 if flags else 0), said
    for flag in flags[::2]:
        assert flag in said[0]
    assert lrs(ckpt(out, 3)) == pytest.approx(expected, rel=1e-9)
    row = history(out)[2]
    assert (float(row['lr_g']), float(row['lr_d'])) == pytest.approx(expected, rel=1e-5)
    assert ckpt(out, 3)['args']['lr_step'] == (1 if '--lr_step' in flags else 0)


# ---------------------------------------------------------------------------------------------
# 7. A full disk at any write: one line, exit 1, the previous checkpoint kept
# ---------------------------------------------------------------------------------------------

def test_full_disk_writing_validation_samples_is_one_line(data, tmp_path, monkeypatch, capsys):
    """7: a traceback; the sample images were written outside the full-disk handling."""
    import errno

    import torch
    from PIL import Image
    out = tmp_path / 'run'
    valid = ['--validset_dir', data / 'valid']
    assert fit(data, out, '--epochs', '1', *valid) == 0
    before = (out / 'checkpoints' / 'checkpoint_epoch_1.pth').read_bytes()
    real = Image.Image.save

    def full(img, fp, *a, **k):
        if 'output' in str(fp):  # the validation samples only
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(img, fp, *a, **k)
    monkeypatch.setattr(Image.Image, 'save', full)
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '2', '--resume', 'latest', *valid)
    line = one_error(capsys.readouterr().err)
    assert rc == 1 and 'no space left writing' in line and '_sr.png' in line, line
    assert checkpoints(out) == [1] and epochs(out) == [1]
    assert (out / 'checkpoints' / 'checkpoint_epoch_1.pth').read_bytes() == before
    assert not list(out.rglob('.tmp_*'))
    assert torch.load(out / 'checkpoints' / 'checkpoint_epoch_1.pth', weights_only=True)['epoch'] == 1


@pytest.mark.parametrize('what', ['history.csv', 'G_epoch_2.pth', 'checkpoint_epoch_2.pth'])
def test_full_disk_at_every_other_write_is_one_line(what, data, tmp_path, monkeypatch, capsys):
    import errno

    import utils
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    real = utils.atomic_write

    def full(path, write):
        if os.path.basename(path) == what:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, write)
    monkeypatch.setattr(utils, 'atomic_write', full)
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '2', '--resume', 'latest')
    line = one_error(capsys.readouterr().err)
    assert rc == 1 and f'no space left writing {out}' in line and what in line, line
    assert 1 in checkpoints(out) and epochs(out) == [1]


# ---------------------------------------------------------------------------------------------
# 9. Ctrl-C and SIGTERM stop cleanly; 10. a FIFO in the training folder does not hang
# ---------------------------------------------------------------------------------------------

def test_ctrl_c_during_a_write_is_one_line_130_and_leaves_no_temporary(data, tmp_path,
                                                                       monkeypatch, capsys):
    import torch
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    real = torch.save

    def interrupted(obj, f, *a, **k):  # Ctrl-C half-way through writing checkpoint 2
        real(obj, f, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', interrupted)
    capsys.readouterr()
    rc = fit(data, out, '--epochs', '2', '--resume', 'latest')
    line = one_error(capsys.readouterr().err)
    assert rc == 130 and line.startswith('error: interrupted'), line
    assert not list(out.rglob('.tmp_*')) and checkpoints(out) == [1] and epochs(out) == [1]


def test_sigterm_stops_training_cleanly(data, tmp_path):
    """9: SIGTERM killed the process where it stood (temporary files left, no message)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    out = tmp_path / 'run'
    argv = [sys.executable, str(ROOT / 'train.py'), '--trainset_dir', str(data / 'train'),
            '--out_dir', str(out), *TINY1, '--iters_per_epoch', '20', '--epochs', '1000']
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        deadline = time.time() + 120
        while not (out / 'checkpoints' / 'checkpoint_epoch_1.pth').exists():
            assert p.poll() is None and time.time() < deadline, p.stderr.read()
            time.sleep(0.1)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert one_error(err).startswith('error: interrupted')
    assert not list(out.rglob('.tmp_*'))
    # history.csv never lists an epoch without its checkpoint, which loads
    last = checkpoints(out)[-1]
    assert epochs(out)[-1] in (last, last - 1) and ckpt(out, last)['epoch'] == last


def test_a_tmp_csv_left_by_a_kill_is_removed_at_the_next_start(data, tmp_path):
    """9: a kill during a history.csv write left .tmp_*.csv in --out_dir for good."""
    out = tmp_path / 'run'
    assert fit(data, out, '--epochs', '1') == 0
    (out / 'output' / '1').mkdir(parents=True)
    stale = [out / '.tmp_k1ll3d.csv', out / 'output' / '1' / '.tmp_x.png']
    for f in stale:
        f.write_text('epoch,loss_g\n1,')
    assert fit(data, out, '--epochs', '2', '--resume', 'latest') == 0
    assert not any(f.exists() for f in stale)


def test_a_fifo_in_the_training_folder_is_reported_not_waited_on(data, tmp_path, capsys):
    """10: a FIFO named *.png blocked dataset building forever."""
    import threading
    import warnings
    train_dir = tmp_path / 'train'
    shutil.copytree(data / 'train', train_dir)
    os.mkfifo(train_dir / 'fifo.png')
    result = []
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        t = threading.Thread(target=lambda: result.append(train.main(
            ['--trainset_dir', str(train_dir), '--out_dir', str(tmp_path / 'run'), *TINY1,
             '--validset_dir', str(train_dir), '--epochs', '1'])), daemon=True)
        t.start()
        t.join(120)
    if t.is_alive():  # unblock the reader so that the process can end, then fail
        with open(train_dir / 'fifo.png', 'wb'):
            pass
        pytest.fail('train.py blocked on the FIFO')
    assert result == [0]
    # train.py shows a warning as one line on stderr (utils.show_warning)
    said = [line for line in capsys.readouterr().err.splitlines()
            if 'not a regular file' in line]
    assert said and said[0].startswith('warning: ') and 'fifo.png' in said[0]


@pytest.mark.slow
def test_sigterm_to_a_spawned_ddp_job_stops_every_process(data, tmp_path):
    """9: SIGTERM to `train.py --ddp --nproc 2` left its workers training (the parent then
    waited for them, or died and left them behind)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    out = tmp_path / 'run'
    argv = [sys.executable, str(ROOT / 'train.py'), '--trainset_dir', str(data / 'train'),
            '--out_dir', str(out), *TINY1, '--batch_size', '1', '--iters_per_epoch', '20',
            '--epochs', '100000', '--ddp', '--nproc', '2']
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'}, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (out / 'history.csv').exists():
            assert p.poll() is None and time.time() < deadline, p.stderr.read()
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        t0 = time.time()
        err = p.communicate(timeout=90)[1]
        assert time.time() - t0 < 90
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err[-2000:]
    assert 'error: interrupted' in err and 'Traceback' not in err, err[-2000:]
    assert not list(out.rglob('.tmp_*'))
    # no worker left behind in the job's session
    time.sleep(1)
    left = subprocess.run(['pgrep', '-a', '-s', str(p.pid)], capture_output=True,
                          text=True).stdout.splitlines()
    assert not [line for line in left if 'train.py' in line or 'spawn_main' in line], left


def test_python_warnings_in_training_are_one_line_each(monkeypatch, capsys):
    """Issue 24, 17: a Python or PyTorch warning during a run is one line, not its source."""
    import warnings

    def noisy(args, run):
        warnings.warn('something odd\nin two lines', UserWarning)
    monkeypatch.setattr(train, 'launch', noisy)
    assert train.main(['--trainset_dir', '.', '--validset_dir', '.']) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if 'something odd' in line]
    assert said == [said[0]] and said[0].startswith('warning: something odd\\nin two lines '
                                                    '(UserWarning, ')
    assert 'warnings.warn' not in err
