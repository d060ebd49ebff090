"""The layout rule (README.md, "Layout"), read from the import statements: model.py imports no
project file, utils.py imports only model.py, no script imports another script, and a
benchmark imports, besides those two and other benchmarks, at most the script whose step it
measures."""
import ast

import pytest

from conftest import ROOT

SHARED = {'model', 'utils'}
SCRIPTS = {p.stem: p for p in [*ROOT.glob('*.py'), *(ROOT / 'scripts').glob('*.py')]
           if p.stem not in SHARED}
BENCHMARKS = {p.stem: p for p in (ROOT / 'benchmarks').glob('*.py')}
# the script each benchmark measures a step of, where it needs one
MEASURES = {'bench_train': 'train', 'bench_scaling': 'train', 'bench_onnx': 'export_onnx'}


def project_imports(path) -> set:
    """The project modules (scripts, model, utils, benchmarks) that `path` imports, at any depth
    of the file (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return names & (SHARED | set(SCRIPTS) | set(BENCHMARKS))


def test_the_scripts_are_found():
    assert {'train', 'test_image', 'evaluate', 'get_img_crop'} <= set(SCRIPTS)
    assert {'bench_train', 'bench_inference'} <= set(BENCHMARKS)


def test_shared_modules_import_no_script():
    assert project_imports(ROOT / 'model.py') == set()
    assert project_imports(ROOT / 'utils.py') == {'model'}


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_scripts_import_only_the_shared_modules(name):
    assert project_imports(SCRIPTS[name]) <= SHARED


@pytest.mark.parametrize('name', sorted(BENCHMARKS))
def test_benchmarks_import_only_the_script_they_measure(name):
    allowed = SHARED | set(BENCHMARKS) | {MEASURES.get(name)}
    assert project_imports(BENCHMARKS[name]) <= allowed


def test_the_checker_sees_imports_inside_functions(tmp_path):
    path = tmp_path / 'x.py'
    path.write_text('import os\n\ndef f():\n    import train\n    from utils import error\n')
    assert project_imports(path) == {'train', 'utils'}
