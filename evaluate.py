"""Bicubic vs SRResNet vs SRGAN: PSNR, SSIM, NIQE (and LPIPS) over benchmark folders.

    python evaluate.py --data data/benchmarks/Set5 data/benchmarks/Set14 --upscale_factor 4 \
        --weight SRResNet=weights/srresnet_x4.pth --weight SRGAN=weights/srgan_x4.pth \
        --json results/x4.json --csv results/x4.csv
    python evaluate.py --data data/Set14 --weight SRGAN=weights/srgan_x4.pth \
        --weight_psnr weights/srresnet_x4.pth --strength 0 0.5 1     # rows SRGAN@0, @0.5, @1

Each folder holds HR images. Per image: HR cropped to a multiple of the scale, LR = the project's
bicubic degradation (utils.downscale), then every method upscales LR and is scored against HR
with utils.psnr/ssim/niqe/LPIPS (8-bit, border of `scale` pixels cropped, BT.601 YCbCr;
README.md, "Conventions").
The table printed is the mean over a folder's images of each per-image value.

--metrics picks the columns: psnr and ssim (each on Y and on YCbCr), niqe (no reference: the
image alone, lower is more natural) and lpips (optional: needs torchvision's ImageNet AlexNet),
all on the same 8-bit image with the same border cropped. With niqe, an HR row scores the HR
images themselves: the natural-image level to compare with. Its full-reference columns are
blank ('-' in the table, null in JSON, empty in CSV). An image too small for NIQE (two 96x96
blocks inside the border) or LPIPS (31x31) leaves that value blank, with a warning, and so does
its folder's mean.

grid is a lattice-artifact check, not a quality measure (utils.grid_score): the range, in grey
levels, of the means of the scale x scale pixel phases of the 8-bit output's luma, the whole
image, border included. A sub-pixel upsampler whose phases drifted apart draws a dot grid that
PSNR barely notices; x4 on Set14 (mean over the images): HR 1.21, bicubic 0.70, SRResNet 0.90.
An SRGAN above utils.GRID_LIMIT (1.5) shows the grid. Like niqe, it adds an HR row.
"""
import argparse
import csv
import json
import os
import signal
import statistics
import sys
from typing import Optional

if __name__ == '__main__':  # Ctrl-C while torch loads: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

import torch
from tqdm import tqdm

import utils

# (row key, table header, number format), in table order
METRICS = [('psnr_y', 'PSNR-Y', '.2f'), ('ssim_y', 'SSIM-Y', '.4f'),
           ('psnr_ycbcr', 'PSNR-YCbCr', '.2f'), ('ssim_ycbcr', 'SSIM-YCbCr', '.4f'),
           ('niqe', 'NIQE', '.2f'), ('lpips', 'LPIPS', '.4f'), ('grid', 'Grid', '.2f')]
# --metrics names, the columns each adds, and the default selection
METRIC_COLUMNS = {'psnr': ('psnr_y', 'psnr_ycbcr'), 'ssim': ('ssim_y', 'ssim_ycbcr'),
                  'niqe': ('niqe',), 'lpips': ('lpips',), 'grid': ('grid',)}
DEFAULT_METRICS = ('psnr', 'ssim', 'niqe')


