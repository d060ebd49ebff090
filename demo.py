"""A local web page to super-resolve an image, compare the models and download the result.

    python demo.py                      # serves http://127.0.0.1:7860
    python demo.py --port 8000 --cuda   # another port, on the GPU

Upload an image (or pick one from images/), choose the scale, the model (SRResNet, SRGAN, or a
blend of the two set by the detail-strength slider, as test_image.py --strength), optionally
the self-ensemble (--ensemble) and an output scale (--outscale), and press Super-resolve. The
page shows bicubic and SR under a before/after slider, the time taken and the output size,
and the test_image.py command that writes the same file. Click two corners on
the input to choose a box: the crop comparison puts LR | Bicubic | SRResNet | SRGAN patches of
it side by side, enlarged with nearest neighbour (get_img_crop.py's drawing). The download is a
PNG bit-equal to test_image.py's sr_ file for a PNG input with the same settings (for another
input format, the same pixels in a PNG rather than in the input's format).

The work is test_image.py's: utils.process_image (utils.super_resolve's tiling, precision and memory
bound), utils.load_generator and load_blend; a progress bar follows its tiles. Requests run one
at a time. Bad input (not an image, corrupt, over --max_megapixels, no weights for the scale) is
a one-line message on the page. Every file the page writes (uploads, results, Gradio's cache)
lives in one temporary folder, removed on exit. The server listens on 127.0.0.1 only, unless
--host says otherwise; --share also asks Gradio for a public link. Needs the optional package
gradio (requirements-dev.txt); without it, one line says what to install (exit 2). See
docs/demo.md; tests/test_demo.py drives the page in headless Chromium.
"""
import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from utils import (MAX_MEGAPIXELS, PALETTE, TILE_OVERLAP, CheckpointError, CropError,
                   ImageError, PhotoOptions, UsageError, annotate, autocast_dtype, check_box,
                   check_pixels, comparison, default_colors, device_for, imresize,
                   inference_model, is_grayscale, line_width, list_images, load_blend,
                   load_generator, load_image, number, parse_box, process_image, read_rgb,
                   require, resolve, scale_box, script, set_max_megapixels, to_grayscale,
                   to_uint8)

ROOT = os.path.dirname(os.path.abspath(__file__))
SAMPLES_DIR = os.path.join(ROOT, 'images')
SCREENSHOT = 'demo.png'  # images/demo.png shows this page; it is no sample input
WEIGHTS_DIR = os.path.join(ROOT, 'weights')
SCALES = (2, 4, 8)
KINDS = {'SRResNet': 'srresnet', 'SRGAN': 'srgan'}
BLEND = 'Blend'
MODELS = ('SRResNet', 'SRGAN', BLEND)
DEFAULT_BOX = 32  # side in LR pixels of the box chosen before the user clicks one


def weight_file(scale: int, model: str) -> str:
    """The shipped weights file of `model` ('SRResNet' or 'SRGAN') for `scale`."""
    return os.path.join(WEIGHTS_DIR, f'{KINDS[model]}_x{scale}.pth')


def shipped_scales() -> list:
    """The scales for which weights/ holds at least one generator."""
    return [s for s in SCALES if any(os.path.isfile(weight_file(s, m)) for m in KINDS)]


def model_label(model: str, strength: float) -> str:
    return f'Blend {strength:g}' if model == BLEND else model


def command_line(name: str, scale: int, model: str, strength: float, ensemble: bool = False,
                 outscale: float = None) -> str:
    """The test_image.py command that writes the same sr_ file (its defaults: --amp auto,
    automatic tiles)."""
    cmd = f'python test_image.py --image {name} --upscale_factor {scale}'
    if model == 'SRResNet':
        cmd += f' --weight weights/srresnet_x{scale}.pth'
    elif model == BLEND:
        cmd += f' --strength {strength:g}'
    if ensemble:
        cmd += ' --ensemble'
    if outscale is not None:
        cmd += f' --outscale {outscale:g}'
    return cmd


