"""Super-resolve one image, or every image in a folder, with a trained SRResNet/SRGAN generator.

    python test_image.py --image photo.jpg --weight weights/srgan_x4.pth
    python test_image.py --image data/Set5 --weight weights/srresnet_x4.pth --downsample bicubic
    python test_image.py --image photo.jpg --strength 0.5    # half SRResNet, half SRGAN

For each input NAME it writes, under {out_dir}/{stem}/:
    sr_NAME        the super-resolved image
    bicubic_NAME   the network input upscaled with bicubic, for comparison
    lr_NAME        the input actually fed to the network
    hr_NAME        (--downsample bicubic only) the ground truth the metrics compare against
The format follows NAME's extension (PNG when Pillow cannot write that format).

With --downsample bicubic the input is first cropped to a multiple of the scale and shrunk with
the project's degradation (utils.downscale), so the original is the ground truth, and PSNR/SSIM
of bicubic and SR are printed (the same pipeline and metrics as evaluate.py).

Inference is tiled (bounded memory; the overlap makes tiles agree with a whole-image run),
BatchNorm is folded into the convolutions, activations are channels_last, and bf16 autocast is
used where the hardware supports it (--amp auto).

--strength S sets the amount of GAN detail without retraining (network interpolation, Wang et al.
ESRGAN): every parameter is (1 - S) x --weight_psnr's (SRResNet) + S x --weight's (SRGAN); 0 is
the SRResNet's fidelity, 1 the SRGAN's texture.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from model import Generator
from utils import (EXIT_FAILED, MAX_MEGAPIXELS, CheckpointError, CheckpointPathError, ImageError,
                   UsageError, add_inference_flags, check_pixels, downscale, error, fail,
                   find_images, image_metrics, imresize, inference_model, inference_setup,
                   load_blend, load_generator, load_image, max_tile, modcrop, number,
                   output_format, output_problem, pick_tile, save_image, set_max_megapixels,
                   super_resolve, TILE_OVERLAP)

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
# Default weights per scale ({scale} = --upscale_factor, 4 when it is not given). Without an
# SRGAN file for a scale, the SRResNet file next to it is used instead.
DEFAULT_WEIGHT = os.path.join(WEIGHTS_DIR, 'srgan_x{scale}.pth')
DEFAULT_PSNR_WEIGHT = os.path.join(WEIGHTS_DIR, 'srresnet_x{scale}.pth')
DEFAULT_SCALE = 4
BT601_LUMA = (0.299, 0.587, 0.114)  # the weights of Y in utils.rgb_to_ycbcr, normalised


# ---------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------

@dataclass
class Options:
    scale: int
    out_dir: str = 'results'
    downsample: bool = False
    tile: int = None          # None: pick from the image size and device; 0: whole image
    overlap: int = TILE_OVERLAP
    dtype: torch.dtype = None  # autocast dtype, None for fp32


def is_grayscale(rgb: torch.Tensor) -> bool:
    return torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], rgb[2])


def to_grayscale(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma in all three channels: the Y that utils' metrics see is unchanged."""
    luma = sum(wt * ch for wt, ch in zip(BT601_LUMA, rgb))
    return luma.expand(3, -1, -1).contiguous()


def output_name(prefix: str, name: str) -> str:
    """prefix + name, with a .png extension when Pillow cannot write name's format."""
    return output_format(prefix + name)[0]


