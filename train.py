"""Train SRResNet (--mode generator, pixel MSE) or SRGAN (--mode adversarial).

One device:
    python train.py --mode generator --trainset_dir data/DIV2K_train_sub --validset_dir data/Set5 --cuda
    python train.py --mode adversarial --pretrain runs/generator_x4/weights/best.pth \
        --trainset_dir data/DIV2K_train_sub --validset_dir data/Set5 --cuda
Several GPUs (--batch_size is per process):
    python train.py --dp ...                                   # DataParallel
    torchrun --nproc_per_node 4 train.py --ddp ...             # DistributedDataParallel
    srun python train.py --ddp ...                             # SLURM, one task per GPU
    python train.py --ddp --nproc 4 ...                        # spawns the processes itself
    python train.py --lightning --nproc 4 ...                  # Lightning Fabric, strategy ddp
Resume: add --resume latest (or an epoch number) with the same --out_dir.

The file reads in the paper's order: 1. flags and the Recipe built from them, 2. the losses,
3. the G step, 4. the D step, 5. validation, 6. checkpoints, 7. the epoch loop (data,
networks, one epoch, the run). 8. Launching (one device, DataParallel, DDP under torchrun /
SLURM / self-spawned, Lightning Fabric) comes last: launch(args, run) picks a Runtime, whose
methods (autocast, backward, wrap, collectives) are all the recipe ever calls.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import csv
import datetime
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import utils
from model import Discriminator, FeatureExtractor, Generator

HISTORY_FIELDS = ['epoch', 'loss_g', 'loss_pixel', 'loss_content', 'loss_adv', 'loss_d',
                  'd_real', 'd_fake', 'lr_g', 'lr_d', 'psnr_y', 'ssim_y', 'niqe', 'grid', 'seconds',
                  'images_per_s']
# history.csv columns written with every digit (repr), so that they equal evaluate.py's
# scores of the same weights; the others with 6 significant digits
EXACT_FIELDS = ('psnr_y', 'ssim_y', 'niqe', 'grid')


# =============================================================================================
# 1. Flags, and the Recipe the steps take
# =============================================================================================

class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, once: appended unless the help already says
    what the default is."""

    def _get_help_string(self, action):
        text = action.help or ''
        if ('default:' not in text and action.option_strings
                and action.default is not argparse.SUPPRESS):
            text += ' (default: %(default)s)'
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument('--trainset_dir', default='data/DIV2K_train_sub', help='training images')
    p.add_argument('--validset_dir', default=None, help='validation images (HR) (default: none, no validation)')
    # the shared flags (--upscale_factor, --cuda, --amp, --out_dir) as every script defines
    # them (utils.add_flags); train.py's own defaults where it has a reason
    utils.add_flags(p, 'upscale_factor', upscale_factor=utils.DEFAULT_SCALE)
    p.add_argument('--epochs', type=utils.number(int, 1), default=100, help='training epochs')
    p.add_argument('--resume', default=None, help="epoch number or 'latest' in --out_dir (default: none, start "
                        'afresh)')
    p.add_argument('--overwrite_later', action='store_true',
                   help='resuming an earlier epoch than the newest checkpoint (or starting afresh '
                        'in an --out_dir with checkpoints) starts a new branch: move the later '
                        'checkpoints, weights, samples and history.csv rows aside into '
                        '--out_dir/abandoned_after_epoch_N_<time>/ instead of refusing')
    p.add_argument('--mode', default='generator', choices=['adversarial', 'generator'],
                   help="generator: SRResNet, pixel MSE. adversarial: SRGAN; with "
                        "--content_weight 0 this is the paper's SRGAN-MSE variant (no VGG), "
                        'otherwise SRGAN-VGG54 (needs ImageNet VGG19 weights)')
    p.add_argument('--drop_discriminator', action='store_true',
                   help='allow --resume of an adversarial checkpoint in --mode generator: its '
                        'discriminator is dropped and history.csv goes on in generator mode')
    p.add_argument('--pretrain', default=None, help='generator weights or checkpoint to start from (default: none, random '
                        'weights)')
    utils.add_flags(p, 'cuda')
    p.add_argument('--dp', action='store_true', help='DataParallel over the visible GPUs')
    p.add_argument('--ddp', action='store_true', help='DistributedDataParallel (torchrun, '
                   'SLURM srun, or self-spawned with --nproc)')
    p.add_argument('--nproc', type=utils.number(int, 1), default=None,
                   help='processes to spawn for --ddp / devices for --lightning (default: the '
                        "number of GPUs; with --lightning under torchrun or srun: the launcher's "
                        'processes per node)')
    p.add_argument('--backend', default='auto', choices=['auto', 'nccl', 'gloo'],
                   help='DDP backend; auto: nccl on CUDA, gloo on CPU')
    p.add_argument('--dist_timeout', type=utils.number(float, 0, low_open=True), default=300,
                   help='seconds a collective may wait for a lost rank before the job fails')
    p.add_argument('--sync_bn', action='store_true', help='SyncBatchNorm under DDP')
    p.add_argument('--lightning', action='store_true', help='train through Lightning Fabric')
    utils.add_flags(p, 'out_dir', out_dir=utils.Default(None, 'runs/<mode>_x<scale>'))
    p.add_argument('--batch_size', type=utils.number(int, 1), default=16,
                   help='per process under DDP')
    p.add_argument('--crop_size', type=utils.number(int, 1), default=96, help='HR crop size')
    p.add_argument('--workers', type=utils.number(int, 0), default=4,
                   help='DataLoader worker processes')
    p.add_argument('--cache', action='store_true',
                   help='decode all training images once and keep them in memory')
    p.add_argument('--device_batches', default='auto', choices=['auto', 'on', 'off'],
                   help='cut the training batches (crops, flips, bicubic LR) on the training '
                        'device from images decoded once and kept there, instead of in '
                        'DataLoader workers; auto: on with --cuda --cache when the images take '
                        'at most half the free GPU memory')
    p.add_argument('--lr', type=utils.number(float, 0, low_open=True), default=1e-4,
                   help="the generator's Adam learning rate (and the discriminator's unless "
                        '--lr_d)')
    p.add_argument('--lr_step', type=utils.number(int, 0), default=None,
                   help='divide the learning rates by 10 after this epoch '
                        '(default: half of --epochs; 0: never)')
    p.add_argument('--num_blocks', type=utils.number(int, 1), default=16,
                   help='generator residual blocks')
    p.add_argument('--val_every', type=utils.number(int, 1), default=1,
                   help='validate every N epochs')
    p.add_argument('--vgg_weights', default='imagenet',
                   help="'imagenet' (torchvision download), a local VGG19 .pth, or 'random' "
                        '(smoke tests only)')
    p.add_argument('--pixel_weight', type=utils.number(float, 0), default=1.0,
                   help='pixel MSE weight in the adversarial generator loss')
    p.add_argument('--content_weight', type=utils.number(float, 0), default=0.006,
                   help='VGG54 feature MSE weight (0: SRGAN-MSE, no VGG)')
    p.add_argument('--adversarial_weight', type=utils.number(float, 0), default=1e-3,
                   help="adversarial loss weight in the generator loss (the paper's 1e-3)")
    p.add_argument('--gan_loss', default='vanilla', choices=['vanilla', 'ragan'],
                   help="vanilla: the paper's BCE on D's logits; ragan: relativistic average "
                        "GAN (ESRGAN), each logit taken relative to the other side's mean")
    p.add_argument('--d_channels', type=utils.number(int, 1), default=64,
                   help="the discriminator's base channels (the paper's 64; fewer only for "
                        'smoke tests such as the GPU-slot rehearsal)')
    p.add_argument('--spectral_norm', action='store_true',
                   help='spectral normalisation in every D layer (and no BatchNorm in D)')
    p.add_argument('--lr_d', type=utils.number(float, 0, low_open=True), default=None,
                   help='discriminator learning rate (default: --lr)')
    p.add_argument('--best_metric', default=None, choices=['psnr', 'niqe'],
                   help='what best.pth keeps. psnr: the highest validation PSNR-Y. niqe: the '
                        'lowest NIQE among epochs whose PSNR-Y is within --best_margin dB of '
                        'the best PSNR-Y so far (default: psnr in generator mode, niqe in '
                        'adversarial mode, where PSNR alone would keep the least '
                        'adversarial epoch)')
    p.add_argument('--best_margin', type=utils.number(float, 0), default=0.5,
                   help='dB of PSNR-Y that --best_metric niqe may give up for naturalness')
    p.add_argument('--grid_limit', type=utils.number(float, 0), default=utils.GRID_LIMIT,
                   help='adversarial validation: best.pth never keeps an epoch whose grid score '
                        '(utils.grid_score, the dot-grid check, mean over the validation '
                        'images, grey levels) exceeds this; 0: no limit')
    utils.add_flags(p, 'amp')
    p.add_argument('--ema', type=utils.number(float, 0, 1, high_open=True), default=0.0,
                   help='generator EMA decay (e.g. 0.999); 0 = off')
    p.add_argument('--seed', type=utils.number(int, 0), default=0,
                   help='seed of the initial weights and of the data order and crops')
    p.add_argument('--iters_per_epoch', type=utils.number(int, 1), default=None,
                   help='iterations per epoch (default: one pass over the data)')
    p.add_argument('--keep', type=utils.number(int, 0), default=3,
                   help='old checkpoints kept (0: all)')
    p.add_argument('--compile', action='store_true', help='torch.compile the networks')
    p.add_argument('--compile_mode', default='default',
                   choices=['default', 'reduce-overhead', 'max-autotune'],
                   help='torch.compile mode; reduce-overhead replays CUDA graphs on CUDA')
    p.add_argument('--tensorboard', action='store_true', help='also log to TensorBoard')
    p.add_argument('--log_every', type=utils.number(int, 1), default=10,
                   help='iterations between progress-bar updates and NaN checks (each shows '
                        'the previous one, so the host never waits for the device)')
    p.add_argument('--time_limit', type=utils.number(float, 0), default=0,
                   help='minutes; stop cleanly after the epoch in which this passes (0: none)')
    return p


