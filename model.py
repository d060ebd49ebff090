"""SRGAN networks: the SRResNet generator, the discriminator and the VGG19 feature extractor.

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network" (CVPR 2017), Figure 4. Every network takes RGB tensors in [0, 1], NCHW.
"""
import copy
import math
import os
import pickle
import re
import socket
import warnings
import zipfile

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """conv3x3 - BN - PReLU - conv3x3 - BN, plus the identity skip."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.prelu(self.bn1(self.conv1(x)))
        return x + self.bn2(self.conv2(y))


def icnr_(conv: nn.Conv2d, upscale: int = 2) -> None:
    """ICNR initialisation (Aitken et al. 2017) of a conv followed by PixelShuffle(upscale):
    the upscale**2 output channels that form one sub-pixel group get the same kernel and bias,
    so a fresh layer equals nearest-neighbour upsampling of a normal conv, free of the
    checkerboard pattern a random sub-pixel init starts from."""
    groups = upscale ** 2
    base = torch.empty(conv.out_channels // groups, *conv.weight.shape[1:])
    nn.init.kaiming_normal_(base, a=0.25)  # a: PReLU's initial slope
    with torch.no_grad():
        # PixelShuffle takes channel c * r**2 + k to sub-pixel k of output channel c
        conv.weight.copy_(base.repeat_interleave(groups, dim=0))
        if conv.bias is not None:
            conv.bias.zero_()


class UpsampleBlock(nn.Module):
    """Sub-pixel convolution: conv to 4x channels, PixelShuffle(2), PReLU; doubles H and W.
    The conv starts ICNR-initialised (no checkerboard in a fresh generator)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1)
        icnr_(self.conv, 2)
        self.shuffle = nn.PixelShuffle(2)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.shuffle(self.conv(x)))


class Generator(nn.Module):
    """SRResNet: the SRGAN generator. Output has no activation; clamp when making images."""

    def __init__(self, upscale_factor: int = 4, num_blocks: int = 16, channels: int = 64):
        super().__init__()
        if upscale_factor not in (2, 4, 8):
            raise ValueError(f'upscale_factor must be 2, 4 or 8, got {upscale_factor}')
        self.config = {'upscale_factor': upscale_factor, 'num_blocks': num_blocks,
                       'channels': channels}
        self.upscale_factor = upscale_factor
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU(channels))
        # A list comprehension, not [ResidualBlock()] * n: that would share one block's weights.
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(channels))
        self.upsample = nn.Sequential(
            *[UpsampleBlock(channels) for _ in range(int(math.log2(upscale_factor)))])
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        x = x + self.body_tail(self.body(x))
        return self.tail(self.upsample(x))


def fuse_batchnorm(generator: Generator) -> Generator:
    """An eval-mode copy of `generator` with every BatchNorm folded into the conv before it."""
    fused = copy.deepcopy(generator).eval()
    pairs = [(fused.body_tail, '0', '1')]
    pairs += [(block, 'conv1', 'bn1') for block in fused.body]
    pairs += [(block, 'conv2', 'bn2') for block in fused.body]
    for parent, conv_name, bn_name in pairs:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return fused


