"""scripts/gpu_slot.sh and what it needs: the data pack (pack_slot_data.py: lossless, the
validation split, the size budget), the rehearsal on the CPU (every step of a slot, tiny), and
the check of what comes back (at most 8 files, results.json complete)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import utils
from conftest import ROOT, natural

sys.path.insert(0, str(ROOT / 'scripts'))
import gpu_slot_tools  # noqa: E402
import pack_slot_data  # noqa: E402


@pytest.fixture
def photos(tmp_path):
    """train/A (2 PNG), train/V (4 JPEG: every 2nd is validation), bench/Set5, bench/Set14."""
    for sub, n in (('train/A', 2), ('train/V', 4), ('bench/Set5', 1), ('bench/Set14', 1)):
        (tmp_path / sub).mkdir(parents=True)
        for i in range(n):
            img = Image.fromarray(natural(80, 120, 60 + 40 * i, 40 * i + len(sub)))
            img.save(tmp_path / sub / (f'{i}.jpg' if sub == 'train/V' else f'{i}.png'))
    return tmp_path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def test_pack_is_lossless_and_splits_validation(photos, tmp_path, capsys):
    out = tmp_path / 'slot_data'
    assert pack_slot_data.main(['--train', str(photos / 'train'), '--benchmarks',
                                str(photos / 'bench'), '--out', str(out), '--valid_from', 'V',
                                '--valid_every', '2', '--max_mib', '5']) == 0
    assert sorted(os.listdir(out / 'valid')) == ['0.png', '2.png']
    assert sorted(os.listdir(out / 'train' / 'V')) == ['1.png', '3.png']
    for packed, source in ((out / 'train' / 'A' / '1.png', photos / 'train' / 'A' / '1.png'),
                           (out / 'train' / 'V' / '3.png', photos / 'train' / 'V' / '3.jpg'),
                           (out / 'valid' / '2.png', photos / 'train' / 'V' / '2.jpg')):
        assert np.array_equal(pixels(packed), pixels(source)), packed  # the decoded pixels
    assert (out / 'Set5' / '0.png').read_bytes() == (photos / 'bench/Set5/0.png').read_bytes()
    assert '4 training photos (100% of their pixels' in (out / 'PACKED.txt').read_text()
    assert str(out) in capsys.readouterr().out


def test_pack_crops_every_photo_alike_to_fit(photos, tmp_path):
    """A budget below the photos' size: every training photo is kept, centre-cropped (the
    pixels of the middle of the source), none below --min_side; the total within budget."""
    out = tmp_path / 'slot_data'
    full = sum(f.stat().st_size for f in (photos / 'bench').rglob('*.png'))
    budget = (full + 2 * 4096 + 60_000) / 2 ** 20
    assert pack_slot_data.main(['--train', str(photos / 'train'), '--benchmarks',
                                str(photos / 'bench'), '--out', str(out), '--valid_from', 'V',
                                '--valid_every', '2', '--max_mib', f'{budget:.4f}',
                                '--min_side', '32']) == 0
    total = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    assert total <= budget * 2 ** 20
    packed = pixels(out / 'train' / 'A' / '0.png')
    source = pixels(photos / 'train' / 'A' / '0.png')
    h, w = packed.shape[:2]
    assert 32 <= h < 80 and 32 <= w < 120
    top, left = (80 - h) // 2, (120 - w) // 2
    assert np.array_equal(packed, source[top:top + h, left:left + w])
    assert len(list((out / 'train').rglob('*.png'))) == 4


def test_pack_bad_input_is_one_line_exit_2(photos, tmp_path, capsys):
    assert pack_slot_data.main(['--train', str(tmp_path / 'nope'), '--benchmarks',
                                str(photos / 'bench'), '--out', str(tmp_path / 'o')]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(err) == 1 and 'nope' in err[0]
    assert not (tmp_path / 'o').exists()


def test_parse_bench_reads_images_per_second():
    text = ('generator   (b) default         batch  16  precision torch.bfloat16     '
            '12.00 it/s     192.0 images/s   0.120 TFLOP/s (0.9% of 989 peak bf16)\n'
            'adversarial (c) new path        batch  64  precision torch.bfloat16      '
            '3.00 it/s     192.5 images/s   1.000 TFLOP/s\n')
    assert gpu_slot_tools.parse_bench(text) == {('generator', 16): {'b': 192.0},
                                                ('adversarial', 64): {'c': 192.5}}


def test_check_names_what_would_not_come_back(tmp_path):
    for i in range(9):
        (tmp_path / f'w{i}.pth').write_bytes(b'x')
    (tmp_path / 'bad name.txt').write_text('x')
    problems = gpu_slot_tools.check(str(tmp_path))
    assert any('10 files; at most 8' in p for p in problems)
    assert any(p.startswith('bad name.txt: not a plain file with a plain name') for p in problems)
    assert {'results.json: missing', 'slot.log: missing', 'bench_train.txt: missing'} \
        <= set(problems)


@pytest.mark.slow
def test_cpu_rehearsal_brings_back_what_a_slot_would(tmp_path):
    """CPU_REHEARSAL=1 bash scripts/gpu_slot.sh: every step with 2-block networks and 32-px
    crops, the x4 SRResNet fast path made to fail; its own check passes (exit 0), and $OUT holds
    results.json with every run, the fallback, the evaluation of the produced and the stand-in
    shipped files, the bench's output, the log, and loadable weights, 8 files at most."""
    out = tmp_path / 'out'
    env = dict(os.environ, CPU_REHEARSAL='1', OUT=str(out), PYTHON=sys.executable,
               SLOT_WORK=str(tmp_path / 'work'))
    t0 = time.time()
    p = subprocess.run(['bash', 'scripts/gpu_slot.sh'], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    wall = time.time() - t0
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert 'holds what a slot brings back' in p.stdout
    assert wall < 180, f'the rehearsal took {wall:.0f} s'
    names = sorted(os.listdir(out))
    assert len(names) <= 8 and {'results.json', 'bench_train.txt', 'slot.log'} <= set(names)
    r = json.loads((out / 'results.json').read_text())
    assert set(r['runs']) == {'x4_srgan_allfour', 'x4_srgan_paper', 'x4_srresnet', 'x2_srresnet',
                              'x2_srgan_allfour', 'x8_srresnet', 'x8_srgan_allfour'}
    assert any('x4_srresnet: fast path failed' in n and 'falling back to eager' in n
               for n in r['notes'])
    assert r['runs']['x4_srresnet']['attempts'] == ['x4_srresnet', 'x4_srresnet_eager']
    assert r['runs']['x4_srresnet']['history'], 'the eager restart trained no epoch'
    methods = {(e['scale'], e['method']) for e in r['evaluation']}
    assert {(4, 'shipped_srresnet_x4'), (4, 'shipped_srgan_x4'), (2, 'Bicubic'),
            (8, 'HR')} <= methods
    assert all('grid' in e for e in r['evaluation'])
    assert r['pytest_cuda']['status'] == 5 or 'skipped' in r['pytest_cuda']['summary']
    for name in r['copied']:
        assert utils.load_generator(str(out / name)).config['num_blocks'] == 2


def test_real_slot_commands_parse_and_follow_the_plan(tmp_path):
    """What a real slot would launch, checked here where no GPU is: every stage's train.py
    flags parse; 16 blocks on CUDA, crops 96 (192 at x8), the recipes of the plan, a time
    limit inside the window, and the fast path only where asked."""
    import train
    s = gpu_slot_tools.Settings(rehearsal=False)
    runs = gpu_slot_tools.plan_runs(None, 'weights')
    assert [[st.name for st in r] for r in runs] == [
        ['x4_srgan_allfour'], ['x4_srgan_paper'], ['x4_srresnet'],
        ['x2_srresnet', 'x2_srgan_allfour'], ['x8_srresnet', 'x8_srgan_allfour']]
    for run in runs:
        for st in run:
            pretrain = st.pretrain() if callable(st.pretrain) else st.pretrain
            assert pretrain == f'weights/srresnet_x{st.scale}.pth'  # nothing trained here
            for fast in (False, True):
                argv, iters, limit = gpu_slot_tools.train_argv(
                    s, st, 'slot_data', str(tmp_path / st.name), pretrain, 300.0, fast,
                    s.guess[(st.mode, st.batch(s))], 5)
                args = train.get_args(argv)
                assert args.cuda and args.num_blocks == 16 and args.cache
                assert args.crop_size == (192 if st.scale == 8 else 96)
                assert args.batch_size == (16 if st.mode == 'adversarial' else 64)
                assert args.time_limit * 60 == pytest.approx(limit, abs=0.1) and 0 < limit < 280
                assert args.compile == fast
                assert (args.compile_mode == 'reduce-overhead') == fast
                if st.mode == 'adversarial':
                    assert args.content_weight == 0 and args.lr == 1e-4 and args.lr_step == 0
                    all_four = st.name.endswith('allfour')
                    assert (args.gan_loss == 'ragan') == all_four == args.spectral_norm
                    assert args.ema == (0.99 if all_four else 0)
                    assert args.lr_d == (2.5e-5 if all_four else None)
                else:
                    assert (args.lr, args.lr_step, args.ema) == (5e-5, 0, 0.999)