def parse_metrics(text: str) -> tuple:
    """'psnr,ssim,niqe' -> ('psnr', 'ssim', 'niqe'), for --metrics."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(',') if n.strip()))
    unknown = [n for n in names if n not in METRIC_COLUMNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f'{text!r}: choose a comma-separated list of {", ".join(METRIC_COLUMNS)}')
    return names


def metric_functions(metrics: tuple, lpips_metric: utils.LPIPS = None) -> dict:
    """Row key -> f(sr, hr, scale) for the chosen metrics (names of METRIC_COLUMNS)."""
    functions = {
        'psnr_y': lambda sr, hr, s: utils.psnr(sr, hr, s, True),
        'psnr_ycbcr': lambda sr, hr, s: utils.psnr(sr, hr, s, False),
        'ssim_y': lambda sr, hr, s: utils.ssim(sr, hr, s, True),
        'ssim_ycbcr': lambda sr, hr, s: utils.ssim(sr, hr, s, False),
        'niqe': lambda sr, hr, s: utils.niqe(sr, s),
        'lpips': lambda sr, hr, s: lpips_metric(sr, hr, s),
        'grid': lambda sr, hr, s: utils.grid_score(sr, s),
    }
    if 'lpips' in metrics and lpips_metric is None:
        raise ValueError('the lpips metric needs an utils.LPIPS instance')
    return {key: functions[key] for key, _, _ in METRICS
            if any(key in METRIC_COLUMNS[m] for m in metrics)}


def find_images(folder: str) -> list:
    """The image files directly in `folder` (not in sub-folders, which often hold LR copies),
    or UsageError."""
    return utils.find_images(folder, recursive=False)


def evaluate_folder(folder: str, methods: dict, scale: int, paths: list = None,
                    progress: bool = True, max_megapixels: float = utils.MAX_MEGAPIXELS,
                    metrics: tuple = DEFAULT_METRICS, lpips_metric: utils.LPIPS = None,
                    label: str = None) -> tuple:
    """Score every image of `folder` (or the given `paths` in it) with every method, and with
    niqe or grid the HR image itself (method 'HR').

    Returns (rows, errors): rows are per-image dicts with dataset, method, image and the chosen
    metrics (None where one does not apply); errors are one-line messages for the images that
    were skipped (unreadable, or the generator failed on them: out of memory, an output that
    is not finite). `label` names the folder's rows (default: the folder's name)."""
    dataset = label or os.path.basename(os.path.normpath(folder))
    if paths is None:
        paths = find_images(folder)
    functions = metric_functions(metrics, lpips_metric)
    rows, errors = [], []
    for path in tqdm(paths, desc=dataset, unit='img', disable=not progress, file=sys.stderr):
        try:
            hr, lr = utils.load_hr_lr(path, scale, max_megapixels)
        except utils.ImageError as e:
            errors.append(str(e))
            tqdm.write(f'error: {utils.one_line(str(e))}', file=sys.stderr)
            continue
        image = {'dataset': dataset, 'image': os.path.basename(path)}
        blank = {}  # metric -> why this image cannot have it (too small)
        try:
            image_rows = [{**image, 'method': name,
                           **score(functions, method(lr), hr, scale, blank)}
                          for name, method in methods.items()]
        except utils.ImageError as e:  # utils.InferenceError: out of memory, not finite
            errors.append(f'{path}: {e}')
            tqdm.write(f'error: {utils.one_line(f"{path}: {e}")}', file=sys.stderr)
            continue
        rows += image_rows
        # the no-reference metrics score the HR image itself too: the natural level
        natural = {key: function(hr, hr, scale) for key, function in functions.items()
                   if key in ('niqe', 'grid') and key not in blank}
        if natural:
            rows.append({**image, 'method': 'HR', **dict.fromkeys(functions), **natural})
        for reason in blank.values():
            tqdm.write(f'warning: {path}: {reason}; left blank', file=sys.stderr)
    return rows, errors


def score(functions: dict, sr: torch.Tensor, hr: torch.Tensor, scale: int, blank: dict) -> dict:
    """Each metric of one SR image; None (and the reason in `blank`) where the image is too
    small for it."""
    values = {}
    for key, function in functions.items():
        if key in blank:
            values[key] = None
            continue
        try:
            values[key] = function(sr, hr, scale)
        except ValueError as e:
            if key not in ('niqe', 'lpips'):  # the metrics with a minimum size beyond SSIM's
                raise
            blank[key], values[key] = str(e), None
    return values


def columns(rows: list) -> list:
    """The METRICS entries that `rows` (per-image rows or the summary) have."""
    return [m for m in METRICS if any(m[0] in r for r in rows)]


def mean(values: list) -> Optional[float]:
    """The mean, or None when any value is None (a blank stays blank in the folder's mean)."""
    return None if None in values else statistics.fmean(values)


def summarize(rows: list) -> list:
    """Per (dataset, method), in order of first appearance: the image count and mean metrics."""
    groups = {}
    for row in rows:
        groups.setdefault((row['dataset'], row['method']), []).append(row)
    keys = [key for key, _, _ in columns(rows)]
    return [{'dataset': dataset, 'method': method, 'images': len(group),
             **{key: mean([r[key] for r in group]) for key in keys}}
            for (dataset, method), group in groups.items()]


def format_table(summary: list) -> str:
    """The summary as a Markdown table; blank values as '-'."""
    shown = columns(summary)
    header = ['dataset', 'method', 'images'] + [title for _, title, _ in shown]
    lines = ['| ' + ' | '.join(header) + ' |',
             '|---|---|' + '---:|' * (len(header) - 2)]
    for s in summary:
        cells = [s['dataset'], s['method'], str(s['images'])]
        cells += ['-' if s[key] is None else format(s[key], fmt) for key, _, fmt in shown]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_json(summary: list, path: str) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
            f.write('\n')
    utils.atomic_write(path, write)


def write_csv(rows: list, path: str) -> None:
    """One line per image and method."""
    fields = ['dataset', 'method', 'image'] + [key for key, _, _ in columns(rows)]

    def write(tmp):
        # a file name that is not UTF-8 (kept by Python as surrogates) is written as the
        # same bytes the file system holds
        with open(tmp, 'w', newline='', encoding='utf-8', errors='surrogateescape') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    utils.atomic_write(path, write)


# Tables are computed in exact float32, so that they reproduce to the last digit on any
# machine (bf16 moves PSNR by about 0.002 dB, and differently on different hardware).
EXACT = utils.Default('off', 'off: exact float32, so that tables reproduce to the last digit '
                             'on any machine')


def distinct_folders(folders: list) -> list:
    """(folder, label) for each distinct folder of --data (compared after resolving links), in
    order; a folder given again is left out with a one-line note. The label is the folder's
    name, or parent/name where two distinct folders share a name."""
    seen, kept = {}, []
    for folder in folders:
        key = os.path.realpath(folder)
        if key in seen:
            print(f'note: --data {folder} is {seen[key]} again; counted once', file=sys.stderr,
                  flush=True)
            continue
        seen[key] = folder
        kept.append(folder)
    names = [os.path.basename(os.path.realpath(f)) for f in kept]
    labels = []
    for folder, name in zip(kept, names):
        if names.count(name) > 1:
            real = os.path.realpath(folder)
            name = f'{os.path.basename(os.path.dirname(real))}/{name}'
        labels.append(name)
    return list(zip(kept, labels))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', nargs='+', required=True, metavar='DIR',
                        help='folders of HR images, e.g. Set5 Set14 (one table row each)')
    utils.add_flags(parser, 'upscale_factor')
    utils.flag_weight(parser, utils.Default([], 'none: Bicubic alone (it is always evaluated)'),
                      repeat=True)
    parser.add_argument('--strength', nargs='+', type=utils.number(float, 0, 1), metavar='S',
                        help='score each --weight blended with --weight_psnr at these detail '
                             'strengths (0 = --weight_psnr, 1 = --weight), as rows NAME@S '
                             '(default: --weight alone)')
    parser.add_argument('--weight_psnr', metavar='PATH',
                        help='the SRResNet end of --strength, of the same scale and settings '
                             '(default: weights/srresnet_x{S}.pth)')
    utils.add_flags(parser, 'cuda', 'amp', 'tile', 'max_megapixels', amp=EXACT)
    utils.add_flags(parser, 'ensemble', ensemble=utils.Default(
        False, 'off; on, each --weight row NAME gets a row NAME+ beside it'))
    parser.add_argument('--metrics', type=parse_metrics, default=DEFAULT_METRICS,
                        metavar='LIST',
                        help=f'comma-separated, of {", ".join(METRIC_COLUMNS)}; niqe and grid add '
                             "an HR row, lpips needs torchvision's ImageNet AlexNet; grid is a "
                             'lattice-artifact check (range of the scale x scale pixel-phase '
                             f'means, grey levels; above {utils.GRID_LIMIT:g} shows a dot grid), '
                             'not a quality measure (default: '
                             f'{",".join(DEFAULT_METRICS)})')
    parser.add_argument('--json', metavar='FILE',
                        help='write the table rows as JSON (default: none)')
    parser.add_argument('--csv', metavar='FILE',
                        help='write per-image metrics as CSV (default: none)')
    args = parser.parse_args(argv)
    if args.strength and not args.weight:
        parser.error('--strength needs --weight (the SRGAN end)')
    labels = ['Bicubic', 'HR'] + [w.name for w in args.weight]
    labels += [w.name + '+' for w in args.weight] if args.ensemble else []
    for name in labels:
        if labels.count(name) > 1:
            parser.error(f'--weight: the label {name!r} is used twice (Bicubic and HR are '
                         'rows of their own); name them NAME=PATH')
    return args


