"""Build a generator weights file for another scale from a trained one of any scale.

    python scripts/transfer_scale.py --weight weights/srresnet_x4.pth --upscale_factor 2 \
        --output init_x2.pth

SRResNet's head, 16 residual blocks, body_tail and tail do not depend on the scale; only the
number of sub-pixel upsample blocks does (log2 of the scale). Every tensor with a counterpart is
copied. Going down in scale keeps the first upsample blocks and drops the last ones. Going up
adds blocks after the existing ones, initialised with ICNR (Aitken et al. 2017, "Checkerboard
artifact free sub-pixel convolution") from an identity kernel and with a PReLU slope of 1, so
that each new block starts as exactly a nearest-neighbour 2x upsampling of the features: the new
network begins as the old one followed by a blocky enlargement, not as noise.

Going down in scale leaves the tail reading features it was not trained on, so the result starts
far from a good image. --adapt_dir fits the scale-specific layers (upsample blocks and tail) on
random crops with the head and body frozen: the body's features are computed once per crop and
cached, so each step costs only the small upsampling part, several times less than a full
training step. That is the cheap first stage; train.py --pretrain then fine-tunes everything.
"""
import argparse
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402
from model import Generator, UpsampleBlock  # noqa: E402


def icnr_identity_(block: UpsampleBlock) -> None:
    """Make `block` a nearest-neighbour 2x upsampling of its input features.

    ICNR: the conv's 4C outputs are 4 copies of one C-output kernel, one copy per sub-pixel
    position, so PixelShuffle puts the same value in all four pixels of each 2x2 cell. The kernel
    is the identity (dirac), and a PReLU slope of 1 makes the activation the identity too."""
    channels = block.prelu.weight.numel()
    kernel = torch.zeros(channels, channels, *block.conv.kernel_size)
    nn.init.dirac_(kernel)
    with torch.no_grad():
        # PixelShuffle(2) reads output pixel (i, j) of channel c from conv channel 4c + 2i + j
        block.conv.weight.copy_(kernel.repeat_interleave(4, dim=0))
        block.conv.bias.zero_()
        block.prelu.weight.fill_(1.0)


def transfer(source: Generator, upscale_factor: int) -> Generator:
    """A Generator for `upscale_factor` holding every tensor of `source` that has a place in it."""
    cfg = source.config
    target = Generator(upscale_factor, cfg['num_blocks'], cfg['channels'])
    kept = min(len(source.upsample), len(target.upsample))
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith('upsample.') or int(k.split('.')[1]) < kept}
    missing, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith('upsample.') for k in missing)
    for block in list(target.upsample)[kept:]:
        icnr_identity_(block)
    return target.eval()


def body_features(g: Generator, lr: torch.Tensor) -> torch.Tensor:
    """What the generator's upsample blocks read: head and body output, before upsampling."""
    x = g.head(lr)
    return x + g.body_tail(g.body(x))


def cache_crops(g: Generator, dataset, patches: int, batch: int) -> tuple:
    """(body features, HR crops) of `patches` random crops, taken in turn from every image."""
    feats, hrs = [], []
    with torch.no_grad():
        for start in range(0, patches, batch):
            pairs = [dataset[i % len(dataset)] for i in range(start, min(patches, start + batch))]
            lr, hr = (torch.stack(t) for t in zip(*pairs))
            feats.append(body_features(g, lr))
            hrs.append(hr)
    return torch.cat(feats), torch.cat(hrs)


