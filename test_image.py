"""Super-resolve one image, or every image in a folder, with a trained SRResNet/SRGAN generator.

    python test_image.py --image photo.jpg --weight weights/srgan_x4.pth
    python test_image.py --image data/Set5 --weight weights/srresnet_x4.pth --downsample bicubic
    python test_image.py --image photo.jpg --strength 0.5    # half SRResNet, half SRGAN

For each input NAME it writes, under {out_dir}/{stem}/:
    sr_NAME        the super-resolved image
    bicubic_NAME   the network input upscaled with bicubic, for comparison
    lr_NAME        the input actually fed to the network
    hr_NAME        (--downsample bicubic only) the ground truth the metrics compare against
The format follows NAME's extension (PNG when Pillow cannot write that format), or --ext.
The outputs keep what the input was (docs/photos.md): grey stays grey, 16-bit grey stays
16-bit, transparency, the ICC profile and EXIF are kept (orientation applied once, then 1).

--outscale S resizes the network's output (MATLAB bicubic) to S times the input's size;
--ensemble averages the network over the 8 flips and rotations of the input (8x the time).

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
import signal
import sys

if __name__ == '__main__':  # Ctrl-C while torch loads: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

import torch

from model import Generator
from utils import (DEFAULT_SCALE, EXIT_FAILED, EXTENSIONS, PRECISION_NAMES, ImageError,
                   PhotoOptions, UsageError, add_flags, check_input, check_output_dir,
                   check_outputs, check_pixels, default_weight, error, find_images,
                   generator_from_flags, header_bits, inference_model, inference_setup,
                   load_blend, load_generator, number, photo_output_name, photo_outputs,
                   process_image, script, set_max_megapixels, warn)


# ---------------------------------------------------------------------------------------------
# One image: utils.process_image does the work; this prints it
# ---------------------------------------------------------------------------------------------

def format_metrics(m: dict) -> str:
    return (f"PSNR-Y {m['psnr_y']:6.2f} dB  SSIM-Y {m['ssim_y']:.4f}  "
            f"PSNR-YCbCr {m['psnr_ycbcr']:6.2f} dB  SSIM-YCbCr {m['ssim_ycbcr']:.4f}")


def report(result: dict) -> None:
    (w, h), (nw, nh), (ow, oh) = result['in_size'], result['net_size'], result['out_size']
    sec = result['seconds']
    tiles = f", tiles of {result['tile']}" if result['tile'] else ''
    final = f' (network) -> {ow}x{oh} (--outscale)' if (ow, oh) != (nw, nh) else ''
    for note in result['notes']:
        warn(note)
    print(f"{os.path.basename(result['path'])}: {w}x{h} -> {nw}x{nh}{final}, {sec:.2f} s, "
          f"{nw * nh / 1e6 / max(sec, 1e-9):.2f} MP/s{tiles}", flush=True)
    if result['metrics']:
        print(f"  bicubic  {format_metrics(result['metrics']['bicubic'])}")
        print(f"  SR       {format_metrics(result['metrics']['sr'])}", flush=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Super-resolve an image or a folder of images.')
    p.add_argument('--image', required=True, help='input image, or a folder of images')
    add_flags(p, 'upscale_factor', 'weight', 'cuda', 'out_dir', 'tile', 'amp', 'max_megapixels',
              'ensemble', 'outscale')
    p.add_argument('--alpha', choices=['bicubic', 'network'], default='bicubic',
                   help='how transparency is upscaled: bicubic, or the generator run on the '
                        'alpha channel replicated to RGB (default: bicubic)')
    p.add_argument('--ext', choices=['auto', *EXTENSIONS], default='auto', type=str.lower,
                   help="output format: auto keeps the input's where Pillow writes it (PNG "
                        'for GIF); 16-bit grey goes to PNG or TIFF only (default: auto)')
    p.add_argument('--quality', type=number(int, 1, 100), default=None, metavar='Q',
                   help='JPEG / WebP quality, 1-100 (default: 95)')
    p.add_argument('--strength', type=number(float, 0, 1), default=None, metavar='S',
                   help='detail strength: blend --weight_psnr (0) and --weight (1) parameter '
                        'by parameter (default: --weight alone)')
    p.add_argument('--weight_psnr', default=None, metavar='PATH',
                   help='the SRResNet end of --strength, of the same scale and settings as '
                        '--weight (default: weights/srresnet_x{S}.pth)')
    p.add_argument('--downsample', choices=['none', 'bicubic'], default='none',
                   type=str.lower,
                   help='bicubic: shrink the input first and score the result against it '
                        '(PSNR/SSIM, as evaluate.py) (default: none)')
    return p.parse_args(argv)


def input_files(image: str) -> list:
    """The files to process: `image` itself, or the images directly inside that folder;
    UsageError when it is missing or an empty folder."""
    if os.path.isdir(image):
        return find_images(image, recursive=False)
    return [check_input(image)]


def load_model(args: argparse.Namespace, device: torch.device) -> Generator:
    if args.strength is None:
        return generator_from_flags(args, device)
    scale = args.upscale_factor or DEFAULT_SCALE
    weight = args.weight.path if args.weight else default_weight(scale)
    if args.weight and not args.upscale_factor:  # the SRResNet end of --weight's own scale
        scale = load_generator(weight).upscale_factor
    psnr_weight = args.weight_psnr or default_weight(scale, 'srresnet', '--weight_psnr')
    return load_blend(psnr_weight, weight, args.strength, args.upscale_factor, device)


@script
def main(argv=None) -> int:
    args = parse_args(argv)
    # everything that can be checked before the model is built (README.md, "Conventions")
    if args.outscale is not None and args.downsample == 'bicubic':
        raise UsageError('--outscale does not go with --downsample bicubic (the metrics compare '
                         "at the network's scale)")
    device, dtype = inference_setup(args)
    if args.weight_psnr and args.strength is None:
        warn('--weight_psnr is used only with --strength; running --weight alone')
    paths = input_files(args.image)
    for path in paths:  # an --ext that cannot hold a 16-bit input: exit 2 before any work
        photo_output_name('sr_', os.path.basename(path), args.ext, header_bits(path))
    check_output_dir(args.out_dir)
    check_outputs([(f'an output for {p}', out) for p in paths
                   for out in photo_outputs(p, args.out_dir, args.downsample == 'bicubic',
                                            args.ext, header_bits(p))],
                  [('--image', p) for p in paths])
    generator = load_model(args, device)
    cfg = generator.config
    # every input is checked from its header (size included) before anything is decoded
    set_max_megapixels(args.max_megapixels)
    output_scale = 1 if args.downsample == 'bicubic' else max(cfg['upscale_factor'],
                                                              args.outscale or 0)
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
    opts = PhotoOptions(scale=cfg['upscale_factor'], out_dir=args.out_dir,
                        downsample=args.downsample == 'bicubic', tile=args.tile,
                        overlap=args.tile_overlap, dtype=dtype,
                        max_megapixels=args.max_megapixels, ensemble=args.ensemble,
                        outscale=args.outscale, alpha=args.alpha, ext=args.ext,
                        quality=args.quality)
    blend = '' if args.strength is None else f', detail strength {args.strength:g}'
    print(f"x{cfg['upscale_factor']} generator ({cfg['num_blocks']} blocks{blend}) on {device}, "
          f"{PRECISION_NAMES[dtype]}, {len(paths)} image(s) -> {args.out_dir}", flush=True)

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