def load_methods(args: argparse.Namespace, device: torch.device, amp_dtype) -> tuple:
    """(scale, methods): Bicubic and a method per --weight (per strength with --strength),
    all run through utils.super_resolve; with --ensemble each also as NAME+ (the 8-transform
    self-ensemble, utils.ensemble_resolve). The scale is --upscale_factor, else the first weights
    file's, else utils.DEFAULT_SCALE; every file must agree with it. CheckpointError."""
    scale = args.upscale_factor
    asked = None  # where the scale came from, when not from --upscale_factor
    generators = {}
    for name, path in args.weight:
        if args.strength:
            # the default SRResNet end is the one of the --weight file's own scale
            psnr_path = args.weight_psnr or utils.default_weight(
                scale or utils.load_generator(path).upscale_factor, 'srresnet', '--weight_psnr')
            blends = {f'{name}@{s:g}': utils.load_blend(psnr_path, path, s, scale, device,
                                                        asked) for s in args.strength}
        else:
            blends = {name: utils.load_generator(path, scale, device, asked)}
        generators.update(blends)
        if scale is None:
            scale = next(iter(blends.values())).upscale_factor
            asked = (f'the first --weight ({path}) is x{scale}, and every --weight must have '
                     'its scale (or give --upscale_factor)')
    scale = scale or utils.DEFAULT_SCALE
    methods = {'Bicubic': utils.bicubic_method(scale)}
    for label, generator in generators.items():
        methods[label] = utils.generator_method(generator, scale, device, amp_dtype, args.tile,
                                                args.tile_overlap)
        if args.ensemble:
            methods[label + '+'] = utils.generator_method(generator, scale, device, amp_dtype,
                                                          args.tile, args.tile_overlap,
                                                          ensemble=True)
    return scale, methods


