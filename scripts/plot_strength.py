"""Plot fidelity against naturalness over detail strengths: PSNR-Y and NIQE of generators
blended from SRResNet (strength 0) to SRGAN (strength 1), with Bicubic and HR marked.

    python scripts/plot_strength.py --data data/Set14 --weight_psnr weights/srresnet_x4.pth \
        --weight weights/srgan_x4.pth --strengths 0 0.25 0.5 0.75 1 \
        --out images/strength_tradeoff.png --json images/strength_tradeoff.json

Each blend is utils.load_blend (what test_image.py --strength runs); the scores follow
evaluate.py: HR cropped to a multiple of the scale, LR its bicubic downscale, metrics on 8-bit
images with `scale` border pixels cropped, PSNR on Y, NIQE on Y (lower is more natural), means
over the folder's images. --from_json redraws a saved --json without running the networks.
Drawn with Pillow only.
"""
import argparse
import json
import math
import os
import statistics
import sys

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


def score(folder: str, psnr_weight: str, gan_weight: str, strengths: list, scale: int = None,
          tile: int = None, paths: list = None) -> tuple:
    """(scale, rows): rows [{'method', 'strength', 'psnr_y', 'niqe'}] for Bicubic, HR and every
    strength; `scale` None takes the weights files' own."""
    import torch
    blends = {f'{s:g}': utils.load_blend(psnr_weight, gan_weight, s, scale) for s in strengths}
    scale = scale or next(iter(blends.values())).upscale_factor
    methods = {'Bicubic': utils.bicubic_method(scale)}
    for name, blend in blends.items():
        methods[name] = utils.generator_method(blend, scale, torch.device('cpu'), tile=tile)
    per = {name: {'psnr_y': [], 'niqe': []} for name in [*methods, 'HR']}
    for path in paths or utils.find_images(folder, recursive=False):
        hr, lr = utils.load_hr_lr(path, scale)
        per['HR']['niqe'].append(utils.niqe(hr, crop_border=scale))
        for name, method in methods.items():
            sr = method(lr).clamp(0, 1)
            per[name]['psnr_y'].append(utils.psnr(sr, hr, scale))
            per[name]['niqe'].append(utils.niqe(sr, crop_border=scale))
        print(f'{os.path.basename(path)} done', file=sys.stderr, flush=True)
    rows = []
    for name, values in per.items():
        row = {'method': name if name in ('Bicubic', 'HR') else 'blend',
               'strength': None if name in ('Bicubic', 'HR') else float(name),
               'niqe': statistics.fmean(values['niqe'])}
        if values['psnr_y']:
            row['psnr_y'] = statistics.fmean(values['psnr_y'])
        rows.append(row)
    return scale, rows


def _font(size: int):
    try:
        return ImageFont.truetype('DejaVuSans.ttf', size)
    except OSError:
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list:
    """About n round tick values covering [lo, hi]."""
    raw = (hi - lo) / n
    step = min((m * 10 ** e for e in range(-2, 3) for m in (1, 2, 5) if m * 10 ** e >= raw),
               default=raw)
    first = int(lo / step) * step
    return [first + i * step for i in range(n + 3) if lo <= first + i * step <= hi]


def _hits(box: tuple, segments: list, pad: float = 3) -> bool:
    """Whether the rectangle `box` (grown by `pad`) touches any of the line segments."""
    x0, y0, x1, y1 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    for (ax, ay), (bx, by) in segments:
        steps = max(1, int(max(abs(bx - ax), abs(by - ay))))  # one sample per pixel
        if any(x0 <= ax + (bx - ax) * i / steps <= x1 and y0 <= ay + (by - ay) * i / steps <= y1
               for i in range(steps + 1)):
            return True
    return False


def place_label(d: ImageDraw.ImageDraw, text: str, font, at: tuple, segments: list,
                taken: list, frame: tuple) -> tuple:
    """The box (left, top, right, bottom) for `text` next to the point `at`: the nearest of
    the spots around it that stays inside `frame` and touches no line segment and no box in
    `taken` (points' markers and labels already placed)."""
    tw, th = d.textbbox((0, 0), text, font=font)[2:]
    x, y = at
    spots = []
    for gap in (12, 20, 32, 48):
        spots += [(x + gap, y - th / 2), (x - gap - tw, y - th / 2),  # right, left
                  (x + gap, y - gap - th), (x - gap - tw, y - gap - th),  # above
                  (x + gap, y + gap), (x - gap - tw, y + gap),  # below
                  (x - tw / 2, y - gap - th), (x - tw / 2, y + gap)]
    for left, top in spots:
        box = (left, top, left + tw, top + th)
        inside = (box[0] >= frame[0] + 4 and box[1] >= frame[1] + 4 and box[2] <= frame[2] - 4
                  and box[3] <= frame[3] - 4)
        if inside and not _hits(box, segments) and not any(
                box[0] < b[2] + 3 and b[0] < box[2] + 3 and box[1] < b[3] + 3 and
                b[1] < box[3] + 3 for b in taken):
            return box
    return (x + 12, y - th / 2, x + 12 + tw, y + th / 2)  # nowhere free: beside the point


