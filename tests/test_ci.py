""".ci/run: the README's test commands, and the benchmark images found beside the clone; the
reference tests fail, not skip, when SRGAN_BENCHMARKS names a folder without their images."""
import re
import subprocess

import pytest

import conftest
from conftest import ROOT, benchmark_set

CI = (ROOT / '.ci' / 'run').read_text()


def benchmarks_block() -> str:
    """The lines of .ci/run that set SRGAN_BENCHMARKS."""
    m = re.search(r'^if \[ -z "\$\{SRGAN_BENCHMARKS:-\}" \].*?^fi$', CI, re.M | re.S)
    assert m, '.ci/run has no SRGAN_BENCHMARKS block'
    return m.group(0)


def resolve(clone, env_value=None) -> str:
    env = {'PATH': '/usr/bin:/bin'}
    if env_value is not None:
        env['SRGAN_BENCHMARKS'] = env_value
    script = benchmarks_block() + '\necho "${SRGAN_BENCHMARKS:-unset}"\n'
    return subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=clone, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_ci_finds_the_benchmarks_beside_the_clone(tmp_path):
    clone = tmp_path / 'somewhere' / 'clone'
    clone.mkdir(parents=True)
    assert resolve(clone) == 'unset'  # no benchmarks folder beside it: the tests use data/
    shared = tmp_path / 'somewhere' / 'shared' / 'data' / 'benchmarks'
    shared.mkdir(parents=True)
    assert resolve(clone) == str(shared)  # an absolute path, wherever the clone is
    assert resolve(clone, '/elsewhere') == '/elsewhere'  # a value already set is kept


def test_ci_runs_what_the_readme_says():
    readme = (ROOT / 'README.md').read_text()
    for command in ('python -m pip install -r requirements-dev.txt', 'python -m pytest -q -n 2'):
        assert command in readme
    assert 'python -m pip install -q -r requirements-dev.txt' in CI
    assert CI.rstrip().endswith('python -m pytest -q -n 2')
    assert '/work/' not in CI  # nothing machine-specific


def test_reference_set_missing_under_srgan_benchmarks_fails(monkeypatch, tmp_path):
    monkeypatch.setenv('SRGAN_BENCHMARKS', str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match='SRGAN_BENCHMARKS is set but .*Set5'):
        benchmark_set('Set5', 'baby.png')
    (tmp_path / 'Set14').mkdir()
    with pytest.raises(pytest.fail.Exception, match='baboon.png is missing'):
        benchmark_set('Set14', 'baboon.png')
    (tmp_path / 'Set14' / 'baboon.png').write_bytes(b'x')
    assert benchmark_set('Set14', 'baboon.png') == tmp_path / 'Set14'


def test_reference_set_missing_without_srgan_benchmarks_skips(monkeypatch, tmp_path):
    monkeypatch.delenv('SRGAN_BENCHMARKS', raising=False)
    monkeypatch.setattr(conftest, 'ROOT', tmp_path)  # a clone without data/
    with pytest.raises(pytest.skip.Exception, match='download_data.py benchmarks'):
        benchmark_set('Set5', 'baby.png')