def parse_outscale(value) -> float:
    """The page's Output scale field -> PhotoOptions.outscale: empty or 0 is None (the
    network's scale), else a finite number > 0 (as --outscale); UsageError in one line."""
    if value is None or value == '' or value == 0:
        return None
    try:
        outscale = float(value)
    except (TypeError, ValueError):
        outscale = math.nan
    if not (math.isfinite(outscale) and outscale > 0):
        raise UsageError(f"output scale: must be a number > 0 (empty or 0: the network's "
                         f'scale), got {value}')
    return outscale


def output_scale(scale: int, outscale: float) -> float:
    """The scale the megapixel limit is checked at, as test_image.py checks it."""
    return max(scale, outscale or 0)


# ---------------------------------------------------------------------------------------------
# The work, without the page
# ---------------------------------------------------------------------------------------------

@dataclass
class Input:
    path: str   # the copy the demo works on: a folder of its own, named STEM.png
    name: str   # the name the user knows it by (the upload's name)
    size: tuple  # (width, height)


@dataclass
class Result:
    input: Input
    scale: int
    model: str
    strength: float
    sr: str       # the files process_image wrote
    bicubic: str
    seconds: float
    tile: int
    command: str
    ensemble: bool = False
    outscale: float = None    # None: the network's scale
    out_size: tuple = None    # (width, height) of the sr_ file