class Discriminator(nn.Module):
    """The paper's 8-conv discriminator; returns logits of shape (N, 1) for any input >= 32 px.

    spectral_norm: every conv and dense layer spectrally normalised (Miyato et al. 2018) and no
    BatchNorm (it would undo the Lipschitz bound), the usual stabiliser for GAN SR.
    """

    def __init__(self, channels: int = 64, spectral_norm: bool = False):
        super().__init__()
        self.spectral_norm = spectral_norm
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers = [sn(nn.Conv2d(3, channels, 3, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
        spec = [(channels, channels, 2), (channels, 2 * channels, 1),
                (2 * channels, 2 * channels, 2), (2 * channels, 4 * channels, 1),
                (4 * channels, 4 * channels, 2), (4 * channels, 8 * channels, 1),
                (8 * channels, 8 * channels, 2)]
        for cin, cout, stride in spec:
            if spectral_norm:
                layers += [sn(nn.Conv2d(cin, cout, 3, stride=stride, padding=1)),
                           nn.LeakyReLU(0.2, inplace=True)]
            else:
                layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                           nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        # 96x96 input -> 6x6 feature map after four stride-2 convs, exactly the paper's head;
        # the adaptive pool lets other crop sizes use the same dense layers.
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(nn.Flatten(), sn(nn.Linear(8 * channels * 36, 1024)),
                                        nn.LeakyReLU(0.2, inplace=True), sn(nn.Linear(1024, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def load_state_file(path: str):
    """Read a .pth file (weights, checkpoint) onto the CPU with weights_only=True: the project's
    one torch.load. Tensors and plain containers only; a file holding other pickled Python
    objects raises instead of running their code. utils.load_checkpoint adds the one-line
    messages."""
    with warnings.catch_warnings():  # torch's notices about the pickle protocol of old files
        warnings.simplefilter('ignore', UserWarning)
        return torch.load(path, map_location='cpu', weights_only=True)


def load_failure(path: str, e: Exception) -> str:
    """Why load_state_file(path) raised `e`, in a few words for a one-line message: the
    Python objects weights_only refused, an old-format (non-zip) pickle it cannot read, or a
    file that is no torch.save file (corrupt, truncated, something else)."""
    refused = sorted(set(re.findall(r'Unsupported global: GLOBAL ([\w.]+)', str(e))))
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
    except OSError:
        head = b''
    old = not zipfile.is_zipfile(path) and head[:1] == b'\x80'  # a pickle, not a zip
    what = 'an old-format (non-zip) pickle' if old else 'a file'
    if refused:
        return (f'refused: {what} holding pickled Python objects (weights_only): '
                f'{", ".join(refused[:3])}')
    if old and isinstance(e, pickle.UnpicklingError):
        return (f'{what} that safe loading (weights_only) cannot read; save the weights again '
                'with torch.save from a copy you trust')
    if old:
        return f'{what}, corrupt or truncated ({type(e).__name__})'
    return f'not a PyTorch weights file, or corrupt or truncated ({type(e).__name__})'


class VGGWeightsError(RuntimeError):
    """The VGG19 weights for the perceptual loss could not be obtained."""


def _vgg19_state_dict(weights: str) -> dict:
    """ImageNet VGG19 weights from torchvision (downloaded once) or from a local file."""
    if weights == 'imagenet':
        from torchvision.models import VGG19_Weights
        # A machine without internet must fail fast with a useful message, not hang.
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
        except Exception as e:
            raise VGGWeightsError(
                f'could not download the ImageNet VGG19 weights ({type(e).__name__}: {e}). '
                "Download torchvision's vgg19-dcbb9e9d.pth on a machine with internet and pass "
                '--vgg_weights /path/to/vgg19-dcbb9e9d.pth (or put it in '
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')})") from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    if not os.path.isfile(weights):
        raise VGGWeightsError(f'{weights}: VGG19 weights file not found')
    try:
        state = load_state_file(weights)
    except Exception as e:
        raise VGGWeightsError(f'{weights}: not a readable VGG19 weights file: '
                              f'{load_failure(weights, e)}') from None
    if not isinstance(state, dict):
        raise VGGWeightsError(f'{weights}: expected a VGG19 state_dict, got {type(state).__name__}')
    return state


class FeatureExtractor(nn.Module):
    """VGG19 features up to relu5_4 ("VGG54"), frozen; takes [0, 1] RGB and normalises itself.

    weights: 'imagenet' (torchvision, downloaded and cached), a path to a VGG19 state_dict,
    or 'random' (smoke tests only: the perceptual loss is then meaningless).
    """

    def __init__(self, weights: str = 'imagenet'):
        super().__init__()
        from torchvision.models import vgg19
        state = None
        if weights == 'random':
            warnings.warn('FeatureExtractor uses RANDOM VGG19 weights: the perceptual loss is '
                          'meaningless; use this for smoke tests only', stacklevel=2)
        else:  # fetch and check the weights first, so a bad path fails fast
            state = _vgg19_state_dict(weights)
            state = {k[len('features.'):]: v for k, v in state.items()
                     if k.startswith('features.')} or state
        # Only the convolutional part is needed: build VGG19 on the meta device (no memory,
        # no 102M-parameter classifier to initialise), keep conv1_1 ... relu5_4.
        with torch.device('meta'):
            features = vgg19(weights=None).features[:36]
        self.features = features.to_empty(device='cpu')
        if state is None:
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        else:
            missing, unexpected = self.features.load_state_dict(
                {k: v for k, v in state.items()
                 if not (k.split('.')[0].isdigit() and int(k.split('.')[0]) >= 36)}, strict=False)
            if missing or unexpected:
                raise VGGWeightsError(f'{weights}: not VGG19 features weights (missing '
                                      f'{missing[:2]}, unexpected {unexpected[:2]})')
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: frozen features, no dropout/BN to update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)