def get_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    # the flags given on the command line (a parse with no defaults), for a resume to tell
    # them from defaults; kept out of the checkpoint's 'args' (state_of)
    bare = build_parser()
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    args._given = sorted(vars(bare.parse_args(argv)))
    if args.out_dir is None:
        args.out_dir = os.path.join('runs', f'{args.mode}_x{args.upscale_factor}')
    if args.lr_step is None:
        args.lr_step = args.epochs // 2
    if args.best_metric is None:
        args.best_metric = 'niqe' if args.mode == 'adversarial' else 'psnr'
    if args.crop_size % args.upscale_factor:
        p.error(f'--crop_size {args.crop_size} is not a multiple of --upscale_factor')
    return args


@dataclass(frozen=True)
class Recipe:
    """What a training step computes, fixed for the run and built once from the flags
    (Recipe.from_args); the checkpoint keeps the flags themselves ('args'), from which it is
    rebuilt. The field names are the flags'."""
    mode: str                  # 'generator' (SRResNet, pixel MSE) or 'adversarial' (SRGAN)
    upscale_factor: int
    pixel_weight: float = 1.0
    content_weight: float = 0.006
    adversarial_weight: float = 1e-3
    gan_loss: str = 'vanilla'  # 'vanilla' or 'ragan'
    compile_mode: Optional[str] = None  # torch.compile's mode, None when not compiling

    @classmethod
    def from_args(cls, args) -> 'Recipe':
        return cls(mode=args.mode, upscale_factor=args.upscale_factor,
                   pixel_weight=args.pixel_weight, content_weight=args.content_weight,
                   adversarial_weight=args.adversarial_weight, gan_loss=args.gan_loss,
                   compile_mode=args.compile_mode if args.compile else None)


class TrainingError(Exception):
    """A problem to report in one line and stop on (bad files, NaN loss, bad flags)."""


class SetupError(TrainingError, utils.UsageError):
    """A bad path or flag found before training starts (exit status 2, README.md
    "Conventions"). Under DDP only rank 0 carries the message; the other ranks stop with an
    empty one."""


def setup_problem(args) -> str:
    """The first problem with the input folders, --pretrain or --out_dir, or '': checked
    before anything is built, so that no epoch is lost to a typo."""
    if not os.path.isdir(args.trainset_dir):
        return f'{args.trainset_dir}: training folder not found'
    if args.validset_dir:
        try:
            utils.ValidSet(args.validset_dir, args.upscale_factor)
        except (utils.ImageError, ValueError) as e:  # a missing, empty or non-folder path
            return str(e)
    if args.pretrain and not os.path.isfile(args.pretrain):
        what = 'is a folder, not a weights file' if os.path.isdir(args.pretrain) else 'not found'
        return f'--pretrain {args.pretrain}: {what}'
    return utils.output_problem(args.out_dir, folder=True) or branch_problem(args)



# =============================================================================================
# 2. The losses
# =============================================================================================

def _bce(logit: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))


def d_loss(gan_loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from D's logits on HR (`real`) and detached SR (`fake`).
    vanilla: -log D(hr) - log(1 - D(sr)). ragan (ESRGAN): the same on the relativistic logits
    real - mean(fake) and fake - mean(real)."""
    if gan_loss == 'ragan':
        real, fake = real - fake.mean(), fake - real.mean()
    return _bce(real, 1.0) + _bce(fake, 0.0)


def g_adversarial_loss(gan_loss: str, fake: torch.Tensor, real: torch.Tensor = None
                       ) -> torch.Tensor:
    """Generator's adversarial loss from D's logits on SR (`fake`, with gradient) and, for
    ragan, on HR (`real`, a constant). vanilla: -log D(sr). ragan: the mean of both
    relativistic terms with the labels swapped, so that its scale matches vanilla's."""
    if gan_loss == 'ragan':
        return (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0)) / 2
    return _bce(fake, 1.0)



# =============================================================================================
# 3. The G step: pixel MSE (SRResNet); + VGG54 content + adversarial (SRGAN)
# =============================================================================================

def g_step(recipe: Recipe, rt: Runtime, s: TrainState, sr: torch.Tensor,
           hr_img: torch.Tensor) -> dict:
    """Update G from SR = G(LR) (with its graph) and HR; returns the losses as device tensors.
    generator mode: pixel MSE. adversarial: pixel MSE + content (VGG54) MSE + adversarial
    (-log D(G(LR))), with D frozen (no gradient for its weights) and called outside DDP (no
    gradient sync for it)."""
    if recipe.mode == 'generator':
        loss = F.mse_loss(sr.float(), hr_img)
        rt.backward(loss, s.opt_g, s.scaler_g)
        return {'loss_g': loss.detach(), 'loss_pixel': loss.detach()}
    d_net = utils.unwrap(s.D)
    d_net.requires_grad_(False)
    with rt.autocast():
        gen_logit = s.D_g(sr).float()
        # RaGAN's G loss also needs how the updated D sees HR, as a constant
        real_now = s.D_g(hr_img).float().detach() if recipe.gan_loss == 'ragan' else None
        loss_content = torch.zeros((), device=rt.device)
        if s.vgg is not None and recipe.content_weight > 0:
            loss_content = F.mse_loss(s.vgg(sr).float(), s.vgg(hr_img).float())
    d_net.requires_grad_(True)
    loss_pixel = F.mse_loss(sr.float(), hr_img)
    loss_adv = g_adversarial_loss(recipe.gan_loss, gen_logit, real_now)
    loss_g = (recipe.pixel_weight * loss_pixel + recipe.content_weight * loss_content
              + recipe.adversarial_weight * loss_adv)
    rt.backward(loss_g, s.opt_g, s.scaler_g)
    return {'loss_g': loss_g.detach(), 'loss_pixel': loss_pixel.detach(),
            'loss_content': loss_content.detach(), 'loss_adv': loss_adv.detach()}


# =============================================================================================
# 4. The D step, and one training iteration (D first, then G, as in the paper's Algorithm)
# =============================================================================================

def d_step(recipe: Recipe, rt: Runtime, s: TrainState, sr: torch.Tensor,
           hr_img: torch.Tensor) -> dict:
    """Update D: maximise log D(HR) + log(1 - D(G(LR))) (RaGAN: on relativistic logits), on a
    detached SR; returns its loss and mean probabilities as device tensors."""
    with rt.autocast():
        real_logit = s.D(hr_img).float()
        fake_logit = s.D(sr.detach()).float()
    loss_d = d_loss(recipe.gan_loss, real_logit, fake_logit)
    rt.backward(loss_d, s.opt_d, s.scaler_d)
    return {'loss_d': loss_d.detach(), 'd_real': torch.sigmoid(real_logit).mean().detach(),
            'd_fake': torch.sigmoid(fake_logit).mean().detach()}


