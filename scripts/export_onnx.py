"""Export a generator weights file to ONNX, with dynamic batch, height and width.

    python scripts/export_onnx.py --weight weights/srgan_x4.pth --output srgan_x4.onnx
    python scripts/export_onnx.py --weight weights/srgan_x4.pth --output srgan_x4_fp16.onnx --fp16

The exported network is the one test_image.py runs (utils.inference_model: BatchNorm folded
into the convolutions). Input `lr`: float32 (batch, 3, height, width), RGB in [0, 1]; output
`sr`: float32 (batch, 3, height * scale, width * scale), unclamped like the PyTorch generator
(clamp to [0, 1] to make an image).

Before the file appears under --output, the script checks it: onnxruntime (CPU) runs it on a
random input of another batch size and picture size than the export's, and its output must
agree with the PyTorch fp32 generator to within 1e-4 (largest absolute difference) in fp32,
FP16_TOLERANCE with --fp16. The file is written under a temporary name and renamed only then.

--fp16 stores weights and activations in float16 (half the file), for GPU runtimes (CUDA,
TensorRT, DirectML); the input and output stay float32, so the same calling code works.
"""
import argparse
import os
import re
import signal
import sys
import time

if __name__ == '__main__':  # Ctrl-C while torch loads: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import (SRError, UsageError, add_flags, atomic_write,  # noqa: E402
                   generator_from_flags, inference_model, output_problem, require, script,
                   super_resolve, write_failure)

FP32_TOLERANCE = 1e-4
# fp16 keeps 11 significant bits, so every layer rounds its output by up to 2^-11 of its size
# (onnxruntime's CPU runs fp16 convolutions in fp32 between fp16 tensors; GPUs accumulate in
# fp32 too). Measured on the shipped SRGAN and SRResNet: largest differences from fp32 of
# 5.7e-4 to 6.9e-4 on random inputs (four each), 2e-4 to 3.3e-4 on photos. One 8-bit level
# leaves room for other weights and still means a picture that differs by one level at most.
FP16_TOLERANCE = 1 / 255
EXPORT_SHAPE = (2, 3, 64, 64)  # the example the graph is traced with (batch 2: see to_onnx)
CHECK_SHAPE = (1, 3, 45, 71)   # the self-check: another batch size, odd sides, not square
OPSET = 18  # the lowest the torch.export-based exporter writes; onnxruntime >= 1.14 runs it
# Lower opsets go through ONNX's version converter, which fails for some operators and then
# leaves an opset-18 file (asked for 13, it wrote 18 with exit 0): refused. The highest is the
# newest the installed onnx package defines (28 for onnx 1.23; 18 to 25 measured to export and
# pass the check with onnxruntime 1.32).


def opset_problem(opset: int, newest: int) -> str:
    """Why --opset cannot be exported, or ''."""
    if OPSET <= opset <= newest:
        return ''
    return (f'--opset {opset}: the exporter writes opsets {OPSET} to {newest} (lower ones need '
            'a version conversion that fails for some operators); choose one of them')


def written_opset(path: str) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))


class ExportError(SRError):
    """The export failed or its check did not pass; str() names the file."""