class Worker:
    """The models and files behind the page: one device, one temporary folder."""

    def __init__(self, work_dir: str, device: torch.device, dtype, max_megapixels: float):
        self.work_dir, self.device, self.dtype = work_dir, device, dtype
        self.max_megapixels = max_megapixels
        self.models = {}   # (scale, model, strength) -> inference model
        self.count = 0
        self.lock = threading.Lock()

    def folder(self, kind: str) -> str:
        with self.lock:
            self.count += 1
            path = os.path.join(self.work_dir, kind, str(self.count))
        os.makedirs(path)
        return path

    def message(self, e: Exception, inp: Input = None) -> str:
        """One line for an error, naming the user's file rather than the demo's copy."""
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if inp is not None:
            text = text.replace(inp.path, inp.name)
        return text

    def open_input(self, path: str, name: str, scale: int) -> Input:
        """Copy an uploaded or sample file into the work folder as STEM.png (process_image
        names its outputs after the input, and PNG keeps them lossless) and check it: an
        image, under --max_megapixels at `scale`. Raises ImageError."""
        stem = os.path.splitext(name)[0] or 'image'
        copy = os.path.join(self.folder('inputs'), stem + '.png')
        shutil.copyfile(path, copy)
        inp = Input(copy, name, (0, 0))
        try:
            inp.size = check_pixels(copy, self.max_megapixels, scale)
            load_image(copy)  # a damaged body is found now, not at the first run
        except ImageError as e:
            raise ImageError(self.message(e, inp)) from None
        return inp

    def check_scale(self, inp: Input, scale: float) -> None:
        """The input under --max_megapixels at `scale` (output_scale with an outscale)."""
        try:
            check_pixels(inp.path, self.max_megapixels, scale)
        except ImageError as e:
            raise ImageError(self.message(e, inp)) from None

    def generator(self, scale: int, model: str, strength: float) -> torch.nn.Module:
        """The inference model (test_image.py's) for a choice of the page, cached; a missing
        weights file is a CheckpointError in one line."""
        key = (scale, model, strength if model == BLEND else None)
        if key not in self.models:
            ends = [weight_file(scale, m) for m in KINDS] if model == BLEND else \
                [weight_file(scale, model)]
            for path in ends:
                if not os.path.isfile(path):
                    raise CheckpointError(f'{os.path.relpath(path, ROOT)}: no such weights file, '
                                          f'so no {model} at x{scale}; pick another model or '
                                          'scale')
            g = (load_blend(*ends, strength, scale, self.device) if model == BLEND else
                 load_generator(ends[0], scale, self.device))
            if model == BLEND:  # keep the two ends and one blend, not one per strength
                for k in [k for k in self.models if k[1] == BLEND]:
                    del self.models[k]
            self.models[key] = inference_model(g, self.device)
        return self.models[key]

    def run(self, inp: Input, scale: int, model: str, strength: float,
            progress=None, ensemble: bool = False, outscale: float = None) -> Result:
        """Super-resolve as test_image.py does (ensemble: --ensemble; outscale: --outscale,
        None for the network's scale); progress(done, total) is called after each tile.
        Raises ImageError or CheckpointError."""
        self.check_scale(inp, output_scale(scale, outscale))
        net = self.generator(scale, model, strength)
        opts = PhotoOptions(scale=scale, out_dir=self.folder('results'), dtype=self.dtype,
                            ensemble=ensemble, outscale=outscale)
        try:
            out = process_image(inp.path, net, opts, progress)
        except ImageError as e:
            raise ImageError(self.message(e, inp)) from None
        except torch.OutOfMemoryError:
            raise ImageError(f'{inp.name}: out of memory at x{scale}') from None
        sr, bicubic = out['outputs'][:2]
        return Result(inp, scale, model, strength, sr, bicubic, out['seconds'], out['tile'],
                      command_line(inp.name, scale, model, strength, ensemble, outscale),
                      ensemble, outscale, out['out_size'])

    def model_patch(self, inp: Input, scale: int, model: str, box: tuple,
                    ensemble: bool = False):
        """The patch under `box` (LR pixels) of `model`'s output (at the network's scale; with
        the self-ensemble when `ensemble`), computed from the box and TILE_OVERLAP pixels
        around it: the context a tile gets, so it matches a whole run to 1/255
        (utils.TILE_OVERLAP), at a fraction of the cost. None without weights."""
        if not os.path.isfile(weight_file(scale, model)):
            return None
        lr, alpha = load_image(inp.path)
        x, y, w, h = box
        m, s = TILE_OVERLAP, scale
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(lr.shape[2], x + w + m), min(lr.shape[1], y + h + m)
        sr = resolve(self.generator(s, model, None), lr[:, y0:y1, x0:x1], s, 0, m, self.dtype,
                     ensemble=ensemble)
        if is_grayscale(lr):  # as process_image does
            sr = to_grayscale(sr)
        inside = (slice(None), slice((y - y0) * s, (y - y0 + h) * s),
                  slice((x - x0) * s, (x - x0 + w) * s))
        sr = sr[inside].clamp(0, 1)
        if alpha is not None:  # shown over white, as utils.read_rgb shows the files
            a = imresize(alpha[:, y0:y1, x0:x1], s).clamp(0, 1)[inside]
            sr = sr * a + (1 - a)
        return Image.fromarray(to_uint8(sr))

    def comparison(self, result: Result, box: tuple):
        """get_img_crop.py's comparison picture of `box`: LR | Bicubic | SRResNet | [the blend]
        | SRGAN, the model of `result` cut from its file (at its output scale), the others
        computed around the box (at the network's scale, with the result's self-ensemble)."""
        lr = read_rgb(result.input.path)
        files = {'LR': lr, 'Bicubic': read_rgb(result.bicubic)}
        labels = ['LR', 'Bicubic', 'SRResNet'] + ([model_label(BLEND, result.strength)]
                                                 if result.model == BLEND else []) + ['SRGAN']
        files[model_label(result.model, result.strength)] = read_rgb(result.sr)
        patches, kept = [], []
        for label in labels:
            if label in files:
                img = files[label]
                x, y, w, h = scale_box(box, lr.size, img.size)
                patch = img.crop((x, y, x + w, y + h))
            else:
                patch = self.model_patch(result.input, result.scale, label, box,
                                         result.ensemble)
            if patch is not None:
                patches.append(patch)
                kept.append(label)
        return comparison(patches, kept)