def process_image(path: str, model: nn.Module, opts: Options) -> dict:
    """Super-resolve one file and write its outputs; returns what to report.

    Raises ImageError (one line naming the file) for input that cannot be used."""
    s = opts.scale
    rgb, alpha = load_image(path)
    gray = is_grayscale(rgb)
    hr = hr_alpha = None
    if opts.downsample:
        hr = modcrop(rgb, s)
        hr_alpha = None if alpha is None else modcrop(alpha, s)
        h, w = hr.shape[-2:]
        if min(h, w) < 11 + 2 * s:  # SSIM's 11x11 window after cropping `s` border pixels
            raise ImageError(f'{path}: {rgb.shape[2]}x{rgb.shape[1]} is too small for '
                             f'--downsample bicubic at x{s} (needs at least {11 + 2 * s} px)')
        lr = downscale(hr, s)
        lr_alpha = None if alpha is None else downscale(hr_alpha, s)
    else:
        lr, lr_alpha = rgb, alpha
    h, w = lr.shape[-2:]
    tile = opts.tile
    if tile is None:
        device = next(model.parameters()).device
        tile = pick_tile(h, w, max_tile(s, device, opts.dtype), opts.overlap)

    start = time.perf_counter()
    sr = super_resolve(model, lr, s, tile, opts.overlap, opts.dtype)
    seconds = time.perf_counter() - start
    bicubic = imresize(lr, s)
    if gray:  # the network tints grey input slightly; bicubic keeps it grey by itself
        sr = to_grayscale(sr)
    sr_alpha = None if lr_alpha is None else imresize(lr_alpha, s).clamp(0, 1)

    name = os.path.basename(path)
    folder = os.path.join(opts.out_dir, os.path.splitext(name)[0])
    outputs = [(sr, 'sr_', sr_alpha), (bicubic, 'bicubic_', sr_alpha), (lr, 'lr_', lr_alpha)]
    if hr is not None:
        outputs.append((hr, 'hr_', hr_alpha))
    written = []
    for image, prefix, a in outputs:
        out = os.path.join(folder, output_name(prefix, name))
        try:
            save_image(image, out, alpha=a)
        except OSError as e:
            raise ImageError(f'{out}: cannot write ({e})') from None
        written.append(out)

    metrics = None
    if hr is not None:
        metrics = {'bicubic': image_metrics(bicubic, hr, s), 'sr': image_metrics(sr, hr, s)}
    return {'path': path, 'in_size': (w, h), 'out_size': (w * s, h * s), 'tile': tile,
            'seconds': seconds, 'metrics': metrics, 'outputs': written}


def format_metrics(m: dict) -> str:
    return (f"PSNR-Y {m['psnr_y']:6.2f} dB  SSIM-Y {m['ssim_y']:.4f}  "
            f"PSNR-YCbCr {m['psnr_ycbcr']:6.2f} dB  SSIM-YCbCr {m['ssim_ycbcr']:.4f}")


