"""Two layers of requirements: requirements.txt runs the main job (train.py, test_image.py,
evaluate.py, get_img_crop.py); requirements-dev.txt adds the tests and the optional features,
each of which, used without its package, says in one line what to install (exit 2)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import utils
from conftest import ROOT, run_main

MAIN_JOB = ('train', 'test_image', 'evaluate', 'get_img_crop')
LEAN = {'torch', 'torchvision', 'numpy', 'pillow', 'tqdm'}
# what requirements-dev.txt adds that the main job must not import
DEV_ONLY = ('skimage', 'pytest', 'hypothesis', 'xdist', *utils.OPTIONAL_PACKAGES)


def requirement_lines(name: str) -> list:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


def package_name(line: str) -> str:
    for sep in ('==', '~=', '>=', '<='):
        line = line.split(sep)[0]
    return line.strip().lower()


def test_requirements_txt_is_the_lean_set():
    assert {package_name(line) for line in requirement_lines('requirements.txt')} == LEAN


def test_requirements_dev_adds_tests_and_every_optional_package():
    lines = requirement_lines('requirements-dev.txt')
    assert lines[0] == '-r requirements.txt'
    assert {'pytest', 'pytest-xdist', 'hypothesis', 'scikit-image'} <= {package_name(x)
                                                                      for x in lines}
    # the line an error message tells the user to install is the one the file pins
    assert set(utils.OPTIONAL_PACKAGES.values()) <= set(lines)


def test_main_job_runs_without_the_dev_packages(tmp_path):
    """In a fresh interpreter where every dev-only module fails to import (as in a venv made
    from requirements.txt alone), the four scripts import and test_image.py super-resolves a
    photo with the shipped weights."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8)).save(
        tmp_path / 'in.png')
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {DEV_ONLY!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import {', '.join(MAIN_JOB)}
        status = test_image.main(['--image', {str(tmp_path / 'in.png')!r},
                                  '--out_dir', {str(tmp_path / 'out')!r}])
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
        print('status', status, 'loaded', loaded)
        """)
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'status 0 loaded []' in r.stdout
    assert Image.open(tmp_path / 'out' / 'in' / 'sr_in.png').size == (96, 96)


@pytest.mark.parametrize('module', sorted(utils.OPTIONAL_PACKAGES))
def test_require_names_the_package_in_one_line(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import module -> ImportError
    with pytest.raises(utils.UsageError) as err:
        utils.require(module, '--feature')
    message = str(err.value)
    assert '\n' not in message
    assert message == (f"--feature needs the {module} package: python -m pip install "
                       f"'{utils.OPTIONAL_PACKAGES[module]}' (or every optional package: "
                       f"python -m pip install -r requirements-dev.txt)")


def test_require_returns_the_module():
    assert utils.require('numpy', 'x') is np


def missing_message(module, feature):
    return (f"error: {feature} needs the {module} package: python -m pip install "
            f"'{utils.OPTIONAL_PACKAGES[module]}'")


def test_video_without_av_exits_2(monkeypatch, capsys, tmp_path):
    import test_video
    monkeypatch.setattr(test_video, 'av', None)
    monkeypatch.setitem(sys.modules, 'av', None)
    status, out, err = run_main(test_video.main, ['--video', str(tmp_path / 'clip.mp4')],
                                capsys)
    assert status == 2 and err.startswith(missing_message('av', 'test_video.py'))
    assert '\n' not in err.strip()


@pytest.mark.parametrize('module', ['onnx', 'onnxscript', 'onnxruntime'])
def test_export_onnx_without_its_packages_exits_2(monkeypatch, capsys, tmp_path, module):
    sys.path.insert(0, str(ROOT / 'scripts'))
    try:
        import export_onnx
    finally:
        sys.path.remove(str(ROOT / 'scripts'))
    monkeypatch.setitem(sys.modules, module, None)
    status, out, err = run_main(export_onnx.main, ['--weight', ROOT / 'weights' / 'srgan_x4.pth',
                                                   '--output', str(tmp_path / 'g.onnx')], capsys)
    assert status == 2 and err.startswith(missing_message(module, 'scripts/export_onnx.py'))
    assert not (tmp_path / 'g.onnx').exists()


def test_evaluate_lpips_without_lpips_exits_2(monkeypatch, capsys, tmp_path):
    import evaluate
    monkeypatch.setitem(sys.modules, 'lpips', None)
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    status, out, err = run_main(evaluate.main, ['--data', str(tmp_path), '--metrics',
                                                'psnr,lpips'], capsys)
    assert status == 2
    assert err.startswith("error: --metrics lpips: LPIPS needs the lpips package: "
                          "python -m pip install 'lpips==0.1.4'")