def draw(rows: list, title: str, path: str, size: tuple = (900, 620)) -> tuple:
    """PSNR-Y (x) against NIQE (y) as a PNG: the strengths joined by a line and labelled (each
    label where it overlaps no line, marker or other label), Bicubic a square; HR (no PSNR:
    it is the reference) a dashed line at its NIQE. Returns [(label, box)], the line and the
    frame for checking."""
    w, h = size
    left, right, top, bottom = 90, 40, 60, 70
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    font, small = _font(18), _font(15)
    blends = sorted((r for r in rows if r['method'] == 'blend'), key=lambda r: r['strength'])
    bicubic = next(r for r in rows if r['method'] == 'Bicubic')
    hr = next(r for r in rows if r['method'] == 'HR')
    xs = [r['psnr_y'] for r in blends + [bicubic]]
    ys = [r['niqe'] for r in blends + [bicubic, hr]]
    xpad, ypad = (max(xs) - min(xs)) * 0.08 + 0.05, (max(ys) - min(ys)) * 0.08 + 0.05
    x0, x1, y0, y1 = min(xs) - xpad, max(xs) + xpad, min(ys) - ypad, max(ys) + ypad

    def px(x: float, y: float) -> tuple:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline='black')
    for t in _ticks(x0, x1):
        x, _ = px(t, y0)
        d.line([x, h - bottom, x, h - bottom + 6], fill='black')
        d.text((x, h - bottom + 10), f'{t:g}', fill='black', font=small, anchor='mt')
    for t in _ticks(y0, y1):
        _, y = px(x0, t)
        d.line([left - 6, y, left, y], fill='black')
        d.text((left - 10, y), f'{t:g}', fill='black', font=small, anchor='rm')
    d.text((w / 2, h - 20), 'PSNR-Y (dB), higher = closer to the original', fill='black',
           font=font, anchor='mm')
    label = 'NIQE, lower = more natural'
    box = d.textbbox((0, 0), label, font=font)
    text = Image.new('RGB', (box[2] + 4, box[3] + 4), 'white')
    ImageDraw.Draw(text).text((2, 2), label, fill='black', font=font)
    text = text.rotate(90, expand=True)
    img.paste(text, (12, int(h / 2 - text.height / 2)))
    d.text((w / 2, 25), title, fill='black', font=font, anchor='mm')

    frame = (left, top, w - right, h - bottom)
    _, y_hr = px(x0, hr['niqe'])
    for x in range(left, w - right, 14):
        d.line([x, y_hr, min(x + 7, w - right), y_hr], fill=(0, 140, 0), width=2)
    points = [px(r['psnr_y'], r['niqe']) for r in blends]
    d.line(points, fill=(40, 80, 200), width=3)
    for x, y in points:
        d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(40, 80, 200))
    bx, by = px(bicubic['psnr_y'], bicubic['niqe'])
    d.rectangle([bx - 6, by - 6, bx + 6, by + 6], fill=(200, 60, 40))
    segments = list(zip(points, points[1:])) + [((left, y_hr), (w - right, y_hr))]
    taken = [(x - 7, y - 7, x + 7, y + 7) for x, y in points + [(bx, by)]]
    hr_label = f"HR (NIQE {hr['niqe']:.2f})"
    tw, th = d.textbbox((0, 0), hr_label, font=small)[2:]
    hr_box = next((b for b in [(w - right - 6 - tw, y_hr - 6 - th, w - right - 6, y_hr - 6),
                               (w - right - 6 - tw, y_hr + 6, w - right - 6, y_hr + 6 + th)]
                   if not _hits(b, segments[:-1]) and not any(
                       b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3]
                       for t in taken)), None) or (w - right - 6 - tw, y_hr - 6 - th,
                                                  w - right - 6, y_hr - 6)
    d.text(hr_box[:2], hr_label, fill=(0, 120, 0), font=small)
    placed = [(hr_label, hr_box)]
    taken.append(hr_box)
    for r, at in zip(blends, points):
        label = f"strength {r['strength']:g}"
        box = place_label(d, label, small, at, segments, taken, frame)
        d.text(box[:2], label, fill='black', font=small)
        placed.append((label, box))
        taken.append(box)
    box = place_label(d, 'Bicubic', small, (bx, by), segments, taken, frame)
    d.text(box[:2], 'Bicubic', fill=(170, 40, 20), font=small)
    placed.append(('Bicubic', box))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    utils.atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))
    return placed, segments, frame