def train_step(recipe: Recipe, rt: Runtime, s: TrainState, lr_img: torch.Tensor,
               hr_img: torch.Tensor) -> dict:
    """One iteration on a batch of LR images and their HR originals: SR = G(LR), the D step
    (adversarial mode), then the G step; returns the losses as device tensors (no host
    sync)."""
    if recipe.compile_mode == 'reduce-overhead':
        # a new step: the CUDA graphs may reuse the memory of the last step's outputs
        torch.compiler.cudagraph_mark_step_begin()
    with rt.autocast():
        sr = s.G(lr_img)
    d_losses = d_step(recipe, rt, s, sr, hr_img) if recipe.mode == 'adversarial' else {}
    return {**g_step(recipe, rt, s, sr, hr_img), **d_losses}


# =============================================================================================
# 5. Validation: the one inference path (utils.super_resolve, float32) and utils' metrics,
# as evaluate.py scores a weights file
# =============================================================================================

@torch.inference_mode()
def validate(generator: nn.Module, dataset, scale: int, device: torch.device, out: str,
             niqe: bool = False, num_samples: int = 3, tb=None, epoch: int = 0,
             log=print, grid: bool = False) -> dict:
    """Mean PSNR-Y / SSIM-Y (and NIQE, and the grid score) of `generator` over `dataset` (a
    utils.ValidSet),
    equal to evaluate.py's for the same weights: BatchNorm folded, whole images, float32 (no
    TF32 in cuDNN either). Saves the first `num_samples` SR/bicubic/HR images into `out` (and
    logs the SR ones to TensorBoard when `tb` is a SummaryWriter)."""
    model = utils.inference_model(generator, device)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    psnrs, ssims, niqes, grids = [], [], [], []
    try:
        for i in range(len(dataset)):
            try:
                lr_img, hr_img, name = dataset[i]
            except utils.ImageError as e:
                log(f'warning: {e}; skipped')
                continue
            sr = utils.super_resolve(model, lr_img, scale, tile=0, overlap=utils.TILE_OVERLAP)
            psnrs.append(utils.psnr(sr, hr_img, scale))
            ssims.append(utils.ssim(sr, hr_img, scale))
            if niqe:
                niqes.append(validation_niqe(sr, scale))
            if grid:
                grids.append(utils.grid_score(sr, scale))
            if i < num_samples:
                stem = os.path.splitext(name)[0]
                sr = sr.clamp(0, 1)
                utils.save_image(sr, os.path.join(out, f'{stem}_sr.png'))
                utils.save_image(utils.imresize(lr_img, scale).clamp(0, 1),
                                 os.path.join(out, f'{stem}_bicubic.png'))
                utils.save_image(hr_img, os.path.join(out, f'{stem}_hr.png'))
                if tb is not None:
                    tb.add_image(f'valid/{stem}', sr, epoch)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    if not psnrs:
        return {}
    finite = [p for p in psnrs if math.isfinite(p)] or [100.0]
    scores = {'psnr_y': sum(finite) / len(finite), 'ssim_y': sum(ssims) / len(ssims)}
    if niqes:
        finite = [n for n in niqes if math.isfinite(n)]
        scores['niqe'] = sum(finite) / len(finite) if finite else math.nan
    if grids:
        scores['grid'] = sum(grids) / len(grids)
    return scores


def validation_niqe(sr: torch.Tensor, scale: int) -> float:
    """NIQE of a validation output as evaluate.py scores it (border of `scale` cropped); nan
    for an image too small for NIQE's two 96 px blocks."""
    try:
        return utils.niqe(sr, crop_border=scale)
    except ValueError:
        return math.nan


def best_epoch(history: list, metric: str, margin: float, grid_limit: float = 0):
    """The epoch best.pth holds after the validated rows of `history`, decided row by row as
    training goes (best.pth is only ever written from the epoch just validated).

    psnr: the highest PSNR-Y. niqe: a validated epoch replaces the best when its PSNR-Y is
    within `margin` dB of the highest so far and its NIQE is lower, or when the best has
    fallen more than `margin` behind (the new epoch, which raised the highest, then takes
    over). Without NIQE scores (nan: images too small) it is the highest PSNR-Y. With a
    `grid_limit` (> 0), an epoch whose grid score exceeds it never counts: a gridded epoch is
    never best, and None when every epoch is."""
    def niqe(row: dict) -> float:
        return row['niqe'] if math.isfinite(row.get('niqe', math.nan)) else math.inf

    best, top = None, -math.inf
    for row in (r for r in history if 'psnr_y' in r):
        if grid_limit and row.get('grid', 0) > grid_limit:
            continue
        top = max(top, row['psnr_y'])
        if best is None or (metric == 'psnr' and row['psnr_y'] > best['psnr_y']):
            best = row
        elif metric == 'niqe':
            if best['psnr_y'] < top - margin:
                best = row
            elif row['psnr_y'] >= top - margin and (
                    niqe(row) < niqe(best)
                    or niqe(row) == niqe(best) == math.inf and row['psnr_y'] > best['psnr_y']):
                best = row
    return None if best is None else best['epoch']



# =============================================================================================
# 6. Checkpoints: what training updates (TrainState), written and read back whole
# =============================================================================================

class EMA:
    """Exponential moving average of the generator: ema = d * ema + (1 - d) * param."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(utils.unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = utils.unwrap(model)
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in src.parameters()], 1 - self.decay)
        for b_ema, b in zip(self.model.buffers(), src.buffers()):
            b_ema.copy_(b)




@dataclass
class TrainState:
    """Everything training updates: the networks (possibly wrapped by DP/DDP/Fabric/compile),
    their optimizers, learning-rate schedulers and grad scalers, and the generator's EMA.
    The discriminator side is None in --mode generator."""
    G: nn.Module
    opt_g: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LRScheduler
    scaler_g: torch.amp.GradScaler
    ema: Optional[EMA] = None
    D: Optional[nn.Module] = None
    opt_d: Optional[torch.optim.Optimizer] = None
    sched_d: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    scaler_d: Optional[torch.amp.GradScaler] = None
    # the discriminator the generator step calls: never DDP-wrapped, since D is frozen
    # there and its weights must not take part in that step's gradient sync (see wrap)
    D_g: Optional[nn.Module] = None
    vgg: Optional[nn.Module] = None  # the frozen VGG54 feature extractor (content loss)

    # the checkpoint keys of the optimizer-side objects: each saved with its state_dict()
    OPTIM_KEYS = ('opt_g', 'sched_g', 'scaler_g', 'opt_d', 'sched_d', 'scaler_d')

    @property
    def eval_generator(self) -> nn.Module:
        """The generator that validation and weights files use: the EMA model if there is
        one, else the bare G."""
        return self.ema.model if self.ema is not None else utils.unwrap(self.G)

    @property
    def schedulers(self) -> list:
        return [x for x in (self.sched_g, self.sched_d) if x is not None]

    def state_dict(self) -> dict:
        """The checkpoint's training-state entries; networks bare (no wrapper prefixes), so a
        checkpoint from any of DP / DDP / Fabric resumes in any other."""
        g = utils.unwrap(self.G)
        state = {'config': g.config, 'generator': g.state_dict()}
        for k in self.OPTIM_KEYS:
            if getattr(self, k) is not None:
                state[k] = getattr(self, k).state_dict()
        if self.D is not None:
            state['discriminator'] = utils.unwrap(self.D).state_dict()
        if self.ema is not None:
            state['ema'] = self.ema.model.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Inverse of state_dict(); KeyError / RuntimeError / ValueError when it does not fit.
        A checkpoint without an EMA starts the EMA from its generator."""
        utils.unwrap(self.G).load_state_dict(state['generator'])
        for k in self.OPTIM_KEYS:
            part = getattr(self, k)
            if isinstance(part, torch.optim.Optimizer):
                load_optimizer(part, state[k])
            elif part is not None:
                part.load_state_dict(state[k])
        if self.D is not None:
            utils.unwrap(self.D).load_state_dict(state['discriminator'])
        if self.ema is not None:
            self.ema.model.load_state_dict(state.get('ema', state['generator']))


def adam_options(device: torch.device) -> dict:
    """Adam's implementation: fused (one kernel for all parameters, and no host sync under
    the fp16 GradScaler) on CUDA, foreach (batched tensor ops) on the CPU. Same update."""
    return {'fused': True} if device.type == 'cuda' else {'foreach': True}


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """opt.load_state_dict(state), keeping opt's implementation: a checkpoint stores the one it
    was written with (older ones: neither foreach nor fused), and loading it as it is would
    switch fused Adam off, and leave its step counts on the CPU where fused Adam wants them
    on the device."""
    own = [{k: g[k] for k in ('foreach', 'fused') if k in g} for g in opt.param_groups]
    groups = [{**saved, **mine} for saved, mine in zip(state['param_groups'], own)]
    opt.load_state_dict({**state, 'param_groups': groups})