def default_box(size: tuple) -> tuple:
    """A DEFAULT_BOX square (smaller for small images) at the image centre."""
    side = max(1, min(DEFAULT_BOX, size[0] // 2, size[1] // 2))
    return (size[0] - side) // 2, (size[1] - side) // 2, side, side


def box_from_corners(a: tuple, b: tuple, size: tuple) -> tuple:
    """The box whose opposite corner pixels are `a` and `b` (both included), inside `size`."""
    x0, x1 = sorted(min(max(v, 0), size[0] - 1) for v in (a[0], b[0]))
    y0, y1 = sorted(min(max(v, 0), size[1] - 1) for v in (a[1], b[1]))
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def box_text(box: tuple) -> str:
    return ','.join(str(v) for v in box)


def parse_box_text(text: str, size: tuple) -> tuple:
    """'X,Y,W,H' typed on the page -> a box inside `size`; UsageError in one line."""
    box = parse_box(text.strip())
    try:
        check_box(box, size, 'box')
    except CropError as e:
        raise UsageError(str(e)) from None
    return box


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

CSS = """
#message p { margin: 0; font-weight: 600; }
#info p { margin: 0.1em 0; }
footer { display: none !important; }
"""
PICKER_SIDE = 320  # a smaller input is shown enlarged by a whole factor, so boxes are easy to click


def preview_factor(size: tuple) -> int:
    """The whole factor the input is enlarged by (nearest neighbour) for clicking boxes."""
    return max(1, min(8, PICKER_SIDE // max(size)))


def preview(img, box: tuple, corner: tuple = None):
    """The input enlarged by preview_factor with the box drawn as get_img_crop.py draws it, and
    a cross on the first corner of a box being clicked."""
    k = preview_factor(img.size)
    big = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    out = annotate(big, [tuple(v * k for v in box)], default_colors(1))
    if corner is not None:
        x, y = corner[0] * k + k // 2, corner[1] * k + k // 2
        arm, width = max(6, 2 * k), line_width(out.size)
        draw = ImageDraw.Draw(out)
        draw.line([x - arm, y, x + arm, y], fill=PALETTE[1], width=width)
        draw.line([x, y - arm, x, y + arm], fill=PALETTE[1], width=width)
    return out


def build_page(gr, worker: Worker, scales: list):
    """The Gradio Blocks of the page; every handler turns a failure into the one-line message."""
    samples = [os.path.relpath(p, ROOT) for p in list_images(SAMPLES_DIR, recursive=False)
               if os.path.basename(p) != SCREENSHOT]
    scale0 = 4 if 4 in scales else scales[0]

    with gr.Blocks(title='SRGAN-PyTorch demo') as page:
        state = gr.State({})  # per browser tab: 'input', 'box', 'corner', 'result'
        gr.Markdown('### SRGAN-PyTorch &nbsp;·&nbsp; upload or pick an image, choose scale and '
                    'model, press **Super-resolve**; click two corners on the input to compare '
                    'a crop')
        with gr.Row():
            with gr.Column(scale=5, min_width=360):
                with gr.Row():
                    upload = gr.File(label='Upload an image', file_types=['image'],
                                     type='filepath', height=70, elem_id='upload', scale=3)
                    sample = gr.Dropdown(samples, value=None, label='or a sample from images/',
                                         elem_id='sample', scale=2)
                with gr.Row():
                    scale = gr.Radio(scales, value=scale0, label='Scale', elem_id='scale',
                                     scale=2, min_width=150)
                    model = gr.Radio(list(MODELS), value='SRGAN', label='Model',
                                     elem_id='model', scale=3)
                strength = gr.Slider(0, 1, value=0.5, step=0.05, label='Detail strength of the '
                                     'blend: 0 = SRResNet, 1 = SRGAN', elem_id='strength')
                with gr.Row(equal_height=True):
                    with gr.Column(scale=3, min_width=250):
                        ensemble = gr.Checkbox(False, label='Self-ensemble (8x time)',
                                               elem_id='ensemble', container=False)
                        go = gr.Button('Super-resolve', variant='primary', elem_id='run')
                    with gr.Column(scale=2, min_width=200):  # a column: not one form with it
                        outscale = gr.Number(0, label="Output scale (0: network's)",
                                             elem_id='outscale')
                message = gr.Markdown(elem_id='message')
                picker = gr.Image(label='Input: click two corners to choose the crop box',
                                  type='pil', format='png', interactive=False, height=150,
                                  elem_id='picker', buttons=['fullscreen'])
                box = gr.Textbox(label='Crop box X,Y,W,H in input pixels (type one, Enter)',
                                 elem_id='box', max_lines=1)
            with gr.Column(scale=7, min_width=480):
                slider = gr.ImageSlider(label='Bicubic | SR: drag the handle', type='filepath',
                                        format='png', max_height=330, elem_id='slider',
                                        buttons=['fullscreen'], interactive=False)
                with gr.Row(equal_height=True):
                    info = gr.Markdown(elem_id='info')
                    download = gr.DownloadButton('Download SR (PNG)', visible=False,
                                                 elem_id='download', scale=0, min_width=180,
                                                 size='md', variant='primary')
                panel = gr.Image(label='Crop comparison, nearest neighbour', type='pil',
                                 format='png', interactive=False, elem_id='panel', height=250,
                                 buttons=['fullscreen'])

        def error_line(e: Exception, inp: Input = None) -> str:
            return f'error: {worker.message(e, inp)}'

        def picture(st: dict):
            return preview(read_rgb(st['input'].path), st['box'], st.get('corner'))

        def panel_for(st: dict):
            res = st.get('result')
            return None if res is None else worker.comparison(res, st['box'])

        def load(path, name, scale_value, st):
            st = dict(st)
            if not path:
                return {state: st}
            try:
                inp = worker.open_input(path, name, int(scale_value))
            except (ImageError, OSError) as e:
                return {message: error_line(e), state: st}
            st.update(input=inp, box=default_box(inp.size), corner=None, result=None)
            return {state: st, picker: picture(st), box: box_text(st['box']), message: '',
                    slider: None, panel: None, info: '', download: gr.update(visible=False)}

        def on_upload(path, scale_value, st):
            return load(path, os.path.basename(path or ''), scale_value, st)

        def on_sample(name, scale_value, st):
            return load(name and os.path.join(ROOT, name), name, scale_value, st)

        def on_click(st, evt: gr.SelectData):
            inp = st.get('input')
            if inp is None or evt.index is None:
                return {}
            st = dict(st)
            k = preview_factor(inp.size)
            point = tuple(int(v) // k for v in evt.index[:2])
            if st.get('corner') is None:
                st['corner'] = point
                return {state: st, picker: picture(st),
                        message: f'first corner at {point[0]},{point[1]}: now click the '
                                 'opposite one'}
            st['box'], st['corner'] = box_from_corners(st['corner'], point, inp.size), None
            return show_box(st)

        def on_box(text, st):
            inp = st.get('input')
            if inp is None:
                return {}
            st = dict(st)
            try:
                st['box'], st['corner'] = parse_box_text(text, inp.size), None
            except UsageError as e:
                return {message: error_line(e)}
            return show_box(st)

        def show_box(st):
            out = {state: st, picker: picture(st), box: box_text(st['box']), message: ''}
            try:
                out[panel] = panel_for(st)
            except (ImageError, CheckpointError) as e:
                out[message] = error_line(e, st['input'])
            return out

        def on_scale(scale_value, outscale_value, st):
            inp = st.get('input')
            try:
                out_scale = output_scale(int(scale_value), parse_outscale(outscale_value))
                if inp is not None:
                    worker.check_scale(inp, out_scale)
            except (ImageError, UsageError) as e:
                return {message: error_line(e)}
            return {message: ''}

        def on_run(scale_value, model_value, strength_value, ensemble_value, outscale_value, st,
                   progress=gr.Progress()):
            inp = st.get('input')
            if inp is None:
                return {message: 'Upload an image or pick a sample first.'}
            st = dict(st)
            s, strength_value = int(scale_value), float(strength_value)
            what = f'x{s} {model_label(model_value, strength_value)}' + (
                ' self-ensemble' if ensemble_value else '')
            progress(0, desc=what)
            def tiles_done(done: int, total: int):
                progress((done, total), desc=what, unit='tiles')

            try:
                res = worker.run(inp, s, model_value, strength_value, tiles_done,
                                 ensemble=bool(ensemble_value),
                                 outscale=parse_outscale(outscale_value))
                st['result'] = res
                compared = panel_for(st)
            except (ImageError, CheckpointError, UsageError) as e:
                return {message: error_line(e, inp)}
            (w, h), (nw, nh), (ow, oh) = inp.size, (inp.size[0] * s, inp.size[1] * s), res.out_size
            sizes = (f'{w}x{h} -> **{ow}x{oh}**' if res.outscale is None else
                     f'{w}x{h} -> {nw}x{nh} -> **{ow}x{oh}**')
            options = ((', self-ensemble' if res.ensemble else '') +
                       (f', outscale {res.outscale:g}' if res.outscale is not None else ''))
            tiles = f'tiles of {res.tile}' if res.tile else 'whole image'
            precision = {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}
            text = (f'**{inp.name}**: {sizes} (x{s}, '
                    f'{model_label(res.model, res.strength)}{options}) in '
                    f'**{res.seconds:.2f} s** on '
                    f'{worker.device.type}, {precision[worker.dtype]}, {tiles}  \n'
                    f'the file of `{res.command}`')
            return {state: st, message: '', slider: (res.bicubic, res.sr), info: text,
                    download: gr.update(value=res.sr, visible=True,
                                        label=f'Download {os.path.basename(res.sr)}'),
                    panel: compared}

        everything = [state, picker, box, message, slider, panel, info, download]
        upload.upload(on_upload, [upload, scale, state], everything)
        sample.change(on_sample, [sample, scale, state], everything)
        scale.change(on_scale, [scale, outscale, state], [message])
        outscale.change(on_scale, [scale, outscale, state], [message])
        strength.input(lambda: BLEND, None, model)
        picker.select(on_click, [state], [state, picker, box, message, panel],
                      concurrency_id='device')
        box.submit(on_box, [box, state], [state, picker, box, message, panel],
                   concurrency_id='device')
        go.click(on_run, [scale, model, strength, ensemble, outscale, state], everything,
                 concurrency_id='device')
    return page


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Serve a local web page to super-resolve, compare '
                                            'and download images.')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on (default: 127.0.0.1, this machine only; '
                        '0.0.0.0 opens it to the network)')
    p.add_argument('--port', type=number(int, 1, 65535), default=7860,
                   help='port to listen on (default: 7860)')
    p.add_argument('--cuda', action='store_true', help='run on the GPU')
    p.add_argument('--amp', choices=['auto', 'off', 'bf16', 'fp16'], default='auto',
                   help='autocast: auto = bf16 where the GPU/CPU supports it, else fp32')
    p.add_argument('--max_megapixels', type=number(float, 0, low_open=True),
                   default=MAX_MEGAPIXELS,
                   help='refuse inputs whose output would be larger (checked from the file '
                        f'header, before decoding) (default: {MAX_MEGAPIXELS:g})')
    p.add_argument('--share', action='store_true',
                   help="also open a public *.gradio.live link through Gradio's servers "
                        '(default: none)')
    return p.parse_args(argv)


def stop(signum, frame):
    raise KeyboardInterrupt


def serve(gr, args: argparse.Namespace, worker: Worker, scales: list) -> int:
    """Serve the page until Ctrl+C or SIGTERM (the normal end: status 0)."""
    page = build_page(gr, worker, scales)
    page.queue(default_concurrency_limit=1)  # one request on the device at a time
    # SIGTERM ends the server like Ctrl+C, so the temporary folder is removed either way
    signal.signal(signal.SIGTERM, stop)
    try:
        _, url, share_url = page.launch(server_name=args.host, server_port=args.port,
                                        share=args.share, prevent_thread_lock=True,
                                        quiet=True, ssr_mode=False, css=CSS,
                                        allowed_paths=[worker.work_dir])
    except OSError as e:
        raise UsageError(f'--host {args.host} --port {args.port}: cannot listen there '
                         f'({str(e).splitlines()[0]})') from None
    print(f'demo: serving {url.rstrip("/")} on {worker.device} (Ctrl+C to stop)', flush=True)
    if share_url:
        print(f'demo: public link {share_url}', flush=True)
    try:
        while page.is_running:
            threading.Event().wait(0.5)
    except KeyboardInterrupt:
        pass
    page.close()
    return 0


@script
def main(argv=None) -> int:
    args = parse_args(argv)
    # everything that can be checked before Gradio is imported (seconds) and a folder made
    device = device_for(args.cuda)
    dtype = autocast_dtype(args.amp, device)
    scales = shipped_scales()
    if not scales:
        raise UsageError(f'{WEIGHTS_DIR}: no generator weights (srresnet_xS.pth or '
                         'srgan_xS.pth); train some with train.py')
    work_dir = tempfile.mkdtemp(prefix='srgan_demo_')
    try:
        # Gradio keeps uploads and served files here; set before it is imported
        os.environ['GRADIO_TEMP_DIR'] = os.path.join(work_dir, 'gradio')
        os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
        gr = require('gradio', 'demo.py')
        set_max_megapixels(args.max_megapixels)
        return serve(gr, args, Worker(work_dir, device, dtype, args.max_megapixels), scales)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