def adapt(g: Generator, dataset, patches: int, iters: int, batch: int, lr: float,
          time_limit: float = 0, log=print) -> dict:
    """Fit g's upsample blocks and tail (pixel MSE, Adam, cosine-decayed lr) on cached body
    features of random crops; head and body stay as they are. Returns a summary."""
    g.eval()  # BatchNorm keeps its running statistics: the body is not being trained
    t0 = time.time()
    feats, hrs = cache_crops(g, dataset, patches, batch)
    log(f'cached body features of {len(feats)} crops in {time.time() - t0:.0f} s')
    params = list(g.upsample.parameters()) + list(g.tail.parameters())
    opt = torch.optim.Adam(params, lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    gen = torch.Generator().manual_seed(0)
    t1, done, recent, first = time.time(), 0, [], None
    for done in range(1, iters + 1):
        idx = torch.randint(0, len(feats), (batch,), generator=gen)
        loss = nn.functional.mse_loss(g.tail(g.upsample(feats[idx])), hrs[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-50:]
        first = recent[0] if first is None else first
        if done % 50 == 0 or done == iters:
            mse = sum(recent) / len(recent)
            log(f'step {done}/{iters}: mse {mse:.6f} (RGB PSNR {-10 * math.log10(mse):.2f} dB)')
        if time_limit and time.time() - t1 > time_limit * 60:
            log(f'time limit reached after {done} steps')
            break
    g.eval()
    return {'steps': done, 'patches': len(feats), 'batch': batch, 'first_mse': first,
            'last_mse': sum(recent) / len(recent), 'seconds': round(time.time() - t0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    utils.add_flags(p, 'weight', weight=utils.Default(
        utils.WeightSpec('srresnet_x4', utils.DEFAULT_WEIGHTS[4]['srresnet']),
        'weights/srresnet_x4.pth, the shipped SRResNet'))
    # not the shared --upscale_factor: here it is the scale to build, not the file's
    p.add_argument('--upscale_factor', type=int, choices=sorted(utils.DEFAULT_WEIGHTS),
                   required=True, help='scale of the generator to build (required)')
    p.add_argument('--output', required=True, help='weights file to write (required)')
    p.add_argument('--adapt_dir', default=None, metavar='DIR',
                   help=utils.described('training images: fit the upsample blocks and tail on '
                                        'crops of them, body frozen', 'no fitting'))
    positive, number = utils.number(int, 1), utils.number(float, 0)
    for flag, kind, default, text in (
            ('--patches', positive, 512, 'crops whose features are cached'),
            ('--iters', positive, 1000, 'fitting steps'),
            ('--batch_size', positive, 16, 'crops per fitting step'),
            ('--crop_size', positive, 96, 'HR crop size'),
            ('--lr', utils.number(float, 0, low_open=True), 5e-4,
             'initial learning rate (cosine decay)'),
            ('--time_limit', number, 0, 'minutes; stop fitting when this passes, 0: none'),
            ('--seed', utils.number(int, 0), 0, 'random seed of the crops and new layers')):
        p.add_argument(flag, type=kind, default=default, help=utils.described(text, default))
    return p.parse_args(argv)


@utils.script
def main(argv=None) -> int:
    args = parse_args(argv)
    # what can be checked before the work (README.md, "Conventions")
    problem = utils.output_problem(args.output)
    if problem:
        raise utils.UsageError(f'--output {problem}')
    weight = utils.check_input(args.weight.path)
    utils.check_outputs([('--output', args.output)], [('--weight', weight)])
    if args.adapt_dir:
        utils.check_input(args.adapt_dir, 'folder')
    source = utils.load_generator(weight)
    torch.manual_seed(args.seed)
    target = transfer(source, args.upscale_factor)
    from_scale = source.upscale_factor
    history = utils.load_checkpoint(weight).get('variant')  # keep the file's provenance
    note = (f'transferred from the x{from_scale} generator {os.path.basename(weight)}'
            f"{f' ({history})' if isinstance(history, str) else ''} by "
            'scripts/transfer_scale.py; ')
    if args.adapt_dir:
        dataset = utils.TrainSet(args.adapt_dir, args.upscale_factor, args.crop_size)
        done = adapt(target, dataset, args.patches, args.iters, args.batch_size, args.lr,
                     args.time_limit)
        note += (f"upsample blocks and tail fitted {done['steps']} steps (batch "
                 f"{done['batch']}, {done['patches']} cached {args.crop_size}px crops of "
                 f"{os.path.basename(os.path.normpath(args.adapt_dir))}), body frozen")
    else:
        note += 'not fine-tuned'
    try:
        utils.save_weights(target, args.output, mode='generator', variant=note, epoch=0)
    except OSError as e:
        raise utils.SRError(utils.write_failure(args.output, e)) from None
    new = max(0, len(target.upsample) - len(source.upsample))
    print(f'{args.output}: x{args.upscale_factor} generator from x{from_scale} {weight}; '
          f'{len(target.upsample)} upsample blocks, {new} new (ICNR)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