def check_scores(rows, path: str) -> list:
    """`rows` when they have the shape score() gives (one Bicubic and one HR row, at least one
    blend, the numbers each needs); SRError naming `path` and the first problem otherwise."""
    def number(row: dict, key: str) -> bool:
        value = row.get(key)
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)

    def problem() -> str:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return 'expected a list of score rows (objects), as --json writes'
        methods = [r.get('method') for r in rows]
        for needed in ('Bicubic', 'HR'):
            if methods.count(needed) != 1:
                return f'expected one {needed} row, found {methods.count(needed)}'
        if 'blend' not in methods or set(methods) - {'Bicubic', 'HR', 'blend'}:
            return "expected rows of method 'blend', 'Bicubic' and 'HR'"
        for i, r in enumerate(rows):
            keys = ['niqe'] + (['psnr_y'] if r['method'] != 'HR' else []) + (
                ['strength'] if r['method'] == 'blend' else [])
            bad = [k for k in keys if not number(r, k)]
            if bad:
                return f'row {i} ({r["method"]}): {bad[0]} is not a number'
        return ''
    why = problem()
    if why:
        raise utils.SRError(f'{path}: not a scores file ({why})')
    return rows


def write_json(rows: list, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(rows, f, indent=2)
            f.write('\n')
    utils.atomic_write(path, write)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='data/Set14', help='folder of HR images (default: %(default)s)')
    p.add_argument('--weight_psnr', default=None, metavar='PATH',
                   help='strength 0: the SRResNet weights (default: weights/srresnet_x{S}.pth)')
    utils.add_flags(p, 'weight', 'upscale_factor', 'tile',
                    weight=utils.Default(None, 'weights/srgan_x{S}.pth, strength 1'))
    p.add_argument('--strengths', nargs='+', type=utils.number(float, 0, 1),
                   default=[0, 0.25, 0.5, 0.75, 1], metavar='S',
                   help='detail strengths to score (default: 0 0.25 0.5 0.75 1)')
    p.add_argument('--out', default='images/strength_tradeoff.png',
                   help='the plot, PNG (default: %(default)s)')
    p.add_argument('--json', help='also write the scores here (default: none)')
    p.add_argument('--from_json', help='draw these saved scores instead of computing them '
                                       '(default: compute them)')
    return p.parse_args(argv)


@utils.script
def main(argv=None) -> int:
    args = parse_args(argv)
    # every input and output is checked before any model is built
    for flag, path in (('--out', args.out), ('--json', args.json)):
        problem = path and utils.output_problem(path)
        if problem:
            raise utils.UsageError(f'{flag} {problem}')
    if args.from_json:
        utils.check_input(args.from_json)
        try:
            with open(args.from_json) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            raise utils.SRError(f'{args.from_json}: not a scores file ({e})') from None
        check_scores(rows, args.from_json)
        scale = args.upscale_factor or utils.DEFAULT_SCALE
    else:
        utils.inference_setup(args)  # --tile against --tile_overlap
        paths = utils.find_images(args.data, recursive=False)
        default_scale = args.upscale_factor or utils.DEFAULT_SCALE
        gan = utils.check_input(args.weight.path if args.weight
                                else utils.default_weight(default_scale))
        psnr = utils.check_input(args.weight_psnr or utils.default_weight(
            default_scale, 'srresnet', '--weight_psnr'))
        scale, rows = score(args.data, psnr, gan, args.strengths, args.upscale_factor,
                            args.tile, paths)
    if args.json:
        write_json(rows, args.json)
    name = os.path.basename(os.path.normpath(args.data))
    draw(rows, f'Detail strength on {name} x{scale}: SRResNet (0) to SRGAN (1)', args.out)
    for r in rows:
        label = r['method'] if r['strength'] is None else f"strength {r['strength']:g}"
        psnr = f"{r['psnr_y']:.2f} dB" if 'psnr_y' in r else '-'
        print(f"{label:14} PSNR-Y {psnr:>9}  NIQE {r['niqe']:.3f}")
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
