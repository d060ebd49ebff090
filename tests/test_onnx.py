"""scripts/export_onnx.py: a tiny generator exported (fp32 and fp16) and run in onnxruntime at
sizes other than the export's; bad weights, an output that cannot be written, and a failed
self-check leave nothing under the output name."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import utils
from conftest import sane_generator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import export_onnx  # noqa: E402

SIZES = [(1, 3, 17, 23), (3, 3, 40, 32)]  # neither is the export's (2, 3, 64, 64)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """Tiny x4 weights (2 blocks, BatchNorm statistics not the identity, so folding matters)
    and their fp32 and fp16 exports, made by the script's main."""
    folder = tmp_path_factory.mktemp('onnx')
    weight = folder / 'tiny_x4.pth'
    utils.save_weights(sane_generator(4, num_blocks=2), str(weight))
    paths = {'weight': weight, 'fp32': folder / 'tiny.onnx', 'fp16': folder / 'tiny_fp16.onnx'}
    assert export_onnx.main(['--weight', str(weight), '--output', str(paths['fp32'])]) == 0
    assert export_onnx.main(['--weight', str(weight), '--output', str(paths['fp16']),
                             '--fp16']) == 0
    return paths


def max_diff_to_pytorch(onnx_path, weight, shape, seed: int = 1) -> float:
    generator = utils.load_generator(str(weight))  # unfused, fp32: the reference
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = session.run(None, {'lr': x.numpy()})[0]
    with torch.inference_mode():
        want = generator(x).numpy()
    assert got.shape == want.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
    return float(np.abs(got - want).max())


@pytest.mark.parametrize('shape', SIZES)
def test_fp32_export_matches_pytorch_at_other_sizes(exported, shape):
    assert max_diff_to_pytorch(exported['fp32'], exported['weight'], shape) <= 1e-4


@pytest.mark.parametrize('shape', SIZES)
def test_fp16_export_matches_pytorch_within_its_tolerance(exported, shape):
    diff = max_diff_to_pytorch(exported['fp16'], exported['weight'], shape)
    assert diff <= export_onnx.FP16_TOLERANCE
    assert diff > 1e-5  # it really computes in fp16


def test_graph_is_folded_dynamic_and_self_contained(exported):
    model = onnx.load(str(exported['fp32']))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert 'BatchNormalization' not in ops and 'Conv' in ops
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 3, 'height', 'width']
    assert [i.name for i in model.graph.input] == ['lr']
    assert [o.name for o in model.graph.output] == ['sr']
    assert not list(exported['fp32'].parent.glob('*.data'))  # weights inside the file
    fp16 = onnx.load(str(exported['fp16']))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert exported['fp16'].stat().st_size < 0.7 * exported['fp32'].stat().st_size


def test_bad_weights_file_is_one_line(tmp_path):
    bad = tmp_path / 'notes.pth'
    bad.write_text('not weights')
    output = tmp_path / 'out.onnx'
    res = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'export_onnx.py'),
                          '--weight', str(bad), '--output', str(output)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.count('\n') == 1 and res.stderr.startswith(f'error: {bad}: '), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.pth']


def test_unwritable_output_is_one_line(exported, tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    rc = export_onnx.main(['--weight', str(exported['weight']),
                           '--output', str(blocker / 'out.onnx')])
    err = capsys.readouterr().err
    assert rc == 2 and err.count('\n') == 1 and str(blocker) in err, err  # checked up front


def test_failed_check_writes_nothing(exported, tmp_path, capsys, monkeypatch):
    """An export whose output does not agree with PyTorch is not written: here the fp32
    file held to a tolerance no float computation meets (no second export: the finished
    file stands in for it)."""
    monkeypatch.setattr(export_onnx, 'to_onnx',
                        lambda model, path, opset: Path(path).write_bytes(
                            exported['fp32'].read_bytes()))
    monkeypatch.setattr(export_onnx, 'FP32_TOLERANCE', 1e-12)
    rc = export_onnx.main(['--weight', str(exported['weight']),
                           '--output', str(tmp_path / 'out.onnx')])
    err = capsys.readouterr().err
    assert rc == 1 and err.count('\n') == 1 and 'not written, the check failed' in err, err
    assert list(tmp_path.iterdir()) == []
