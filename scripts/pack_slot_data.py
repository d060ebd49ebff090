"""Pack the training photos, the validation images, Set5 and Set14 into one folder that
travels with a GPU-slot command (docs/gpu-slot.md): lossless PNG, the same pixels as the sources.

    python scripts/pack_slot_data.py --train data/train --benchmarks data --out slot_data

--train: a folder of training photos (searched recursively, e.g. T91/ BSD200/ BSDS500_test200/).
The validation images are every --valid_every-th file name, in sorted order, of its sub-folder
--valid_from (the 10 BSDS500 test images the shipped weights validated on); they are packed
whole and left out of the training set. --benchmarks: a folder holding Set5/ and Set14/ (as
`python scripts/download_data.py benchmarks` leaves data/), copied byte for byte when PNG.

A GPU machine receives the repository and the carried folders together, at most 64 MiB, and the
repository (weights included) takes part of that. So the packed folder gets --max_mib (default:
64 MiB less the git-tracked files of this checkout, less 2 MiB). Each training photo is kept
centre-cropped, all by the same area fraction, to what fits, never below --min_side pixels on a
side (96-px crops at x4, 192 at x8); where even that is too much, photos spread evenly over the
sorted list are left out. The fraction, the count and the size are written to PACKED.txt.

Layout: OUT/train/<sub-folder>/<name>.png, OUT/valid/, OUT/Set5/, OUT/Set14/, OUT/PACKED.txt.
"""
import argparse
import io
import math
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402

MIB = 2 ** 20
TRAVEL_LIMIT_MIB = 64  # what a device call carries: the working tree and carried folders
MARGIN_MIB = 2  # for the files a session adds before it spends the slot
BENCHMARKS = ('Set5', 'Set14')


def tracked_bytes(root: str) -> int:
    """Bytes of the files git tracks in `root` (the checkout that travels); 0 outside git."""
    try:
        names = subprocess.run(['git', 'ls-files', '-z'], cwd=root, capture_output=True,
                               check=True).stdout.split(b'\0')
    except (OSError, subprocess.CalledProcessError):
        return 0
    paths = [os.path.join(root, n.decode()) for n in names if n]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def default_max_mib() -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return TRAVEL_LIMIT_MIB - tracked_bytes(root) / MIB - MARGIN_MIB


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, 'PNG', optimize=True)
    return buf.getvalue()


def crop_box(h: int, w: int, fraction: float, min_side: int) -> tuple:
    """(top, left, height, width) of the centred crop keeping `fraction` of the area, each side
    at least min(side, min_side)."""
    k = math.sqrt(min(1.0, fraction))
    ch, cw = max(min(h, min_side), round(h * k)), max(min(w, min_side), round(w * k))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def cut(rgb: np.ndarray, fraction: float, min_side: int) -> np.ndarray:
    top, left, ch, cw = crop_box(*rgb.shape[:2], fraction, min_side)
    return rgb[top:top + ch, left:left + cw]


def split(train: str, valid_from: str, valid_every: int) -> tuple:
    """(training paths, validation paths): validation is every `valid_every`-th sorted file of
    the sub-folder `valid_from` (none when there is no such sub-folder)."""
    paths = utils.find_images(train, 'training folder')
    sub = os.path.join(train, valid_from)
    valid = (sorted(p for p in paths if os.path.dirname(p) == sub)[::valid_every]
             if valid_from and os.path.isdir(sub) else [])
    return [p for p in paths if p not in valid], valid


def fit_fraction(sizes: list, budget: int, min_side: int) -> float:
    """The largest area fraction whose estimated total (each photo's bytes per pixel at full
    size times its cropped area) stays within `budget`."""
    def estimate(f):
        return sum(b / (h * w) * crop_box(h, w, f, min_side)[2] * crop_box(h, w, f, min_side)[3]
                   for b, h, w in sizes)
    if estimate(1.0) <= budget:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if estimate(mid) <= budget else (low, mid)
    return low


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--train', required=True, metavar='DIR',
                   help='training photos, searched recursively')
    p.add_argument('--benchmarks', required=True, metavar='DIR',
                   help='a folder holding Set5/ and Set14/')
    p.add_argument('--out', default='slot_data', metavar='DIR',
                   help='the folder to write (replaced whole) (default: slot_data)')
    p.add_argument('--valid_from', default='BSDS500_test200', metavar='SUB',
                   help='sub-folder of --train the validation images come from '
                        '(default: BSDS500_test200)')
    p.add_argument('--valid_every', type=utils.number(int, 1), default=20, metavar='N',
                   help='every N-th file name of --valid_from, sorted, is a validation image '
                        '(default: 20)')
    p.add_argument('--max_mib', type=utils.number(float, 0, low_open=True), default=None,
                   help='size of the packed folder, MiB (default: 64 less the tracked files '
                        'of this checkout, less 2)')
    p.add_argument('--min_side', type=utils.number(int, 1), default=192,
                   help='a cropped photo keeps at least this many pixels on a side '
                        '(default: 192)')
    return p.parse_args(argv)