def checkpoint_path(args, epoch: int) -> str:
    return os.path.join(args.out_dir, 'checkpoints', f'checkpoint_epoch_{epoch}.pth')


def epochs_in(folder: str, pattern: str = r'checkpoint_epoch_(\d+)\.pth') -> list:
    """Sorted epoch numbers of the files in `folder` matching `pattern` (none: [])."""
    return sorted(int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                  if (m := re.fullmatch(pattern, f)))


def resumed_epoch(args):
    """The epoch the run continues from as the flags say: N for --resume N, 0 when starting
    afresh, None for --resume latest (the newest checkpoint that loads: never a branch)."""
    if args.resume is None:
        return 0
    return int(args.resume) if str(args.resume).isdigit() else None


def branch_problem(args) -> str:
    """Resuming epoch N while --out_dir holds checkpoints of later epochs (or starting afresh
    where it holds any) starts a new branch, which would overwrite and prune the old one's:
    refused unless --overwrite_later moves them aside (set_aside_later)."""
    epoch = resumed_epoch(args)
    later = [e for e in epochs_in(os.path.join(args.out_dir, 'checkpoints'))
             if epoch is not None and e > epoch]
    if not later or args.overwrite_later:
        return ''
    listed = ', '.join(map(str, later))
    start = f'--resume {epoch}' if epoch else 'starting afresh'
    return (f'{args.out_dir} holds checkpoints of later epochs ({listed}); {start} would start '
            f'a new branch and overwrite them: use --resume latest to continue, or add '
            f'--overwrite_later to move them aside')


def set_aside_later(args, epoch: int, history: list, log=print) -> None:
    """--overwrite_later: move the checkpoints, per-epoch weights, best.pth and validation
    samples of epochs after `epoch`, and history.csv, into
    out_dir/abandoned_after_epoch_<epoch>_<time>/, and write history.csv anew from `history`
    (the resumed checkpoint's rows): history.csv, the checkpoints and --resume latest agree."""
    out = args.out_dir
    ckpts = [e for e in epochs_in(os.path.join(out, 'checkpoints')) if e > epoch]
    if not ckpts:
        return
    moves = [os.path.join('checkpoints', f'checkpoint_epoch_{e}.pth') for e in ckpts]
    moves += [os.path.join('weights', f'G_epoch_{e}.pth')
              for e in epochs_in(os.path.join(out, 'weights'), r'G_epoch_(\d+)\.pth') if e > epoch]
    moves += [os.path.join('output', str(e))
              for e in epochs_in(os.path.join(out, 'output'), r'(\d+)') if e > epoch]
    best = os.path.join(out, 'weights', 'best.pth')
    try:
        best_epoch_saved = utils.load_checkpoint(best).get('epoch') if os.path.isfile(best) else None
    except utils.CheckpointError:
        best_epoch_saved = None
    if isinstance(best_epoch_saved, int) and best_epoch_saved > epoch:
        moves.append(os.path.join('weights', 'best.pth'))
    if os.path.isfile(os.path.join(out, 'history.csv')):
        moves.append('history.csv')
    name = f'abandoned_after_epoch_{epoch}_{time.strftime("%Y%m%d-%H%M%S")}'
    aside, n = os.path.join(out, name), 1
    while os.path.exists(aside):
        n += 1
        aside = os.path.join(out, f'{name}_{n}')
    for rel in moves:
        os.makedirs(os.path.dirname(os.path.join(aside, rel)), exist_ok=True)
        os.replace(os.path.join(out, rel), os.path.join(aside, rel))
    if history:
        write_history(args, history)
    log(f'--overwrite_later: moved the checkpoints of epochs {", ".join(map(str, ckpts))} '
        f'and their weights, samples and history.csv rows aside into {aside}')


def load_resume_checkpoint(args, rt: Runtime) -> tuple:
    """(path, state) of the checkpoint --resume names, or (None, None) to start fresh.

    --resume N loads epoch N or stops. --resume latest takes the newest checkpoint that loads,
    saying which newer ones it skipped (a truncated file, say), and starts fresh, saying so,
    when there is none: a run killed before its first checkpoint can be requeued as it is."""
    folder = os.path.join(args.out_dir, 'checkpoints')
    if str(args.resume) != 'latest':
        if not str(args.resume).isdigit():
            raise SetupError(f"--resume takes an epoch number or 'latest', got {args.resume}")
        path = checkpoint_path(args, int(args.resume))
        if not os.path.isfile(path):
            raise SetupError(f'{path}: no checkpoint for epoch {args.resume}')
        try:
            return path, utils.load_checkpoint(path)
        except utils.CheckpointError as e:
            raise TrainingError(str(e)) from None
    epochs = sorted(int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                    if (m := re.fullmatch(r'checkpoint_epoch_(\d+)\.pth', f)))
    for epoch in reversed(epochs):
        path = checkpoint_path(args, epoch)
        try:
            return path, utils.load_checkpoint(path)
        except utils.CheckpointError as e:
            rt.log(f'warning: --resume latest skipped {e}')
    rt.log(f'--resume latest: no checkpoint that loads in {folder}; starting fresh')
    return None, None