@utils.script
def main(argv=None) -> int:
    args = parse_args(argv)
    device, amp_dtype = utils.inference_setup(args)
    # without autocast, cuDNN would still run convolutions in TF32; keep evaluation exact
    torch.backends.cudnn.allow_tf32 = amp_dtype is not None
    utils.set_max_megapixels(args.max_megapixels)
    if args.weight_psnr and not args.strength:
        utils.warn('--weight_psnr is used only with --strength; each --weight is scored alone')
    # Check every folder, weights file and output before any model is built, so a typo fails
    # at once; every problem is one line.
    problems = [utils.UsageError(f'{flag} {problem}')
                for flag, path in (('--json', args.json), ('--csv', args.csv))
                if path and (problem := utils.output_problem(path))]
    folders = []
    for folder, label in distinct_folders(args.data):
        try:
            folders.append((folder, label, find_images(folder)))
        except utils.UsageError as e:
            problems.append(e)
    for path in [w.path for w in args.weight] + ([args.weight_psnr] if args.weight_psnr else []):
        try:
            utils.check_input(path)
        except utils.UsageError as e:
            problems.append(e)
    if problems:
        return utils.fail(*problems)
    utils.check_outputs([('--json', args.json), ('--csv', args.csv)],
                        [('--data', p) for _, _, paths in folders for p in paths]
                        + [('--weight', w.path) for w in args.weight]
                        + [('--weight_psnr', args.weight_psnr)])
    scale, methods = load_methods(args, device, amp_dtype)
    lpips_metric = None
    if 'lpips' in args.metrics:
        try:
            lpips_metric = utils.LPIPS(device)
        except utils.LPIPSError as e:  # a package or download this machine lacks
            raise utils.UsageError(f'--metrics lpips: {e}') from None

    rows, skipped = [], []
    for folder, label, paths in folders:
        folder_rows, errors = evaluate_folder(folder, methods, scale, paths,
                                              max_megapixels=args.max_megapixels,
                                              metrics=args.metrics, lpips_metric=lpips_metric,
                                              label=label)
        rows += folder_rows
        skipped += errors
    summary = summarize(rows)
    print(format_table(summary), flush=True)
    if skipped:  # each said why in its own line above; the table leaves them out
        total = sum(len(paths) for _, _, paths in folders)
        print(f'{len(skipped)} of {total} image(s) not scored, left out of the table',
              file=sys.stderr, flush=True)
    failed = bool(skipped)
    for write, data, path in ((write_json, summary, args.json), (write_csv, rows, args.csv)):
        try:
            if path:
                write(data, path)
        except OSError as e:  # checked before the work, yet the disk filled up: the table stays
            utils.error(utils.write_failure(path, e))
            failed = True
    return utils.EXIT_FAILED if failed else 0


if __name__ == '__main__':
    sys.exit(main())
