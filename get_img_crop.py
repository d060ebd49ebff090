"""Cut the same regions out of several versions of an image (LR | bicubic | SR | GT) and put
them side by side.

    python get_img_crop.py --image results/baby/lr_baby.png results/baby/sr_baby.png \\
        results/baby/hr_baby.png --labels "Low Res,SRGAN,Ground Truth"
    python get_img_crop.py --image a.png b.png --box 10,20,32,32 --box 60,8,24,24
    python get_img_crop.py --image a.png b.png --coords a_coords.json

Boxes come from --coords (a JSON file this script saved earlier), from --box X,Y,W,H
(repeatable), or, when neither is given, from a window showing the first image: drag to draw
boxes, Enter to finish, Escape to cancel. Boxes are in the first image's pixels and are scaled
by the size ratio for images of other sizes (an x4 SR next to its LR), so the same region is cut
from each. Selected boxes are saved to {stem}_coords.json next to the first image. Coordinates
in a coords file must be JSON integers. A negative value in --box is read as such
(--box -5,0,10,10), and refused as outside the image.

Writes, next to each image NAME: {i}_crop_NAME (patch i, framed in its box colour) and
annotated_NAME (the image with every box drawn); and comparison_{i}.png (one per box, the
patches of all images side by side, labelled) next to the first image. With --out_dir every
output goes there instead (two inputs with the same NAME become STEM_K.EXT, K their position).
Images larger than --max_megapixels (default 100) are refused from their header.
"""
import argparse
import json
import math
import os
import signal
import sys

if __name__ == '__main__':  # Ctrl-C while torch loads: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

from PIL import Image, ImageColor

from utils import (EXIT_FAILED, PALETTE, CropError, Default, ImageError, UsageError, add_flags,
                   annotate, atomic_write, check_box, check_input, check_output_dir,
                   check_outputs, check_pixels, comparison, default_colors, error, framed_patch,
                   parse_box, read_rgb, scale_box, script, set_max_megapixels)
from utils import save_pil as save  # the format from the extension (else PNG), atomically

WINDOW_TITLE = 'get_img_crop: select boxes'
HINT = 'Drag to draw a box (as many as you like).  Enter: done   Backspace: undo   Escape: cancel'

# ---------------------------------------------------------------------------------------------
# Coordinates files (boxes, their drawing and comparisons: utils, section 11)
# ---------------------------------------------------------------------------------------------

def coords_path(image_path: str, out_dir: str = None) -> str:
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(out_dir or os.path.dirname(image_path), f'{stem}_coords.json')


def save_coords(path: str, image_path: str, size: tuple, boxes: list, colors: list) -> None:
    head = {'image': os.path.basename(image_path), 'size': list(size)}
    rows = [json.dumps({'box': list(b), 'color': c}) for b, c in zip(boxes, colors)]
    # one box per line: readable, and diffs of edited files stay small
    text = json.dumps(head)[:-1] + ', "boxes": [\n  ' + ',\n  '.join(rows) + '\n]}\n'

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def _integers(values) -> tuple:
    """The JSON numbers `values` as a tuple of ints; ValueError for anything else (floats,
    booleans, strings, Infinity and 1e400, which JSON reads as infinite floats)."""
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise ValueError(f'expected integers, got {json.dumps(values)}')
    return tuple(values)


