"""Bicubic vs SRResNet vs SRGAN: PSNR and SSIM (on Y and on YCbCr) over benchmark folders.

    python evaluate.py --data data/benchmarks/Set5 data/benchmarks/Set14 --upscale_factor 4 \
        --weight SRResNet=weights/srresnet_x4.pth --weight SRGAN=weights/srgan_x4.pth \
        --json results/x4.json --csv results/x4.csv

Each folder holds HR images. Per image: HR cropped to a multiple of the scale, LR = the project's
bicubic degradation (utils.downscale), then every method upscales LR and is scored against HR
with utils.image_metrics (8-bit, border of `scale` pixels cropped, BT.601 YCbCr; README.md, "Conventions").
The table printed is the mean over a folder's images of each per-image value.
"""
import argparse
import csv
import json
import os
import statistics
import sys
from typing import Callable, Optional

import torch
from tqdm import tqdm

import utils

# (row key, table header, number format)
METRICS = [('psnr_y', 'PSNR-Y', '.2f'), ('ssim_y', 'SSIM-Y', '.4f'),
           ('psnr_ycbcr', 'PSNR-YCbCr', '.2f'), ('ssim_ycbcr', 'SSIM-YCbCr', '.4f')]
SSIM_WINDOW = 11

# A method upscales a (3, h, w) LR tensor in [0, 1] to (3, h*s, w*s); the output need not
# be clamped, image_metrics clamps and rounds.
Method = Callable[[torch.Tensor], torch.Tensor]


def parse_weight(spec: str) -> tuple:
    """'NAME=PATH' -> (NAME, PATH); a bare PATH is labelled with its file stem."""
    name, sep, path = spec.partition('=')
    if sep and name and os.sep not in name:
        return name, path
    return os.path.splitext(os.path.basename(spec))[0], spec


def bicubic_method(scale: int) -> Method:
    return lambda lr: utils.imresize(lr, scale)


def generator_method(generator: torch.nn.Module, scale: int, device: torch.device,
                     amp_dtype: Optional[torch.dtype] = None, tile: int = 0) -> Method:
    """A method running `generator` as test_image.py does (BatchNorm fused, channels_last,
    optional autocast), optionally in tiles of `tile` LR pixels (0 = whole image)."""
    model = utils.inference_model(generator, device)
    return lambda lr: utils.super_resolve(model, lr, scale, tile, utils.TILE_OVERLAP, amp_dtype)


def find_images(folder: str) -> list:
    """The image files directly in `folder` (not in sub-folders, which often hold LR copies),
    or ImageError."""
    if not os.path.isdir(folder):
        raise utils.ImageError(f'{folder}: folder not found')
    paths = utils.list_images(folder, recursive=False)
    if not paths:
        raise utils.ImageError(f'{folder}: no images ({", ".join(utils.IMAGE_EXTENSIONS)}) '
                               'in this folder')
    return paths


def load_hr_lr(path: str, scale: int, max_megapixels: float = utils.MAX_MEGAPIXELS) -> tuple:
    """(hr, lr) as (3, H, W) tensors: HR modcropped, LR its bicubic downscale. Raises ImageError
    for unreadable images, ones over max_megapixels (from the header, before decoding) and
    ones too small to score."""
    utils.check_pixels(path, max_megapixels)
    hr, _ = utils.load_image(path)
    hr = utils.modcrop(hr, scale)
    smallest = 2 * scale + SSIM_WINDOW  # the SSIM window must fit once the border is cropped
    if min(hr.shape[-2:]) < smallest:
        raise utils.ImageError(f'{path}: {hr.shape[-1]}x{hr.shape[-2]} after cropping to a '
                               f'multiple of {scale} is too small to score (needs at least '
                               f'{smallest}x{smallest})')
    return hr, utils.downscale(hr, scale)


def evaluate_folder(folder: str, methods: dict, scale: int, paths: list = None,
                    progress: bool = True, max_megapixels: float = utils.MAX_MEGAPIXELS) -> tuple:
    """Score every image of `folder` (or the given `paths` in it) with every method.

    Returns (rows, errors): rows are per-image dicts with dataset, method, image and the four
    metrics; errors are one-line messages for the images that were skipped."""
    dataset = os.path.basename(os.path.normpath(folder))
    if paths is None:
        paths = find_images(folder)
    rows, errors = [], []
    for path in tqdm(paths, desc=dataset, unit='img', disable=not progress, file=sys.stderr):
        try:
            hr, lr = load_hr_lr(path, scale, max_megapixels)
        except utils.ImageError as e:
            errors.append(str(e))
            tqdm.write(f'error: {e}', file=sys.stderr)
            continue
        for name, method in methods.items():
            sr = method(lr)
            rows.append({'dataset': dataset, 'method': name, 'image': os.path.basename(path),
                         **utils.image_metrics(sr, hr, scale)})
    return rows, errors