@utils.script
def main(argv=None) -> int:
    args = parse_args(argv)
    problems = []
    for folder in [args.train] + [os.path.join(args.benchmarks, b) for b in BENCHMARKS]:
        try:
            utils.find_images(folder, recursive=folder == args.train)
        except utils.UsageError as e:
            problems.append(e)
    if (problem := utils.output_problem(args.out, folder=True)):
        problems.append(utils.UsageError(f'--out {problem}'))
    if problems:
        return utils.fail(*problems)
    max_mib = args.max_mib if args.max_mib is not None else default_max_mib()
    train, valid = split(args.train, args.valid_from, args.valid_every)
    tmp = args.out.rstrip('/') + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    fixed = 0  # bytes of what is packed whole: benchmarks and validation
    for b in BENCHMARKS:
        for path in utils.find_images(os.path.join(args.benchmarks, b), recursive=False):
            name = os.path.splitext(os.path.basename(path))[0] + '.png'
            data = (open(path, 'rb').read() if path.lower().endswith('.png')
                    else png_bytes(utils.image_to_uint8(Image.open(path))))
            write(os.path.join(tmp, b, name), data)
            fixed += len(data)
    images = {}
    for path in valid + train:
        try:
            images[path] = utils.image_to_uint8(Image.open(path))
        except (OSError, ValueError) as e:
            raise utils.ImageError(f'{path}: unreadable image ({e})') from None
    for path in valid:
        data = png_bytes(images[path])
        write(os.path.join(tmp, 'valid', os.path.splitext(os.path.basename(path))[0] + '.png'),
              data)
        fixed += len(data)
    budget = int(max_mib * MIB) - fixed - 4096  # PACKED.txt
    if budget <= 0:
        raise utils.UsageError(f'--max_mib {max_mib:.1f}: the benchmarks and validation images '
                               f'alone take {fixed / MIB:.1f} MiB')
    # bytes per pixel of each photo, from its central 192 x 192 (encoding every whole photo
    # would take minutes), then one area fraction for all
    sample = {p: png_bytes(cut(images[p], 0, 192)) for p in train}
    sizes = [(len(sample[p]) * images[p].shape[0] * images[p].shape[1]
              / (cut(images[p], 0, 192).size // 3), *images[p].shape[:2]) for p in train]
    fraction = fit_fraction(sizes, int(0.97 * budget), args.min_side)
    packed = {p: png_bytes(cut(images[p], fraction, args.min_side)) for p in train}
    total, all_photos = sum(map(len, packed.values())), len(train)
    # Still too large (the estimate was low, or --min_side keeps too much): leave out photos
    # spread evenly over the sorted list until the rest fits
    while total > budget and len(packed) > 1:
        order = sorted(packed)
        excess = int((total - budget) / (total / len(order))) + 1
        for i in sorted({int(k) for k in np.linspace(0, len(order) - 1, excess)}):
            total -= len(packed.pop(order[i]))
    train = sorted(packed)
    for p in train:
        rel = os.path.splitext(os.path.relpath(p, args.train))[0] + '.png'
        write(os.path.join(tmp, 'train', rel), packed[p])
    pixels = sum(cut(images[p], fraction, args.min_side).size // 3 for p in train)
    all_pixels = sum(images[p].size // 3 for p in images if p not in valid)
    left_out = f', {all_photos - len(train)} left out to fit' if len(train) < all_photos else ''
    # the fraction, unless --min_side decides every crop of a large photo
    area = (f'{fraction:.1%} of the area, '
            if crop_box(1000, 1000, fraction, args.min_side)[2] > args.min_side else '')
    summary = (f'{len(train)} training photos{left_out} ({pixels / all_pixels:.0%} of their '
               f'pixels: centre crops of {area}at least {args.min_side} px a side), '
               f'{len(valid)} validation images, '
               + ', '.join(f'{b} {len(os.listdir(os.path.join(tmp, b)))}' for b in BENCHMARKS)
               + f'; {(total + fixed) / MIB:.1f} MiB of at most {max_mib:.1f}')
    with open(os.path.join(tmp, 'PACKED.txt'), 'w') as f:
        f.write(summary + '\n' + ''.join(f'valid {os.path.relpath(p, args.train)}\n'
                                         for p in valid))
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(f'{args.out}: {summary}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