class Float16(nn.Module):
    """`model` in float16 between float32 input and output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def to_onnx(model: nn.Module, path: str, opset: int) -> None:
    """Write `model` as ONNX with dynamic batch, height and width (one file, weights inside)."""
    # torch.export fixes dimensions of size 1 in the example, so the batch is traced at 2.
    dims = {0: torch.export.Dim('batch'), 2: torch.export.Dim('height'),
            3: torch.export.Dim('width')}
    program = torch.onnx.export(model, (torch.rand(EXPORT_SHAPE),), dynamo=True,
                                input_names=['lr'], output_names=['sr'],
                                dynamic_shapes={'x': dims}, opset_version=opset,
                                external_data=False, verbose=False)
    program.save(path, external_data=False)


def check(path: str, reference: nn.Module, tolerance: float, seed: int = 0) -> float:
    """Largest absolute difference between onnxruntime on `path` and `reference` (the
    unfused fp32 generator, so BatchNorm folding is checked too, run through
    utils.super_resolve as a whole image, as the ONNX graph runs) on a random CHECK_SHAPE
    input. Raises ExportError when it exceeds `tolerance`."""
    import onnxruntime as ort
    x = torch.rand(CHECK_SHAPE, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {'lr': x.numpy()})[0]
    want = super_resolve(reference, x, reference.upscale_factor, tile=0).numpy()
    if got.shape != want.shape:
        raise ExportError(f'onnxruntime gave shape {got.shape} for a {CHECK_SHAPE} input, '
                          f'PyTorch {want.shape}')
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise ExportError(f'onnxruntime and PyTorch differ by up to {diff:.3g} on a '
                          f'{CHECK_SHAPE} input (allowed: {tolerance:.3g})')
    return diff


def export(generator: nn.Module, output: str, opset: int = OPSET, fp16: bool = False) -> dict:
    """Export a loaded `generator`, check and (only then) write `output`; returns what to
    report. Raises ExportError for a failed export or check, OSError when `output` cannot be
    written."""
    model = inference_model(generator, torch.device('cpu'))
    model = model.to(memory_format=torch.contiguous_format)  # layout means nothing in ONNX
    result = {}

    def write(tmp: str) -> None:
        start = time.perf_counter()
        try:
            to_onnx(Float16(model).eval() if fp16 else model, tmp, opset)
        except Exception as e:
            cause, seen = e, set()
            while cause is not None and id(cause) not in seen:  # the exporter wraps Ctrl-C
                if isinstance(cause, KeyboardInterrupt):         # in an error of its own
                    raise KeyboardInterrupt from None
                seen.add(id(cause))
                cause = cause.__cause__ or cause.__context__
            detail = re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '',  # the exporter's terminal colours
                            (str(e).strip().splitlines() or [''])[0])
            raise ExportError(f'{output}: export failed ({type(e).__name__}: {detail})') \
                from None
        result['seconds'] = time.perf_counter() - start
        if written_opset(tmp) != opset:
            raise ExportError(f'{output}: not written, the exporter wrote opset '
                              f'{written_opset(tmp)}, not {opset}')
        try:
            result['diff'] = check(tmp, generator, FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
        except ExportError as e:
            raise ExportError(f'{output}: not written, the check failed: {e}') from None
        result['bytes'] = os.path.getsize(tmp)

    atomic_write(output, write)
    return {**result, 'config': generator.config}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Export a generator to ONNX (dynamic batch, '
                                            'height and width), checked with onnxruntime.')
    add_flags(p, 'weight', 'upscale_factor')
    p.add_argument('--output', required=True, help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=OPSET,
                   help=f'ONNX opset, {OPSET} up to the newest the onnx package defines '
                        f'(default: {OPSET})')
    p.add_argument('--fp16', action='store_true',
                   help='float16 weights and activations, float32 input and output '
                        '(default: float32 throughout)')
    return p.parse_args(argv)


@script
def main(argv=None) -> int:
    args = parse_args(argv)
    problem = output_problem(args.output)  # before the export (README.md, "Conventions")
    if problem:
        raise UsageError(f'--output {problem}')
    for module in ('onnx', 'onnxscript', 'onnxruntime'):  # export: the first two; check: the third
        require(module, 'scripts/export_onnx.py')
    import onnx
    problem = opset_problem(args.opset, onnx.defs.onnx_opset_version())
    if problem:
        raise UsageError(problem)
    generator = generator_from_flags(args, torch.device('cpu'))
    try:
        r = export(generator, args.output, args.opset, args.fp16)
    except OSError as e:
        raise SRError(write_failure(args.output, e)) from None
    cfg = r['config']
    tolerance = FP16_TOLERANCE if args.fp16 else FP32_TOLERANCE
    print(f"{args.output}: x{cfg['upscale_factor']} generator ({cfg['num_blocks']} blocks), "
          f"{'fp16' if args.fp16 else 'fp32'}, opset {args.opset}, {r['bytes'] / 2**20:.1f} MB, "
          f"exported in {r['seconds']:.0f} s; onnxruntime vs PyTorch fp32 on a "
          f"{CHECK_SHAPE} input: max abs difference {r['diff']:.2g} (allowed {tolerance:.2g})",
          flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