def state_of(s: TrainState, epoch: int, args, history: list, best: float) -> dict:
    """The checkpoint: the training state plus the run's progress and RNG state."""
    flags = {k: v for k, v in vars(args).items() if not k.startswith('_')}
    state = {'epoch': epoch, 'args': flags, 'history': history, 'best_psnr': best,
             'rng': {'torch': torch.get_rng_state()}, 'num_threads': torch.get_num_threads(),
             **s.state_dict()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['rng']['cuda'] = torch.cuda.get_rng_state_all()
    return state


def check_resumed_mode(args, state: dict, path: str, rt: Runtime) -> None:
    """A checkpoint resumes in its own --mode. An adversarial one in --mode generator would
    drop its discriminator and mix both modes in history.csv: refused unless
    --drop_discriminator. A generator one has no discriminator to resume in --mode adversarial:
    refused, pointing to --pretrain. Under DDP rank 0 carries the message."""
    saved = state.get('args', {}).get('mode') if isinstance(state.get('args'), dict) else None
    saved = saved or ('adversarial' if 'discriminator' in state else 'generator')
    if saved == args.mode:
        return
    if saved == 'generator':
        raise SetupError(f'{path}: a --mode generator checkpoint (no discriminator or its '
                         f'optimizer to resume); to train it adversarially, start a new run '
                         f'with --pretrain {path}' if rt.master else '')
    if not args.drop_discriminator:
        raise SetupError(f'{path}: an --mode adversarial checkpoint; resuming it in --mode '
                         f'generator drops its discriminator and mixes both modes in '
                         f'history.csv: add --drop_discriminator to do so' if rt.master else '')
    rt.log(f'--drop_discriminator: resuming the generator of {path} in --mode generator; its '
           f'discriminator is dropped')


def restore(s: TrainState, state: dict, path: str) -> None:
    try:
        s.load_state_dict(state)
        torch.set_rng_state(state['rng']['torch'])
        if 'cuda' in state['rng'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['rng']['cuda'])
    except (KeyError, RuntimeError, ValueError) as e:
        nets = [('generator', s.G, state.get('generator')),
                ('discriminator', s.D, state.get('discriminator'))]
        mismatch = next((f'{name}: {diff}' for name, net, sd in nets
                         if net is not None and isinstance(sd, dict)
                         and (diff := utils.state_dict_mismatch(utils.unwrap(net), sd))),
                        f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}')
        raise TrainingError(f'{path}: checkpoint does not match this run ({mismatch})') from None


OPTIMISER_FLAGS = ('lr', 'lr_d', 'lr_step')


def apply_optimiser_flags(args, s: TrainState, state: dict, log=print) -> None:
    """After a resume: --lr, --lr_d and --lr_step given on the command line replace the
    checkpoint's (the rates then follow the schedule from the resumed epoch on), in one line
    saying so; those not given keep the checkpoint's values, which args then records."""
    saved = state.get('args') if isinstance(state.get('args'), dict) else {}
    # given, and other than the checkpoint's (the same command again is no change)
    given = [k for k in OPTIMISER_FLAGS if k in getattr(args, '_given', ())
             and (k not in saved or saved[k] != getattr(args, k))]
    for k in OPTIMISER_FLAGS:
        if k not in given and k in saved:
            setattr(args, k, saved[k])
    if not given:
        return
    before = {k: saved.get(k) for k in given}
    # the discriminator follows --lr unless it has its own --lr_d (now or in the checkpoint)
    lr_d = args.lr_d if args.lr_d is not None else args.lr
    sides = [(s.opt_g, s.sched_g, args.lr)] + ([(s.opt_d, s.sched_d, lr_d)] if s.opt_d else [])
    for opt, sched, base in sides:
        if 'lr_step' in given:
            sched.milestones = collections.Counter([args.lr_step] if args.lr_step else [])
        if 'lr_step' in given or 'lr' in given or (opt is s.opt_d and 'lr_d' in given):
            sched.base_lrs = [base for _ in opt.param_groups]
            passed = sum(n for m, n in sched.milestones.items() if m <= sched.last_epoch)
            for group in opt.param_groups:
                group['initial_lr'] = base
                group['lr'] = base * sched.gamma ** passed
            sched._last_lr = [g['lr'] for g in opt.param_groups]
    now = f'lr_g {s.opt_g.param_groups[0]["lr"]:g}' + (
        f', lr_d {s.opt_d.param_groups[0]["lr"]:g}' if s.opt_d else '')
    log(f'resume: applying {" ".join(f"--{k} {getattr(args, k)}" for k in given)} over the '
        f'checkpoint\'s ({", ".join(f"{k} {v}" for k, v in before.items())}); now {now}')


def prune(folder: str, pattern: str, keep: int, epoch: int) -> None:
    """Delete all but the newest `keep` files in `folder` matching `pattern` (epoch group) of
    the current branch: those of epochs up to `epoch`, the one just written. Later epochs' files
    are never this run's to delete (set_aside_later moves them before the run starts)."""
    if keep <= 0 or not os.path.isdir(folder):
        return
    files = sorted((e, f) for f in os.listdir(folder)
                   if (m := re.fullmatch(pattern, f)) and (e := int(m.group(1))) <= epoch)
    for _, f in files[:-keep]:
        os.remove(os.path.join(folder, f))


def remove_stale_temporaries(out_dir: str) -> None:
    """Delete half-written '.tmp_*' files that a killed run left behind (atomic_write's):
    checkpoints, weights, history.csv's (in out_dir itself) and the validation samples'."""
    samples = os.path.join(out_dir, 'output')
    subs = ['', 'checkpoints', 'weights'] + [os.path.join('output', d) for d in (
        os.listdir(samples) if os.path.isdir(samples) else [])]
    for sub in subs:
        folder = os.path.join(out_dir, sub)
        for f in os.listdir(folder) if os.path.isdir(folder) else []:
            if f.startswith('.tmp_'):
                os.remove(os.path.join(folder, f))


def save_all(args, s: TrainState, epoch: int, history: list, best: float,
             is_best: bool) -> None:
    """Checkpoint, this epoch's generator weights, and best.pth, each written atomically."""
    gen = s.eval_generator
    meta = {'epoch': epoch, 'mode': args.mode, 'variant': variant(args)}
    wdir = os.path.join(args.out_dir, 'weights')
    utils.save_weights(gen, os.path.join(wdir, f'G_epoch_{epoch}.pth'), **meta)
    if is_best:
        utils.save_weights(gen, os.path.join(wdir, 'best.pth'), **meta)
    # the checkpoint last: once it exists, everything it refers to is on disk
    utils.save_checkpoint(state_of(s, epoch, args, history, best), checkpoint_path(args, epoch))
    prune(os.path.join(args.out_dir, 'checkpoints'), r'checkpoint_epoch_(\d+)\.pth', args.keep,
          epoch)
    prune(wdir, r'G_epoch_(\d+)\.pth', args.keep, epoch)


def variant(args) -> str:
    if args.mode == 'generator':
        return 'SRResNet-MSE'
    if args.content_weight <= 0:
        name = 'SRGAN-MSE'
    else:
        name = 'SRGAN-VGG54' if args.vgg_weights != 'random' else 'SRGAN-randomVGG (smoke test)'
    recipe = ['RaGAN'] if args.gan_loss == 'ragan' else []
    recipe += ['spectral-norm D'] if args.spectral_norm else []
    recipe += [f'D lr {args.lr_d:g}'] if args.lr_d is not None else []
    recipe += [f'EMA {args.ema:g}'] if args.ema > 0 else []
    return f'{name} ({", ".join(recipe)})' if recipe else name


def write_history(args, history: list) -> None:
    """history.csv rewritten whole from the run's history, atomically: after a resume (even from
    an older epoch, or after a kill between this and the checkpoint) no epoch appears twice."""
    def write(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            w = csv.DictWriter(f, HISTORY_FIELDS, extrasaction='ignore')
            w.writeheader()
            for row in history:
                w.writerow({k: (v if not isinstance(v, float) else repr(v)
                                if k in EXACT_FIELDS else f'{v:.6g}') for k, v in row.items()})
    utils.atomic_write(os.path.join(args.out_dir, 'history.csv'), write)



# =============================================================================================
# 7. The epoch loop: data, networks, one epoch, the run
# =============================================================================================

class EpochSampler(torch.utils.data.Sampler):
    """Indices for one epoch of `num_samples` per rank: fresh permutations of the dataset
    (seeded by seed and epoch) concatenated as needed, ranks taking disjoint slices.
    Works for one process and DDP alike, and needs no RNG state to resume."""

    def __init__(self, n: int, num_samples: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        self.n, self.num_samples = n, num_samples
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        total = self.num_samples * self.world_size
        perms = [torch.randperm(self.n, generator=g) for _ in range(math.ceil(total / self.n))]
        idx = torch.cat(perms)[:total]
        return iter(idx[self.rank::self.world_size].tolist())


def data_seed(seed: int, epoch: int, rank: int) -> int:
    """The data RNG's seed for one epoch on one rank: an epoch's crops depend only on (seed,
    epoch, rank), so resuming is exact, and ranks crop differently."""
    return seed * 1000003 + epoch * 1009 + rank


def wants_device_batches(mode: str, device_type: str, cache: bool, fits: bool) -> bool:
    """Whether --device_batches `mode` cuts the batches on the device: 'on' always (it fails
    when the images do not fit), 'auto' with --cuda --cache when they fit."""
    if mode == 'auto':
        return device_type == 'cuda' and cache and fits
    return mode == 'on'


def free_device_memory(device: torch.device):
    """Bytes free on a CUDA device; None on the CPU (the host cache is already in memory)."""
    return torch.cuda.mem_get_info(device)[0] if device.type == 'cuda' else None


def device_crops(args, rt: Runtime, dataset):
    """utils.DeviceCrops holding the decoded training images on the device, or None where
    --device_batches leaves the batches to the DataLoader. The images may take half the free
    device memory; the networks and their activations need the rest."""
    if not wants_device_batches(args.device_batches, rt.device.type, args.cache, True):
        return None
    need, free = utils.DeviceCrops.nbytes(dataset), free_device_memory(rt.device)
    fits = free is None or need <= free // 2
    if args.device_batches == 'on' and not fits:
        raise TrainingError(f'--device_batches on: the {len(dataset)} training images take '
                            f'{need / 1e6:.0f} MB, more than half of the {free / 1e6:.0f} MB '
                            f'free on {rt.device}; use --device_batches off')
    if not wants_device_batches(args.device_batches, rt.device.type, args.cache, fits):
        if args.device_batches == 'auto' and args.cache and rt.device.type == 'cuda':
            rt.log(f'warning: the training images take {need / 1e6:.0f} MB, more than half of '
                   f'the {free / 1e6:.0f} MB free on {rt.device}; batches come from the '
                   'DataLoader')
        return None
    crops = utils.DeviceCrops(dataset, rt.device)
    dataset.cache = None  # crops holds the images now; free the first copy
    return crops


def make_train_data(args, rt: Runtime) -> tuple:
    """(dataset, sampler, iterations per epoch) for this process; the images decoded up front
    with --cache and for --device_batches."""
    on_device = wants_device_batches(args.device_batches, rt.device.type, args.cache, True)
    dataset = utils.TrainSet(args.trainset_dir, args.upscale_factor, args.crop_size,
                             augment=True, cache=args.cache or on_device)
    per_rank = len(dataset) // rt.world_size
    iters = args.iters_per_epoch or max(1, per_rank // args.batch_size)
    sampler = EpochSampler(len(dataset), iters * args.batch_size, rt.rank, rt.world_size,
                           args.seed)
    return dataset, sampler, iters


def epoch_loader(args, rt: Runtime, dataset, sampler, crops=None, epoch: int = 0):
    """This epoch's batches, made after run() reseeds the data RNG: cut on the device by
    `crops`, from its generator seeded here, or from a DataLoader whose workers do not outlive
    the epoch. Either way an epoch's crops depend only on (seed, epoch, rank), so resuming is
    exact with any worker count."""
    if crops is not None:
        crops.generator.manual_seed(data_seed(args.seed, epoch, rt.rank))
        return crops.batches(list(sampler), args.batch_size)
    return utils.make_loader(dataset, args.batch_size, args.workers, sampler=sampler,
                             device_type=rt.device.type, persistent_workers=False)


def load_pretrained(args, generator: Generator) -> None:
    """Copy generator weights from --pretrain (weights file or checkpoint) into `generator`."""
    try:
        g = utils.load_generator(args.pretrain, upscale_factor=args.upscale_factor)
    except utils.CheckpointError as e:  # a file refused as given keeps its exit status 2
        raise (utils.UsageError if e.exit_status == utils.EXIT_USAGE else TrainingError)(
            f'--pretrain {e}') from None
    if g.config != generator.config:
        raise TrainingError(f'--pretrain {args.pretrain}: generator {g.config} does not match '
                            f'this run ({generator.config}); set --num_blocks to match')
    generator.load_state_dict(g.state_dict())


def build(args, rt: Runtime) -> TrainState:
    """Networks, optimizers, schedulers and scalers, on the device (wrap() wraps them)."""
    torch.manual_seed(args.seed)  # same initial weights on every rank
    cl = torch.channels_last
    G = Generator(args.upscale_factor, args.num_blocks).to(rt.device, memory_format=cl)
    if args.pretrain:
        load_pretrained(args, G)
    elif args.mode == 'adversarial':
        rt.log('warning: adversarial training without --pretrain starts from a random '
               'generator; the paper starts from a trained SRResNet')
    milestones = [args.lr_step] if args.lr_step else []
    fp16 = rt.amp_dtype == torch.float16

    def optimizer_side(net: nn.Module, lr: float) -> tuple:
        opt = torch.optim.Adam(net.parameters(), lr, betas=(0.9, 0.999),
                               **adam_options(rt.device))
        return (opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1),
                torch.amp.GradScaler(rt.device.type, enabled=fp16))

    s = TrainState(G, *optimizer_side(G, args.lr), ema=EMA(G, args.ema) if args.ema > 0 else None)
    if args.mode == 'adversarial':
        # --d_channels only where given: the default leaves model.Discriminator's own
        width = {} if args.d_channels == 64 else {'channels': args.d_channels}
        s.D = Discriminator(spectral_norm=args.spectral_norm, **width).to(rt.device,
                                                                          memory_format=cl)
        s.opt_d, s.sched_d, s.scaler_d = optimizer_side(s.D, args.lr if args.lr_d is None
                                                        else args.lr_d)
        s.D_g = s.D
        if args.content_weight > 0:
            try:
                s.vgg = FeatureExtractor(args.vgg_weights).to(rt.device, memory_format=cl)
            except RuntimeError as e:
                # weights that cannot be had here (offline, no such file): the command cannot
                # run as given; a file that is not VGG19 weights: a failed input, named
                if args.vgg_weights == 'imagenet' or not os.path.isfile(args.vgg_weights):
                    raise SetupError(str(e)) from None
                raise TrainingError(f'--vgg_weights {vgg_problem(args.vgg_weights, e)}') from None
    return s


def vgg_problem(path: str, e: Exception) -> str:
    """One line naming `path` and why it is not VGG19 weights (`e`, FeatureExtractor's error,
    may be a many-line torch message): a file torch cannot read as utils.load_checkpoint says
    it, else the first line that names a key or a shape."""
    try:
        utils.load_checkpoint(path)
    except utils.CheckpointError as ce:
        return str(ce)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    detail = next((line for line in lines if re.match(r'(size mismatch|missing|unexpected)',
                                                       line, re.I)), lines[0])
    return f'{path}: not VGG19 features weights ({detail})'


def wrap(args, rt: Runtime, s: TrainState) -> None:
    """SyncBatchNorm (--sync_bn across processes), the runtime's wrappers (DataParallel, DDP,
    Fabric) and torch.compile around the networks."""
    nets = ['G', 'D'] if s.D is not None else ['G']
    if args.sync_bn and rt.distributed:  # DDP and Fabric alike; same Parameter objects
        for k in nets:
            setattr(s, k, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(s, k)))
    s.D_g = s.D
    rt.wrap(s, nets)
    if args.compile:
        for k in nets + [k for k in ('D_g', 'vgg') if getattr(s, k) is not None]:
            setattr(s, k, torch.compile(getattr(s, k), mode=args.compile_mode))


class HostCopy:
    """A device tensor's values on their way to the host: copied without waiting (pinned
    memory and an event on CUDA), read by values(), by which time they have usually arrived."""

    def __init__(self, x: torch.Tensor):
        self.host = torch.empty(x.shape, dtype=x.dtype, pin_memory=x.is_cuda)
        self.host.copy_(x, non_blocking=True)
        self.event = torch.cuda.Event() if x.is_cuda else None
        if self.event is not None:
            self.event.record()

    def values(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def train_epoch(recipe: Recipe, rt: Runtime, s: TrainState, loader, epoch: int, iters: int,
                epochs: Optional[int] = None, log_every: int = 10) -> dict:
    """Train one epoch (of `epochs`, for the progress bar) of `iters` iterations; returns the
    mean losses (floats), averaged over ranks. Every `log_every` iterations the progress bar
    shows the losses and a NaN is looked for."""
    from tqdm import tqdm
    for net in (s.G, s.D):
        if net is not None:
            net.train()
    sums, first_bad = None, torch.full((), -1, device=rt.device, dtype=torch.long)
    bar = tqdm(loader, total=iters, desc=f'epoch {epoch}/{epochs or epoch}', disable=not rt.master,
               dynamic_ncols=True, leave=False)
    pending = None  # the last log point's [first_bad, mean losses...], on its way to the host
    for it, batch in enumerate(bar, 1):
        lr_img, hr_img = (x.to(rt.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last) for x in batch)
        losses = train_step(recipe, rt, s, lr_img, hr_img)
        if s.ema is not None:
            s.ema.update(s.G)
        stacked = torch.stack([losses[k].float() for k in sorted(losses)])
        sums = stacked if sums is None else sums + stacked
        # remember the first non-finite iteration without a host sync
        bad = ~torch.isfinite(stacked).all()
        first_bad = torch.where(bad & (first_bad < 0), it, first_bad)
        if it % log_every == 0 or it == iters:
            rt.all_reduce_max(first_bad)  # a NaN on any rank stops every rank at once
            if it == iters:
                continue  # the epoch's end, below, reads first_bad itself
            # The host reads the previous log point's figures and sends this one's: it never
            # waits for the step it has just queued, so the device never runs dry inside an
            # epoch. A NaN therefore stops training one log interval after it is recorded.
            ready, pending = pending, HostCopy(torch.cat([first_bad[None].float(), sums / it]))
            if ready is not None:
                values = ready.values()
                if values[0] >= 0:
                    break
                if rt.master:
                    bar.set_postfix({k: f'{v:.4g}' for k, v in zip(sorted(losses), values[1:])})
    bar.close()  # before any error message, so that it starts on a clean line
    if int(first_bad) >= 0:
        raise TrainingError(f'loss became NaN/inf at epoch {epoch}, iteration {int(first_bad)}; '
                            'stopped, the last good checkpoint is kept (try a lower --lr or '
                            '--amp off)')
    means = rt.mean(sums / iters)
    return dict(zip(sorted(losses), means.tolist()))



def open_tensorboard(args, rt: Runtime):
    if not (args.tensorboard and rt.master):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        rt.log('warning: --tensorboard needs the tensorboard package; not logging to it')
        return None
    return SummaryWriter(os.path.join(args.out_dir, 'tensorboard'))


def warn_thread_change(rt: Runtime, state: dict, path: str) -> None:
    """On the CPU, results depend on the number of intra-op threads: say when a resume runs
    with another count than the checkpoint's (it goes on, exact in everything else)."""
    saved, now = state.get('num_threads'), torch.get_num_threads()
    if rt.device.type == 'cpu' and saved is not None and saved != now:
        rt.log(f'warning: {path} was written by a process with {saved} CPU threads, this one '
               f'has {now}: training goes on, but not bit for bit as without the stop '
               f'(set OMP_NUM_THREADS={saved} for that)')


def check_broken_images(rt: Runtime, dataset) -> None:
    """Stop every rank in one line once one of them met more undecodable training images
    than TrainSet tolerates (each was skipped with a warning when met)."""
    try:
        dataset.check_broken()
        problem = ''
    except utils.ImageError as e:
        problem = str(e)
    problem = rt.first_problem(problem)
    if problem:
        raise TrainingError(problem if rt.master else '')


def check_setup(args, rt: Runtime) -> None:
    """setup_problem on rank 0, its verdict sent to every rank: all stop, or none."""
    problem = rt.from_master(setup_problem(args) if rt.master else '')
    if problem:
        raise SetupError(problem if rt.master else '')



def run(args, rt: Runtime) -> None:
    """The whole training run in this process (one of several under DDP), on the Runtime
    launch() chose."""
    check_setup(args, rt)
    recipe = Recipe.from_args(args)
    dataset, sampler, iters = make_train_data(args, rt)
    crops = device_crops(args, rt, dataset)
    s = build(args, rt)
    start, history, best = 1, [], -math.inf
    path, state = load_resume_checkpoint(args, rt) if args.resume is not None else (None, None)
    if state is not None:
        check_resumed_mode(args, state, path, rt)
        restore(s, state, path)
        apply_optimiser_flags(args, s, state, rt.log)
        start, history, best = state['epoch'] + 1, state['history'], state['best_psnr']
        rt.log(f'resumed from {path} (epoch {state["epoch"]})')
        if start > args.epochs:
            rt.log(f'nothing to train: {path} is at epoch {state["epoch"]} and --epochs is '
                   f'{args.epochs}; raise --epochs to train further')
            return
        warn_thread_change(rt, state, path)
    wrap(args, rt, s)
    if rt.master:
        os.makedirs(args.out_dir, exist_ok=True)
        remove_stale_temporaries(args.out_dir)
        if args.overwrite_later and resumed_epoch(args) is not None:
            set_aside_later(args, start - 1, history, rt.log)
        rt.log(f'{variant(args)} x{args.upscale_factor}: {len(dataset)} training images, '
               f'{iters} iterations/epoch, batch {args.batch_size} x {rt.world_size} process(es), '
               f'device {rt.device}, precision {rt.amp_dtype or torch.float32}')
    tb = open_tensorboard(args, rt)
    t_start = time.time()
    for epoch in range(start, args.epochs + 1):
        sampler.set_epoch(epoch)
        # The data RNG (crops, flips, worker seeds) restarts from (seed, epoch, rank) each
        # epoch: resuming is exact for any worker count, and ranks crop differently.
        torch.manual_seed(data_seed(args.seed, epoch, rt.rank))
        loader = epoch_loader(args, rt, dataset, sampler, crops, epoch)
        t0 = time.time()
        row = {'epoch': epoch, **train_epoch(recipe, rt, s, loader, epoch, iters, args.epochs,
                                              args.log_every)}
        seconds = time.time() - t0
        row.update(seconds=seconds, images_per_s=iters * args.batch_size * rt.world_size / seconds,
                   lr_g=s.opt_g.param_groups[0]['lr'])
        if s.opt_d is not None:
            row['lr_d'] = s.opt_d.param_groups[0]['lr']
        for sched in s.schedulers:
            sched.step()
        is_best = False
        if rt.master:
            if args.validset_dir and (epoch % args.val_every == 0 or epoch == args.epochs):
                row.update(validate(
                    s.eval_generator, utils.ValidSet(args.validset_dir, args.upscale_factor),
                    args.upscale_factor, rt.device,
                    os.path.join(args.out_dir, 'output', str(epoch)),
                    niqe=args.mode == 'adversarial' or args.best_metric == 'niqe', tb=tb,
                    epoch=epoch, log=rt.log, grid=args.mode == 'adversarial'))
                best = max(best, row.get('psnr_y', -math.inf))
                is_best = best_epoch(history + [row], args.best_metric, args.best_margin,
                                     args.grid_limit) == epoch
                if args.grid_limit and row.get('grid', 0) > args.grid_limit:
                    rt.log(f'warning: epoch {epoch} draws a dot grid (grid score '
                           f'{row["grid"]:.2f} > --grid_limit {args.grid_limit:g}); not kept '
                           'as best.pth')
            history.append(row)
            try:
                save_all(args, s, epoch, history, best, is_best)
                write_history(args, history)  # after the checkpoint: never an unsaved epoch
            except OSError as e:
                raise write_error(args, e) from None
            if tb is not None:
                for k, v in row.items():
                    if k != 'epoch':
                        tb.add_scalar(k, v, epoch)
            rt.log(f'epoch {epoch}: ' + ', '.join(
                f'{k} {v:.4g}' for k, v in row.items() if k != 'epoch'))
        rt.barrier()  # nobody runs ahead of the checkpoint
        check_broken_images(rt, dataset)
        if args.time_limit and time.time() - t_start > 60 * args.time_limit:
            rt.log(f'time limit of {args.time_limit} min reached after epoch {epoch}; '
                   f'continue with --resume latest')
            break
    if tb is not None:
        tb.close()


# =============================================================================================
# 8. Launching: one device, DataParallel, DDP (torchrun, SLURM, self-spawned), Lightning Fabric.
# launch(args, run) picks the Runtime; the recipe above only calls its methods.
# =============================================================================================

class Runtime:
    """One process training on one device: the device, rank and world size, the autocast
    precision, and what the recipe asks of the launcher: autocast(), backward(), wrap() and
    the collectives (no-ops here). launch() picks this class or a subclass."""

    def __init__(self, args, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: torch.device = None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.distributed = world_size > 1
        self.master = rank == 0
        if device is None:
            device = utils.device_for(args.cuda)
            if device.type == 'cuda':
                device = torch.device('cuda', local_rank)
                torch.cuda.set_device(device)
        self.device = device
        self.amp_dtype = utils.autocast_dtype(args.amp, self.device)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor, opt: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler) -> None:
        """Gradients of `loss` and one step of `opt` (through the fp16 GradScaler)."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def wrap(self, s: TrainState, nets: list) -> None:
        """Wrap the networks named in `nets` (attributes of `s`) for this launcher."""

    # collectives: every rank calls them at the same point; one process has nothing to do
    def all_reduce_max(self, t: torch.Tensor) -> None:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """`t` averaged over the ranks."""
        if self.distributed:
            dist.all_reduce(t)
            t /= self.world_size
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_master(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.distributed:
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            obj = box[0]
        return obj

    def first_problem(self, problem: str) -> str:
        """The first non-empty `problem` over the ranks, on every rank ('' when none)."""
        if self.distributed:
            problems = [None] * self.world_size
            dist.all_gather_object(problems, problem)
            problem = next((p for p in problems if p), '')
        return problem

    def log(self, *msg):
        if self.master:
            print(*msg, flush=True)


class DataParallelRuntime(Runtime):
    """--dp: one process, the networks split over the visible GPUs by nn.DataParallel."""

    def wrap(self, s: TrainState, nets: list) -> None:
        if self.device.type == 'cuda' and torch.cuda.device_count() >= 2:
            for k in nets:
                setattr(s, k, nn.DataParallel(getattr(s, k)))
            s.D_g = s.D
        else:
            self.log('warning: --dp needs at least two GPUs; training on one device')


class DistributedRuntime(Runtime):
    """--ddp: one process per device, the networks in DistributedDataParallel. D_g, the D of
    the generator step, stays bare: D is frozen there and must not join that gradient sync."""

    def wrap(self, s: TrainState, nets: list) -> None:
        if not self.distributed:
            return
        ids = [self.device.index] if self.device.type == 'cuda' else None
        for k in nets:
            setattr(s, k, nn.parallel.DistributedDataParallel(getattr(s, k), device_ids=ids))


class FabricRuntime(Runtime):
    """--lightning: Lightning Fabric owns the device, autocast (its precision plugin, the same
    dtype as --amp), backward and the wrapping."""

    def __init__(self, args, fabric):
        super().__init__(args, fabric.global_rank, fabric.world_size, fabric.local_rank,
                         fabric.device)
        self.fabric = fabric

    def autocast(self):
        return self.fabric.autocast()

    def backward(self, loss, opt, scaler) -> None:
        opt.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        opt.step()

    def wrap(self, s: TrainState, nets: list) -> None:
        for k, o in (('G', 'opt_g'), ('D', 'opt_d'))[:len(nets)]:
            net, opt = self.fabric.setup(getattr(s, k), getattr(s, o), move_to_device=False)
            setattr(s, k, net)
            setattr(s, o, opt)


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist such as 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    # no scontrol (a container, a test): the first comma-separated entry (commas inside
    # brackets do not separate hosts), each [range list] replaced by its first number
    m = re.match(r'(?:[^,\[]|\[[^\]]*\])+', nodelist.strip())
    if not m:
        raise TrainingError(f'SLURM_JOB_NODELIST {nodelist!r}: no host name in it')
    return re.sub(r'\[([^\]]*)\]', lambda r: re.split(r'[,-]', r.group(1))[0], m.group(0))


def launch_env() -> dict:
    """Rank, world size and local rank from torchrun or SLURM; {} when neither launched us."""
    env = os.environ
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return {'rank': int(env['RANK']), 'world_size': int(env['WORLD_SIZE']),
                'local_rank': int(env.get('LOCAL_RANK', 0)), 'launcher': 'torchrun'}
    if 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
        env.setdefault('MASTER_ADDR', first_slurm_host(env.get('SLURM_JOB_NODELIST', '127.0.0.1')))
        # a port derived from the job id, so two jobs sharing a node do not collide
        env.setdefault('MASTER_PORT', str(20000 + int(env.get('SLURM_JOB_ID', '0')) % 20000))
        return {'rank': int(env['SLURM_PROCID']), 'world_size': int(env['SLURM_NTASKS']),
                'local_rank': int(env.get('SLURM_LOCALID', 0)), 'launcher': 'slurm'}
    return {}


def init_distributed(args, rank: int, world_size: int, local_rank: int) -> Runtime:
    rt = DistributedRuntime(args, rank, world_size, local_rank)
    backend = args.backend
    if backend == 'auto':
        backend = 'nccl' if rt.device.type == 'cuda' else 'gloo'
    kwargs = {'device_id': rt.device} if backend == 'nccl' else {}
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=args.dist_timeout), **kwargs)
    return rt


def fabric_runtime(args) -> FabricRuntime:
    """--lightning: a Lightning Fabric (strategy ddp over --nproc devices) launched, and this
    process's runtime on it."""
    lightning = utils.require('lightning', '--lightning')
    device = utils.device_for(args.cuda)
    dtype = utils.autocast_dtype(args.amp, device)
    precision = {None: '32-true', torch.bfloat16: 'bf16-mixed', torch.float16: '16-mixed'}[dtype]
    # Fabric wants processes per node and nodes; under torchrun or srun they say them
    env, per_node, num_nodes = os.environ, None, 1
    if 'WORLD_SIZE' in env and 'LOCAL_WORLD_SIZE' in env:
        per_node = int(env['LOCAL_WORLD_SIZE'])
        num_nodes = int(env['WORLD_SIZE']) // per_node
    elif int(env.get('SLURM_NTASKS', 1)) > 1 and 'SLURM_NTASKS_PER_NODE' in env:
        per_node = int(re.match(r'\d+', env['SLURM_NTASKS_PER_NODE']).group())
        num_nodes = int(env.get('SLURM_NNODES', 1))
    devices = args.nproc or per_node or (torch.cuda.device_count() if args.cuda else 1)
    strategy = 'auto'
    if devices * num_nodes > 1:
        strategy = lightning.fabric.strategies.DDPStrategy(
            process_group_backend=None if args.backend == 'auto' else args.backend,
            timeout=datetime.timedelta(seconds=args.dist_timeout))
    fabric = lightning.Fabric(accelerator=device.type, devices=devices, num_nodes=num_nodes,
                              precision=precision, strategy=strategy)
    fabric.launch()  # starts the other processes (or joins SLURM's / torchrun's)
    return FabricRuntime(args, fabric)


def stop_on_sigterm(signum, frame):
    """SIGTERM (kill, a scheduler's preemption) stops training as Ctrl-C does: what is being
    written is abandoned (atomic_write removes its temporary file), the last checkpoint
    stays."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """stop_on_sigterm as the SIGTERM handler inside the block (main thread only)."""
    try:
        before = signal.signal(signal.SIGTERM, stop_on_sigterm)
    except ValueError:  # not the main thread: leave the handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def worker(local_rank: int, run_fn, args, world_size: int, port: int) -> None:
    """Entry point of a self-spawned DDP process."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        run_process(run_fn, args, local_rank, world_size, local_rank)
    except (TrainingError, utils.UsageError, utils.ImageError, utils.CheckpointError) as e:
        # one line here; the parent then stops the other processes and exits non-zero
        sys.exit(report(e))
    except OSError as e:
        sys.exit(report(write_error(args, e)))
    except KeyboardInterrupt:
        sys.exit(utils.EXIT_INTERRUPTED)


def run_process(run_fn, args, rank: int, world_size: int, local_rank: int) -> None:
    rt = init_distributed(args, rank, world_size, local_rank)
    try:
        run_fn(args, rt)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launch(args, run_fn) -> None:
    """Call run_fn(args, rt) in every process the flags ask for, each with its Runtime: one
    device, --dp, --ddp (under torchrun or srun, or spawning --nproc processes itself) or
    --lightning."""
    if args.dp + args.ddp + args.lightning > 1:
        raise SetupError('choose one of --dp, --ddp and --lightning')
    if args.sync_bn and not args.cuda and (args.ddp or args.lightning):
        raise SetupError('--sync_bn needs --cuda (SyncBatchNorm has no CPU implementation)')
    if args.lightning:
        run_fn(args, fabric_runtime(args))
    elif args.ddp:
        env = launch_env()
        if env:
            run_process(run_fn, args, env['rank'], env['world_size'], env['local_rank'])
            return
        nproc = args.nproc or (torch.cuda.device_count() if args.cuda else 0)
        if nproc < 1:
            raise SetupError('--ddp on the CPU needs --nproc N (or launch it with '
                             'torchrun / srun)')
        problem = setup_problem(args)  # here, before any process starts
        if problem:
            raise SetupError(problem)
        import torch.multiprocessing as mp
        workers = mp.spawn(worker, args=(run_fn, args, nproc, free_port()), nprocs=nproc,
                           join=False)
        try:
            while not workers.join():
                pass
        except mp.ProcessExitedException as e:
            raise TrainingError(f'DDP {e}; the other processes were stopped') from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM here: the workers stop as this does
            for p in workers.processes:
                if p.is_alive():
                    p.terminate()  # SIGTERM: stop_on_sigterm, a clean stop
            for p in workers.processes:
                p.join(60)
            raise
    elif args.dp:
        if not args.cuda:
            utils.warn('--dp splits batches over GPUs, and without --cuda there are none: '
                       'training on the CPU as without --dp')
        run_fn(args, DataParallelRuntime(args))
    else:
        run_fn(args, Runtime(args))


def report(e: Exception) -> int:
    """One line on stderr (utils.error); nothing for the empty message of a rank that was told
    to stop. An error raised in a DataLoader worker arrives as its whole traceback: its last
    line is kept. Returns the exit status (README.md, "Conventions")."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1:
        lines = [re.sub(r'^[\w.]+Error: ', '', lines[-1])]
    if lines:
        utils.error(lines[0])
    return utils.EXIT_USAGE if isinstance(e, utils.UsageError) else utils.EXIT_FAILED


def write_error(args, e: OSError) -> TrainingError:
    """A write that failed anywhere in the run (validation samples, history.csv, checkpoints,
    weights, TensorBoard, moving files aside) as one line: 'no space left writing <file>' for
    a full disk. What was written before stays: every file is written atomically, the
    checkpoint of the epoch before included."""
    return TrainingError(utils.write_failure(e.filename or args.out_dir, e))


def main(argv=None) -> int:
    args = get_args(argv)
    shown, warnings.showwarning = warnings.showwarning, utils.show_warning  # one line each
    try:
        with sigterm_as_interrupt():
            launch(args, run)
    except (TrainingError, utils.UsageError, utils.ImageError, utils.CheckpointError) as e:
        return report(e)
    except OSError as e:
        return report(write_error(args, e))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        if os.path.isdir(args.out_dir):
            remove_stale_temporaries(args.out_dir)
        utils.error('interrupted; the last checkpoint is kept, continue with --resume latest')
        return utils.EXIT_INTERRUPTED
    finally:
        warnings.showwarning = shown
    return 0


if __name__ == '__main__':
    sys.exit(main())