def load_coords(path: str, size: tuple) -> tuple:
    """(boxes, colours) from a coords file, the boxes scaled from the image size it records
    to `size`."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f'{path}: file not found') from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CropError(f'{path}: not a JSON coords file ({e})') from None
    try:
        src_size = _integers(data['size'])
        boxes = [_integers(b['box']) for b in data['boxes']]
        colors = [b.get('color', default) for b, default
                  in zip(data['boxes'], default_colors(len(boxes)))]
        if len(src_size) != 2 or min(src_size) <= 0 or not boxes:
            raise ValueError
        for b, c in zip(boxes, colors):
            if len(b) != 4:
                raise ValueError
            check_box(b, src_size, path)
            ImageColor.getrgb(c)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        detail = f' ({e})' if str(e).startswith('expected integers') else ''
        raise CropError(f'{path}: not a coords file{detail}; expected {{"size": [W, H], '
                        '"boxes": [{"box": [X, Y, W, H]}, ...]} with integers, as this script '
                        'saves') from None
    return [scale_box(b, src_size, size) for b in boxes], colors


# ---------------------------------------------------------------------------------------------
# Interactive selection (tkinter from the standard library, Pillow's ImageTk)
# ---------------------------------------------------------------------------------------------

def window_scale(img_size: tuple, screen_size: tuple) -> float:
    """Display scale of the image in the selection window: shrink to fit 90% of the screen,
    enlarge small images by a whole factor (at most 4) so boxes are easy to draw."""
    fit = min(0.9 * screen_size[0] / img_size[0], 0.85 * screen_size[1] / img_size[1])
    if fit >= 2:
        return float(min(4, math.floor(fit)))
    return min(1.0, fit)


def select_boxes(img: Image.Image, name: str) -> list:
    """Let the user drag boxes on `img`; returns them in image pixels ([] if cancelled).
    Raises UsageError when no window can be opened (no display, or no Tk)."""
    try:
        import tkinter as tk
        from PIL import ImageTk
        root = tk.Tk()
    except Exception as e:  # no display, or Python built without Tk
        raise UsageError(f'cannot open a window to select boxes ({str(e).splitlines()[0]}); '
                         'pass --box X,Y,W,H (repeatable) or --coords FILE') from None
    root.title(f'{WINDOW_TITLE} ({name})')
    scale = window_scale(img.size, (root.winfo_screenwidth(), root.winfo_screenheight()))
    shown = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                       Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    print(f'select boxes in the window: {name} shown at scale {scale:g}', flush=True)
    # the image at the window's top-left corner (window pixel = canvas pixel), the hint below
    canvas = tk.Canvas(root, width=shown.width, height=shown.height, highlightthickness=0,
                       borderwidth=0, cursor='crosshair')
    canvas.pack(anchor='nw')
    tk.Label(root, text=HINT, anchor='w', justify='left',
             wraplength=max(shown.width, 320)).pack(anchor='nw', fill='x')
    photo = ImageTk.PhotoImage(shown)
    canvas.create_image(0, 0, image=photo, anchor='nw')
    boxes, drawn, state = [], [], {'start': None, 'rubber': None, 'done': False}

    def to_image(v: float, limit: int) -> int:
        return min(max(round(v / scale), 0), limit)

    def press(event):
        state['start'] = (event.x, event.y)
        color = PALETTE[len(boxes) % len(PALETTE)]
        state['rubber'] = canvas.create_rectangle(event.x, event.y, event.x, event.y,
                                                  outline=color, width=2)

    def drag(event):
        if state['start']:
            canvas.coords(state['rubber'], *state['start'], event.x, event.y)

    def release(event):
        if not state['start']:
            return
        (xa, ya), (xb, yb) = state['start'], (event.x, event.y)
        state['start'] = None
        x0, x1 = to_image(min(xa, xb), img.width), to_image(max(xa, xb), img.width)
        y0, y1 = to_image(min(ya, yb), img.height), to_image(max(ya, yb), img.height)
        if x1 - x0 < 1 or y1 - y0 < 1:  # a click, not a drag
            canvas.delete(state['rubber'])
            return
        boxes.append((x0, y0, x1 - x0, y1 - y0))
        drawn.append(state['rubber'])

    def undo(_event):
        if boxes:
            boxes.pop()
            canvas.delete(drawn.pop())

    def finish(_event=None):
        state['done'] = True
        root.destroy()

    def cancel(_event=None):
        root.destroy()

    canvas.bind('<ButtonPress-1>', press)
    canvas.bind('<B1-Motion>', drag)
    canvas.bind('<ButtonRelease-1>', release)
    root.bind('<Return>', finish)
    root.bind('<KP_Enter>', finish)
    root.bind('<BackSpace>', undo)
    root.bind('<Escape>', cancel)
    root.protocol('WM_DELETE_WINDOW', cancel)
    root.focus_force()
    root.mainloop()
    return boxes if state['done'] else []


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def output_names(paths: list, out_dir: str = None) -> list:
    """(folder, NAME) for each image's crops: next to the image, or in out_dir, where a NAME
    that two images share becomes STEM_K.EXT (K: the image's position in --image, from 1)."""
    names = [os.path.basename(p) for p in paths]
    if not out_dir:
        return [(os.path.dirname(p), n) for p, n in zip(paths, names)]
    return [(out_dir, n if names.count(n) == 1 else
             f'{os.path.splitext(n)[0]}_{k}{os.path.splitext(n)[1]}')
            for k, n in enumerate(names, 1)]


def crop_outputs(args: argparse.Namespace, count: int) -> list:
    """(what, path) of every file a run with `count` boxes writes, for utils.check_outputs."""
    outputs = []
    for path, (folder, name) in zip(args.image, output_names(args.image, args.out_dir)):
        outputs += [(f'the crop {i} of {path}', os.path.join(folder, f'{i}_crop_{name}'))
                    for i in range(count)]
        outputs.append((f'the annotated copy of {path}', os.path.join(folder,
                                                                      f'annotated_{name}')))
    out_dir = args.out_dir or os.path.dirname(args.image[0]) or '.'
    outputs += [(f'the comparison {i}', os.path.join(out_dir, f'comparison_{i}.png'))
                for i in range(count)]
    if not args.coords:
        outputs.append(('the boxes file', coords_path(args.image[0], args.out_dir)))
    return outputs


def write_crops(path: str, img: Image.Image, boxes: list, colors: list, first_size: tuple,
                folder: str, name: str) -> list:
    """Write {i}_crop_NAME and annotated_NAME in `folder`; returns the bare patches."""
    scaled = [scale_box(b, first_size, img.size) for b in boxes]
    for i, (box, color) in enumerate(zip(scaled, colors)):
        save(framed_patch(img, box, color), os.path.join(folder, f'{i}_crop_{name}'))
    save(annotate(img, scaled, colors), os.path.join(folder, f'annotated_{name}'))
    print(f'{path}: {img.width}x{img.height}, {len(scaled)} patch(es)')
    return [img.crop((x, y, x + w, y + h)) for x, y, w, h in scaled]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Cut matching patches out of several images and '
                                            'compare them side by side.')
    p.add_argument('--image', nargs='+', required=True,
                   help='images to crop; boxes are given in the first one\'s pixels')
    p.add_argument('--coords', help='JSON coords file saved by an earlier run '
                                    '(default: --box, else select in a window)')
    p.add_argument('--box', action='append', default=[], metavar='X,Y,W,H',
                   help='a box in the first image; repeatable (default: --coords, else select '
                        'in a window)')
    p.add_argument('--labels', help='comma-separated captions, one per image '
                                    '(default: the file names without extension)')
    add_flags(p, 'out_dir', 'max_megapixels',
              out_dir=Default(None, 'crops and annotated images next to each image, the '
                                    'comparisons and the boxes next to the first'))
    argv = sys.argv[1:] if argv is None else list(argv)
    # argparse takes '-5,0,10,10' for an option: glue such a value to its --box
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1] == '--box' and argv[i][:1] == '-' and argv[i][1:2].isdigit():
            argv[i - 1:i + 1] = [f'--box={argv[i]}']
    return p.parse_args(argv)


