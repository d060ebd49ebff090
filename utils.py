"""Everything the scripts share: image I/O, colour, MATLAB-style imresize, PSNR/SSIM, datasets,
sub-image preparation (this file's __main__), checkpoints, and tiled inference.

Conventions (DESIGN.md): tensors are RGB float32 in [0, 1], CHW or NCHW; metrics are computed
on 8-bit images with BT.601 (MATLAB) YCbCr.
"""
import functools
import math
import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


# ---------------------------------------------------------------------------------------------
# Image I/O
# ---------------------------------------------------------------------------------------------

class ImageError(Exception):
    """An input image that cannot be used; str() is one line naming the file and the problem."""


def list_images(root: str, recursive: bool = True) -> list:
    """Sorted paths of the image files under `root`."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [os.path.join(dirpath, f) for f in filenames
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
        if not recursive:
            break
    return sorted(paths)


def open_image(path: str) -> Image.Image:
    """Open and fully decode an image with EXIF orientation applied, or raise ImageError."""
    if not os.path.exists(path):
        raise ImageError(f'{path}: file not found')
    if os.path.isdir(path):
        raise ImageError(f'{path}: is a folder, not an image')
    if os.path.getsize(path) == 0:
        raise ImageError(f'{path}: empty file (0 bytes)')
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError(f'{path}: not an image (unrecognised format)') from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f'{path}: truncated or corrupt image ({e})') from None
    except Image.DecompressionBombError as e:
        raise ImageError(f'{path}: image too large ({e})') from None
    if img.width == 0 or img.height == 0:
        raise ImageError(f'{path}: image has zero size')
    return img


def pil_to_array(img: Image.Image) -> tuple:
    """(rgb, alpha): float32 arrays in [0, 1], rgb HxWx3, alpha HxW or None."""
    alpha = None
    mode = img.mode
    if mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
        mode = img.mode
    if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        # 16-bit grayscale (PIL reads 16-bit PNGs as mode I or I;16)
        gray = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2), None
    if mode == 'F':
        gray = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(gray[..., None], 3, axis=2), None
    if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        alpha = np.asarray(img.getchannel('A'), dtype=np.float32) / 255.0
    if mode != 'RGB':
        img = img.convert('RGB')  # L, 1, CMYK, YCbCr, LAB, HSV, RGBA, LA ...
    return np.asarray(img, dtype=np.float32) / 255.0, alpha


def load_image(path: str) -> tuple:
    """Load any PIL-readable image as (rgb, alpha): rgb a (3, H, W) float32 tensor in [0, 1],
    alpha a (1, H, W) tensor or None. Raises ImageError naming the file."""
    rgb, alpha = pil_to_array(open_image(path))
    rgb = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    if alpha is not None:
        alpha = torch.from_numpy(np.ascontiguousarray(alpha))[None]
    return rgb, alpha


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) float tensor in [0, 1] -> HxWxC uint8 array (clamped, rounded)."""
    x = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return x.permute(1, 2, 0).numpy()


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then rename onto `path`: readers never see a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_image(x: torch.Tensor, path: str, alpha: torch.Tensor = None) -> None:
    """Save a (3, H, W) [0, 1] tensor (plus optional (1, H, W) alpha) as an 8-bit image.
    The format follows the extension; PNG is lossless."""
    arr = to_uint8(x)
    if alpha is not None:
        arr = np.concatenate([arr, to_uint8(alpha)], axis=2)
    img = Image.fromarray(arr)
    ext = os.path.splitext(path)[1].lower()
    if ext in ('.jpg', '.jpeg') and img.mode == 'RGBA':
        img = img.convert('RGB')
    kwargs = {'quality': 95} if ext in ('.jpg', '.jpeg') else {}
    fmt = Image.registered_extensions().get(ext, 'PNG')
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))


# ---------------------------------------------------------------------------------------------
# Colour: BT.601 YCbCr, MATLAB convention (rgb2ycbcr / ycbcr2rgb)
# ---------------------------------------------------------------------------------------------

_RGB2YCBCR = torch.tensor([[65.481, 128.553, 24.966],
                           [-37.797, -74.203, 112.0],
                           [112.0, -93.786, -18.214]], dtype=torch.float64) / 255.0
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0


def rgb_to_ycbcr(x):
    """RGB in [0, 1] -> YCbCr in [0, 1] (Y in [16/255, 235/255]). Channels first for tensors
    (..., 3, H, W), last for numpy arrays (..., 3)."""
    if isinstance(x, np.ndarray):
        m, o = _RGB2YCBCR.numpy(), _YCBCR_OFFSET.numpy()
        return x @ m.T + o
    m, o = _RGB2YCBCR.to(x.device, x.dtype), _YCBCR_OFFSET.to(x.device, x.dtype)
    return torch.einsum('ij,...jhw->...ihw', m, x) + o.view(3, 1, 1)