def summarize(rows: list) -> list:
    """Per (dataset, method), in order of first appearance: the image count and mean metrics."""
    groups = {}
    for row in rows:
        groups.setdefault((row['dataset'], row['method']), []).append(row)
    return [{'dataset': dataset, 'method': method, 'images': len(group),
             **{key: statistics.fmean(r[key] for r in group) for key, _, _ in METRICS}}
            for (dataset, method), group in groups.items()]


def format_table(summary: list) -> str:
    """The summary as a Markdown table."""
    header = ['dataset', 'method', 'images'] + [title for _, title, _ in METRICS]
    lines = ['| ' + ' | '.join(header) + ' |',
             '|---|---|' + '---:|' * (len(header) - 2)]
    for s in summary:
        cells = [s['dataset'], s['method'], str(s['images'])]
        cells += [format(s[key], fmt) for key, _, fmt in METRICS]
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
    fields = ['dataset', 'method', 'image'] + [key for key, _, _ in METRICS]

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    utils.atomic_write(path, write)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', nargs='+', required=True, metavar='DIR',
                        help='folders of HR images, e.g. Set5 Set14 (one table row each)')
    parser.add_argument('--upscale_factor', type=int, default=4, choices=[2, 4, 8],
                        help='super resolution upscale factor')
    parser.add_argument('--weight', nargs='+', action='extend', default=[], metavar='NAME=PATH',
                        help='generator weights to evaluate, labelled NAME (default: file stem); '
                             'Bicubic is always evaluated')
    parser.add_argument('--cuda', action='store_true', help='run the generators on the GPU')
    parser.add_argument('--amp', choices=['auto', 'off', 'bf16', 'fp16'], default='off',
                        help='autocast for the generators: off = exact float32 (default); auto = '
                             'bf16 where the GPU/CPU has native bf16, else float32')
    parser.add_argument('--tile', type=utils.number(int, 0), default=0, metavar='N',
                        help='run the generators on N x N LR tiles to bound memory (0 = whole)')
    parser.add_argument('--json', metavar='FILE', help='write the table rows as JSON')
    parser.add_argument('--csv', metavar='FILE', help='write per-image metrics as CSV')
    parser.add_argument('--max_megapixels', type=utils.number(float, 0, low_open=True),
                        default=utils.MAX_MEGAPIXELS,
                        help='skip larger HR images (checked from the file header, before '
                             'decoding)')
    args = parser.parse_args(argv)
    if 0 < args.tile <= 2 * utils.TILE_OVERLAP:
        parser.error(f'--tile: must be 0 (whole images) or more than {2 * utils.TILE_OVERLAP}, '
                     f'twice the overlap of {utils.TILE_OVERLAP} LR pixels')
    if args.cuda and not torch.cuda.is_available():
        parser.error('--cuda: no CUDA device is available')
    args.weight = [parse_weight(w) for w in args.weight]
    labels = ['Bicubic'] + [name for name, _ in args.weight]
    for name in labels:
        if labels.count(name) > 1:
            parser.error(f'--weight: the label {name!r} is used twice; name them NAME=PATH')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device('cuda' if args.cuda else 'cpu')
    try:
        amp_dtype = utils.autocast_dtype(args.amp, device)
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    # without autocast, cuDNN would still run convolutions in TF32; keep evaluation exact
    torch.backends.cudnn.allow_tf32 = amp_dtype is not None
    scale = args.upscale_factor

    utils.set_max_megapixels(args.max_megapixels)
    # Check every weights file, folder and output before the long part, so a typo fails at once.
    problems = [f'{flag} {problem}' for flag, path in (('--json', args.json), ('--csv', args.csv))
                if path and (problem := utils.output_problem(path))]
    methods = {'Bicubic': bicubic_method(scale)}
    for name, path in args.weight:
        try:
            generator = utils.load_generator(path, upscale_factor=scale, device=device)
        except utils.CheckpointError as e:
            problems.append(str(e))
            continue
        methods[name] = generator_method(generator, scale, device, amp_dtype, args.tile)
    folders = []
    for folder in args.data:
        try:
            folders.append((folder, find_images(folder)))
        except utils.ImageError as e:
            problems.append(str(e))
    for problem in problems:
        print(f'error: {problem}', file=sys.stderr)
    if problems:
        return 2

    rows, skipped = [], []
    for folder, paths in folders:
        folder_rows, errors = evaluate_folder(folder, methods, scale, paths,
                                              max_megapixels=args.max_megapixels)
        rows += folder_rows
        skipped += errors
    summary = summarize(rows)
    print(format_table(summary), flush=True)
    failed = bool(skipped)
    for write, data, path in ((write_json, summary, args.json), (write_csv, rows, args.csv)):
        try:
            if path:
                write(data, path)
        except OSError as e:  # checked before the work, yet the disk filled up: the table stays
            print(f'error: {utils.write_failure(path, e)}', file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