def get_boxes(args: argparse.Namespace, first: Image.Image) -> tuple:
    """(boxes in the first image's pixels, their colours), from --coords, --box or the
    window."""
    if args.coords:
        return load_coords(args.coords, first.size)
    if args.box:
        boxes = [parse_box(b) for b in args.box]
        try:
            for text, b in zip(args.box, boxes):
                check_box(b, first.size, f'--box {text}')
        except CropError as e:  # a flag that does not fit the image
            raise UsageError(str(e)) from None
    else:
        boxes = select_boxes(first, os.path.basename(args.image[0]))
        if not boxes:
            raise CropError('no boxes selected (cancelled); nothing written')
    colors = default_colors(len(boxes))
    path = coords_path(args.image[0], args.out_dir)
    try:
        save_coords(path, args.image[0], first.size, boxes, colors)
    except OSError as e:
        raise CropError(f'{path}: cannot save the boxes ({e})') from None
    print(f'saved {len(boxes)} box(es) to {path}')
    return boxes, colors


@script
def main(argv=None) -> int:
    args = parse_args(argv)
    labels = ([s.strip() for s in args.labels.split(',')] if args.labels else
              [os.path.splitext(os.path.basename(p))[0] for p in args.image])
    if len(labels) != len(args.image):
        raise UsageError(f'--labels gives {len(labels)} label(s) for {len(args.image)} '
                         'image(s)')
    if args.coords and args.box:
        raise UsageError('give either --coords or --box, not both')
    for path in args.image + ([args.coords] if args.coords else []):
        check_input(path)
    if args.out_dir:  # before any image is read (README.md, "Conventions")
        check_output_dir(args.out_dir)
    inputs = [('--image', p) for p in args.image] + [('--coords', args.coords)]
    if args.box:  # with --coords or a selection, once the boxes are known
        check_outputs(crop_outputs(args, len(args.box)), inputs)
    set_max_megapixels(args.max_megapixels)
    images, failed = {}, 0
    for path in args.image:
        try:
            check_pixels(path, args.max_megapixels)
            images[path] = read_rgb(path)
        except ImageError as e:
            error(str(e))
            failed += 1
    first = args.image[0]
    if first not in images:
        return EXIT_FAILED
    if args.out_dir:
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as e:
            raise UsageError(f'{args.out_dir}: cannot create the output folder '
                             f'({e.strerror or e})') from None
    boxes, colors = get_boxes(args, images[first])
    check_outputs(crop_outputs(args, len(boxes)), inputs)

    patches = [[] for _ in boxes]
    kept_labels = []
    hint = '' if args.out_dir else '; pass --out_dir to write the outputs elsewhere'
    for path, label, (folder, name) in zip(args.image, labels,
                                           output_names(args.image, args.out_dir)):
        if path not in images:
            continue
        try:
            row = write_crops(path, images[path], boxes, colors, images[first].size, folder,
                              name)
        except OSError as e:
            error(f'{path}: cannot write its crops ({e}){hint}')
            failed += 1
            continue
        for i, patch in enumerate(row):
            patches[i].append(patch)
        kept_labels.append(label)
    if not kept_labels:
        return EXIT_FAILED
    out_dir = args.out_dir or os.path.dirname(first) or '.'
    try:
        for i, row in enumerate(patches):
            out = save(comparison(row, kept_labels), os.path.join(out_dir, f'comparison_{i}.png'))
            print(f'wrote {out}')
    except OSError as e:
        error(f'{out_dir}: cannot write the comparison pictures ({e}){hint}')
        return EXIT_FAILED
    return EXIT_FAILED if failed else 0


if __name__ == '__main__':
    sys.exit(main())