def ycbcr_to_rgb(x):
    """Inverse of rgb_to_ycbcr."""
    inv = torch.linalg.inv(_RGB2YCBCR)
    if isinstance(x, np.ndarray):
        return (x - _YCBCR_OFFSET.numpy()) @ inv.numpy().T
    inv, o = inv.to(x.device, x.dtype), _YCBCR_OFFSET.to(x.device, x.dtype)
    return torch.einsum('ij,...jhw->...ihw', inv, x - o.view(3, 1, 1))


# ---------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic imresize
# ---------------------------------------------------------------------------------------------

def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """(out_len, in_len) float64 matrix M with out = M @ in along one axis, as MATLAB's
    imresize computes it: kernel widened by 1/scale when shrinking, symmetric edges."""
    kernel_width = 4.0
    kernel = _cubic
    if scale < 1 and antialias:
        kernel_width /= scale
        kernel = lambda t: scale * _cubic(scale * t)  # noqa: E731
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)           # output pixel centre in input coordinates
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # 1-based
    w = kernel(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric padding: index -> reflected index (1-based), like MATLAB's 'symmetric'
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    idx0 = mirror[torch.remainder(idx.long() - 1, 2 * in_len)]
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    m.scatter_add_(1, idx0, w)
    return m


def imresize(x: torch.Tensor, scale: float = None, size: tuple = None,
             antialias: bool = True) -> torch.Tensor:
    """MATLAB-compatible bicubic resize of a (..., H, W) float tensor.

    Give `scale` (output size ceil(H*scale) x ceil(W*scale)) or `size` (H, W). No clamping and
    no rounding: the caller decides (MATLAB rounds uint8 input)."""
    h, w = x.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError('imresize needs scale or size')
        size = (int(math.ceil(h * scale - 1e-9)), int(math.ceil(w * scale - 1e-9)))
        sh = sw = float(scale)
    else:
        sh, sw = size[0] / h, size[1] / w
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    mh = _resize_matrix(h, size[0], sh, antialias).to(x.device, dtype)
    mw = _resize_matrix(w, size[1], sw, antialias).to(x.device, dtype)
    out = torch.matmul(mh, x.to(dtype))
    return torch.matmul(out, mw.T)


def modcrop(x, scale: int):
    """Crop the bottom/right so that H and W are multiples of `scale` ((..., H, W) tensors or
    HxW[xC] arrays)."""
    if isinstance(x, np.ndarray):
        h, w = x.shape[:2]
        return x[:h - h % scale, :w - w % scale]
    h, w = x.shape[-2:]
    return x[..., :h - h % scale, :w - w % scale]


# ---------------------------------------------------------------------------------------------
# Metrics: on 8-bit images, border cropped, float64 (DESIGN.md)
# ---------------------------------------------------------------------------------------------

def _as_uint8_hwc(img) -> np.ndarray:
    """Accept a (3, H, W) [0, 1] tensor or an HxWx3 / HxW uint8 array."""
    if isinstance(img, torch.Tensor):
        img = to_uint8(img)
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f'metrics expect uint8 images or [0, 1] tensors, got {img.dtype}')
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def _prepare(img1, img2, crop_border: int, y_channel: bool) -> tuple:
    a, b = _as_uint8_hwc(img1), _as_uint8_hwc(img2)
    if a.shape != b.shape:
        raise ValueError(f'image shapes differ: {a.shape} vs {b.shape}')
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    a = rgb_to_ycbcr(a.astype(np.float64) / 255.0) * 255.0
    b = rgb_to_ycbcr(b.astype(np.float64) / 255.0) * 255.0
    if y_channel:
        a, b = a[..., :1], b[..., :1]
    return a, b