def report(result: dict) -> None:
    (w, h), (ow, oh) = result['in_size'], result['out_size']
    sec = result['seconds']
    tiles = f", tiles of {result['tile']}" if result['tile'] else ''
    print(f"{os.path.basename(result['path'])}: {w}x{h} -> {ow}x{oh}, {sec:.2f} s, "
          f"{ow * oh / 1e6 / max(sec, 1e-9):.2f} MP/s{tiles}", flush=True)
    if result['metrics']:
        print(f"  bicubic  {format_metrics(result['metrics']['bicubic'])}")
        print(f"  SR       {format_metrics(result['metrics']['sr'])}", flush=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Super-resolve an image or a folder of images.')
    p.add_argument('--image', required=True, help='input image, or a folder of images')
    add_inference_flags(p, 'image', 'weights/srgan_x{S}.pth for --upscale_factor S, 4 if not '
                        'given; weights/srresnet_x{S}.pth when there is no SRGAN file for S')
    p.add_argument('--strength', type=number(float, 0, 1), default=None, metavar='S',
                   help='detail strength: blend --weight_psnr (0) and --weight (1) parameter '
                        'by parameter (default: --weight alone)')
    p.add_argument('--weight_psnr', default=None,
                   help='the SRResNet end of --strength, of the same scale and settings as '
                        '--weight (default: weights/srresnet_x{S}.pth)')
    p.add_argument('--downsample', choices=['None', 'none', 'bicubic'], default='None',
                   help='bicubic: shrink the input first and compare against it (metrics)')
    p.add_argument('--max_megapixels', type=number(float, 0, low_open=True),
                   default=MAX_MEGAPIXELS,
                   help='refuse inputs whose output would be larger (checked from the file '
                        'header, before decoding)')
    return p.parse_args(argv)


def input_files(image: str) -> list:
    """The files to process: `image` itself, or the images directly inside that folder."""
    if os.path.isdir(image):
        return find_images(image, recursive=False)
    return [image]  # a missing or bad file is reported by process_image


def default_weight(scale: int) -> tuple:
    """(path, notice): the SRGAN weights for `scale`, else the SRResNet ones beside them with a
    one-line notice saying so; CheckpointError naming both files when neither is there."""
    srgan = DEFAULT_WEIGHT.replace('{scale}', str(scale))
    if os.path.isfile(srgan):
        return srgan, None
    srresnet = os.path.join(os.path.dirname(srgan), f'srresnet_x{scale}.pth')
    if os.path.isfile(srresnet):
        return srresnet, (f'note: no SRGAN weights for x{scale} ({srgan}); using the SRResNet '
                          f'weights {srresnet}')
    raise CheckpointPathError(f'{srgan}: the default weights file is not there, nor '
                              f'{srresnet}, so there are no x{scale} weights; pass --weight FILE '
                              "with a weights file from train.py (or the original project's "
                              'generator state_dict)')


def load_model(args: argparse.Namespace, device: torch.device) -> Generator:
    scale = args.upscale_factor or DEFAULT_SCALE
    weight = args.weight
    if weight is None:
        weight, notice = default_weight(scale)
        if notice:
            print(notice, file=sys.stderr, flush=True)
    if args.strength is None:
        return load_generator(weight, args.upscale_factor, device)
    psnr_weight = args.weight_psnr or DEFAULT_PSNR_WEIGHT.replace('{scale}', str(scale))
    if args.weight_psnr is None and not os.path.isfile(psnr_weight):
        raise CheckpointPathError(f'{psnr_weight}: the default SRResNet weights file is not '
                                  'there; pass --weight_psnr FILE for the SRResNet end of '
                                  '--strength')
    return load_blend(psnr_weight, weight, args.strength, args.upscale_factor, device)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # everything that can be checked before the work (README.md, "Conventions")
        device, dtype = inference_setup(args)
        paths = input_files(args.image)
        generator = load_model(args, device)
        problem = output_problem(args.out_dir, folder=True)
        if problem:
            raise UsageError(f'--out_dir {problem}')
    except (ValueError, ImageError, CheckpointError) as e:
        return fail(e)
    cfg = generator.config
    # every input is checked from its header (size included) before anything is decoded
    set_max_megapixels(args.max_megapixels)
    output_scale = 1 if args.downsample == 'bicubic' else cfg['upscale_factor']
    failed, checked = [], []
    for path in paths:
        try:
            check_pixels(path, args.max_megapixels, output_scale)
            checked.append(path)
        except ImageError as e:
            error(str(e))
            failed.append(path)
    if not checked:
        return EXIT_FAILED
    model = inference_model(generator, device)
    opts = Options(scale=cfg['upscale_factor'], out_dir=args.out_dir,
                   downsample=args.downsample == 'bicubic', tile=args.tile,
                   overlap=args.tile_overlap, dtype=dtype)
    precision = {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}[dtype]
    blend = '' if args.strength is None else f', detail strength {args.strength:g}'
    print(f"x{cfg['upscale_factor']} generator ({cfg['num_blocks']} blocks{blend}) on {device}, "
          f"{precision}, {len(paths)} image(s) -> {args.out_dir}", flush=True)

    results = []
    for path in checked:
        try:
            result = process_image(path, model, opts)
        except ImageError as e:
            error(str(e))
            failed.append(path)
            continue
        except torch.OutOfMemoryError:
            error(f'{path}: out of memory; try a smaller --tile')
            failed.append(path)
            continue
        report(result)
        results.append(result)

    measured = [r['metrics'] for r in results if r['metrics']]
    if len(measured) > 1:
        print(f'mean over {len(measured)} images:')
        for method in ('bicubic', 'sr'):
            mean = {k: sum(m[method][k] for m in measured) / len(measured)
                    for k in measured[0][method]}
            print(f"  {'bicubic' if method == 'bicubic' else 'SR':8} {format_metrics(mean)}")
    if failed:
        if len(paths) > 1:  # one image already said what went wrong, in its one line
            error(f'{len(failed)} of {len(paths)} image(s) failed')
        return EXIT_FAILED
    return 0


if __name__ == '__main__':
    sys.exit(main())