def psnr(img1, img2, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB on the 0-255 scale; `y_channel=False` uses all three YCbCr channels.
    Identical images give float('inf')."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float('inf')
    return float(10.0 * np.log10(255.0 ** 2 / mse))


@functools.lru_cache(maxsize=1)
def _gaussian_window() -> torch.Tensor:
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


def _ssim_channel(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (H, W) float64 tensors on the 0-255 scale; 11x11 Gaussian, valid region."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window()
    a, b = a[None, None], b[None, None]
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a ** 2
    var_b = F.conv2d(b * b, win) - mu_b ** 2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    ssim_map = (((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(ssim_map.mean())


def ssim(img1, img2, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004) on the 0-255 scale; the mean over channels for YCbCr."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f'SSIM needs images of at least 11x11 after cropping, got {a.shape[:2]}')
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


def image_metrics(sr, hr, scale: int) -> dict:
    """PSNR/SSIM on Y and on YCbCr, border of `scale` pixels cropped."""
    return {'psnr_y': psnr(sr, hr, scale, True), 'ssim_y': ssim(sr, hr, scale, True),
            'psnr_ycbcr': psnr(sr, hr, scale, False), 'ssim_ycbcr': ssim(sr, hr, scale, False)}


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------

def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values to the 8-bit grid, as an LR image saved to disk would be."""
    return x.clamp(0, 1).mul(255).round().div(255)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The project's one degradation: MATLAB bicubic shrink by 1/scale, rounded to 8 bits."""
    return quantize(imresize(hr, 1.0 / scale))


class TrainSet(torch.utils.data.Dataset):
    """Random HR crops and their bicubic LR: dataset[i] -> (lr, hr), float [0, 1].

    Every image under `root` (recursive, sorted). `augment` applies the same random flips and
    90-degree rotation to both. Randomness comes from torch's global generator (seeded per
    DataLoader worker), so fixed seeds reproduce runs. `cache` keeps decoded images in memory
    as uint8 (for small sets; forked workers share it copy-on-write)."""

    def __init__(self, root: str, upscale_factor: int = 4, crop_size: int = 96,
                 augment: bool = True, cache: bool = False):
        if crop_size % upscale_factor:
            raise ValueError(f'crop_size {crop_size} is not a multiple of the scale '
                             f'{upscale_factor}')
        if not os.path.isdir(root):
            raise ImageError(f'{root}: training folder not found')
        self.scale, self.crop_size, self.augment = upscale_factor, crop_size, augment
        paths = list_images(root)
        if not paths:
            raise ImageError(f'{root}: no images (png, jpg, jpeg, bmp, webp) in this folder')
        self.paths, small, broken = [], 0, 0
        for p in paths:
            try:
                with Image.open(p) as img:
                    w, h = img.size
            except Exception:
                broken += 1
                warnings.warn(f'{p}: not a readable image, left out')
                continue
            if min(w, h) < crop_size:
                small += 1
            else:
                self.paths.append(p)
        if small:
            warnings.warn(f'{root}: {small} image(s) smaller than the {crop_size}px crop left out')
        if not self.paths:
            raise ImageError(f'{root}: no usable image of at least {crop_size}x{crop_size}')
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _load_uint8(self, i: int) -> torch.Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img = open_image(self.paths[i])
        arr = np.asarray(img.convert('RGB') if img.mode != 'RGB' else img)
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if self.cache is not None:
            self.cache[i] = t
        return t

    def __getitem__(self, i: int) -> tuple:
        img = self._load_uint8(i)
        h, w = img.shape[-2:]
        c = self.crop_size
        top = int(torch.randint(0, h - c + 1, (1,)))
        left = int(torch.randint(0, w - c + 1, (1,)))
        hr = img[:, top:top + c, left:left + c]
        if self.augment:
            flips = torch.randint(0, 2, (3,)).tolist()
            if flips[0]:
                hr = hr.flip(-1)
            if flips[1]:
                hr = hr.flip(-2)
            if flips[2]:
                hr = hr.transpose(-1, -2)
        hr = hr.float().div_(255)
        return downscale(hr, self.scale), hr.contiguous()


class ValidSet(torch.utils.data.Dataset):
    """Whole images: dataset[i] -> (lr, hr, name); hr modcropped, lr = downscale(hr)."""

    def __init__(self, root: str, upscale_factor: int = 4):
        if not os.path.isdir(root):
            raise ImageError(f'{root}: validation folder not found')
        self.paths = list_images(root)
        if not self.paths:
            raise ImageError(f'{root}: no images in this folder')
        self.scale = upscale_factor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        hr, _ = load_image(self.paths[i])
        hr = modcrop(hr, self.scale)
        return downscale(hr, self.scale), hr, os.path.basename(self.paths[i])


# ---------------------------------------------------------------------------------------------
# Checkpoints and weights files
# ---------------------------------------------------------------------------------------------

class CheckpointError(Exception):
    """A weights or checkpoint file that cannot be used; str() names the file."""


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save to a temporary file, then os.replace: a kill never leaves a broken file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint or weights file safely (weights_only=True), or raise CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: file not found')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path}: not a readable PyTorch weights file ({msg})') from None
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: expected a dict, got {type(state).__name__}')
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DataParallel / DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, 'module'):
            model = model.module
        elif hasattr(model, '_orig_mod'):
            model = model._orig_mod
        else:
            return model


def weights_dict(generator: torch.nn.Module, half: bool = False, **meta) -> dict:
    """The weights-file format: the generator's state_dict plus what rebuilds it."""
    g = unwrap(generator)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in g.state_dict().items()}
    return {'generator': state, **g.config, **meta}


def save_weights(generator: torch.nn.Module, path: str, half: bool = False, **meta) -> None:
    save_checkpoint(weights_dict(generator, half, **meta), path)


def _generator_state(state: dict) -> tuple:
    """(state_dict, config) from a weights file, a training checkpoint or a bare state_dict."""
    if 'generator' in state and isinstance(state['generator'], dict):
        sd, cfg = state['generator'], state
        if 'config' in state and isinstance(state['config'], dict):
            cfg = state['config']
    elif 'model' in state and isinstance(state['model'], dict):
        sd, cfg = state['model'], state
    else:
        sd, cfg = state, {}
    sd = {k.removeprefix('module.').removeprefix('_orig_mod.'): v for k, v in sd.items()}
    return sd, cfg


def _infer_config(sd: dict) -> dict:
    """Generator hyper-parameters read off a state_dict's keys and shapes."""
    blocks = {int(k.split('.')[1]) for k in sd if k.startswith('body.')}
    ups = {int(k.split('.')[1]) for k in sd if k.startswith('upsample.')}
    cfg = {'num_blocks': len(blocks), 'upscale_factor': 2 ** len(ups)}
    if 'head.0.weight' in sd:
        cfg['channels'] = sd['head.0.weight'].shape[0]
    return cfg


def load_generator(path: str, upscale_factor: int = None, device='cpu'):
    """Build the Generator a weights file describes and load it (float32, eval mode).

    `upscale_factor`, when given, must agree with the file. Raises CheckpointError."""
    from model import Generator
    sd, cfg = _generator_state(load_checkpoint(path))
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f'{path}: holds no generator state_dict')
    inferred = _infer_config(sd)
    if inferred['num_blocks'] == 0 or 'channels' not in inferred:
        raise CheckpointError(f'{path}: not an SRResNet/SRGAN generator for this model '
                              f'(keys like {sorted(sd)[:3]})')
    file_scale = int(cfg.get('upscale_factor', inferred['upscale_factor']))
    if upscale_factor is not None and int(upscale_factor) != file_scale:
        raise CheckpointError(f'{path}: holds an x{file_scale} generator, but '
                              f'--upscale_factor {upscale_factor} was asked for')
    try:
        g = Generator(file_scale, int(cfg.get('num_blocks', inferred['num_blocks'])),
                      int(cfg.get('channels', inferred['channels'])))
        g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f'{path}: does not match the Generator '
                              f'({str(e).strip().splitlines()[0]})') from None
    return g.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Tiled inference
# ---------------------------------------------------------------------------------------------

def _tile_starts(length: int, tile: int, overlap: int) -> list:
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


@torch.inference_mode()
def tiled_forward(model, lr: torch.Tensor, scale: int, tile: int = 0,
                  overlap: int = 16) -> torch.Tensor:
    """Run `model` on a (N, 3, h, w) LR tensor, in tiles of `tile` LR pixels overlapping by
    `overlap` on each side, so peak memory is bounded by the tile size; tile=0 runs whole.

    Each output pixel is taken from the tile in which it lies furthest from a tile edge
    (the centre parts), so the receptive field is complete there."""
    n, c, h, w = lr.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(lr)
    if tile <= 2 * overlap:
        raise ValueError(f'tile ({tile}) must be larger than twice the overlap ({overlap})')
    out = None
    for top in _tile_starts(h, tile, overlap):
        for left in _tile_starts(w, tile, overlap):
            patch = lr[..., top:top + tile, left:left + tile]
            sr = model(patch)
            if out is None:
                out = torch.empty(n, sr.shape[1], h * scale, w * scale, dtype=sr.dtype,
                                  device=sr.device)
            ph, pw = patch.shape[-2:]
            # keep the region of this tile from `overlap` inside its edges, except at the
            # image borders; tiles are ordered so later ones overwrite only what they own
            t0 = top + overlap if top > 0 else 0
            l0 = left + overlap if left > 0 else 0
            t1 = top + ph - overlap if top + ph < h else h
            l1 = left + pw - overlap if left + pw < w else w
            out[..., t0 * scale:t1 * scale, l0 * scale:l1 * scale] = \
                sr[..., (t0 - top) * scale:(t1 - top) * scale,
                   (l0 - left) * scale:(l1 - left) * scale]
    return out
