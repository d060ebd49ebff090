"""Everything the scripts share, in data-flow order:

    1. Image I/O      the error contract (SRError, UsageError, run_main, check_input);
                      files <-> (3, H, W) float tensors; ImageError; atomic writes;
                      load_photo / save_photo (test_image's outputs keep the input's kind)
    2. Colour         RGB <-> BT.601 YCbCr (MATLAB's rgb2ycbcr)
    3. Resize         MATLAB-compatible bicubic imresize, modcrop, the degradation (downscale)
    4. Metrics        PSNR / SSIM on 8-bit images, as the published tables compute them;
                      NIQE (no reference, as MATLAB's niqe); LPIPS (optional)
    5. Datasets       TrainSet (random crops), ValidSet (whole images), make_loader,
                      DeviceCrops (TrainSet's batches cut on the training device)
    6. Preparation    cutting training images into sub-images; this file's command line
    7. Checkpoints    safe loading, atomic saving, weights files, load_generator
    8. Inference      autocast precision, the tiling policy, tiled_forward, super_resolve,
                      ensemble_resolve (the 8-transform self-ensemble)
    9. Command line   the inference scripts' flags, the device --cuda asks for, argparse
                      types for bounded numbers
   10. One photo      process_image: one file in, sr_/bicubic_/lr_ files out (test_image.py,
                      demo.py)
   11. Crops          boxes, patches and comparison pictures (get_img_crop.py, demo.py)

Conventions (README.md, "Conventions"): tensors are RGB float32 in [0, 1], CHW or NCHW;
metrics are computed on 8-bit images with BT.601 (MATLAB) YCbCr.

    python utils.py --input data/DIV2K_train_HR --output data/DIV2K_train_sub
"""
import os
import signal
import sys

if __name__ == '__main__':  # Ctrl-C while loading: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

import argparse
import contextlib
import errno
import functools
import importlib
import math
import multiprocessing
import random
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from model import Generator, fuse_batchnorm, load_failure, load_state_file


# =============================================================================================
# 1. Image I/O
# Files in and out. Tensors are RGB float32 in [0, 1], (3, H, W); every unusable input
# raises ImageError (one line naming the file); every file is written atomically. First the
# scripts' error contract: every error class derives from SRError and carries its exit status;
# run_main (or the @script decorator on a main) turns one into one line 'error: ...' on stderr
# and that status: 2 when the command cannot run as given (UsageError, CheckpointPathError,
# argparse's own code), 1 when the work failed, 130 for Ctrl-C (README.md, "Conventions").
# =============================================================================================

EXIT_FAILED = 1  # the work failed: unusable file contents, a failed write, a NaN loss ...
EXIT_USAGE = 2   # the command cannot run as given; argparse exits with 2 for bad flags too
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process that SIGINT ended


class SRError(Exception):
    """A problem a script reports as one line on stderr and ends with `exit_status` (the
    class's, README.md "Conventions"). Every error class of the project derives from it, with
    one base each: the status is an attribute, not a second parent. str() is one line."""
    exit_status = EXIT_FAILED


class UsageError(SRError):
    """The command cannot run as given: a flag's value or a combination of flags, a file or
    folder it names that is missing, of the wrong kind or empty, or a device or package the
    flags ask for that this machine lacks."""
    exit_status = EXIT_USAGE


class Interrupted(SRError):
    """Ctrl-C: what was finished stays, the rest is not written."""
    exit_status = EXIT_INTERRUPTED


def one_line(text: str) -> str:
    """`text` with control characters (newlines, tabs, terminal escapes) and line separators
    written as Python escapes ('\\n', '\\x1b'), so that a message naming any file name is one
    line and cannot move the terminal's cursor."""
    return ''.join(c.encode('unicode_escape').decode('ascii')
                   if unicodedata.category(c) in ('Cc', 'Zl', 'Zp') else c for c in text)


def error(msg: str) -> None:
    """Report a problem: one line on stderr (one_line escapes what would break it)."""
    print(f'error: {one_line(msg)}', file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """Say something the user should know that does not stop the work: one line on stderr."""
    print(f'warning: {one_line(msg)}', file=sys.stderr, flush=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the scripts: a Python or PyTorch warning as one line
    ('warning: TEXT (Category, file.py:N)'), without the source line Python prints under it."""
    print(f'warning: {one_line(str(message).strip())} ({category.__name__}, '
          f'{os.path.basename(filename)}:{lineno})', file=file or sys.stderr, flush=True)


def exit_status(e: BaseException) -> int:
    """The exit status for `e`: its class's exit_status, EXIT_FAILED for anything else."""
    return getattr(e, 'exit_status', EXIT_FAILED)


def fail(*problems: Exception) -> int:
    """Report each problem on its own line; the exit status: the highest of theirs (so
    EXIT_USAGE when any of them is a UsageError)."""
    for e in problems:
        error(str(e))
    return max(exit_status(e) for e in problems)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: temporary files removed


def run_main(main: Callable, argv=None) -> int:
    """main(argv)'s exit status, with the contract applied: an SRError it raises becomes its
    one line on stderr and its exit_status, Ctrl-C (and SIGTERM) the line 'error: interrupted'
    and 130, after the code it interrupted has removed its temporary files; warnings are shown
    one line each (show_warning)."""
    handlers, shown = {}, warnings.showwarning
    warnings.showwarning = show_warning
    if threading.current_thread() is threading.main_thread():
        for signum, handler in ((signal.SIGINT, signal.default_int_handler),
                                (signal.SIGTERM, _terminated)):
            if signal.getsignal(signum) is not signal.SIG_IGN:  # a background job keeps it
                handlers[signum] = signal.signal(signum, handler)
    try:
        return main(argv) or 0
    except SRError as e:
        return fail(e)
    except KeyboardInterrupt:
        return fail(Interrupted('interrupted'))
    finally:
        warnings.showwarning = shown
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def script(main: Callable) -> Callable:
    """Decorator for a script's main(argv=None): calling it (from the shell's __main__ or a
    test) returns run_main's exit status instead of raising."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        return run_main(main, argv)
    return wrapped


# What a path that is neither a regular file nor a folder is, by its st_mode type.
PATH_KINDS = ((stat.S_ISFIFO, 'FIFO (named pipe)'), (stat.S_ISSOCK, 'socket'),
              (stat.S_ISCHR, 'character device'), (stat.S_ISBLK, 'block device'))


def path_problem(path: str, kind: str = 'file') -> Optional[str]:
    """Why `path` is not a `kind` ('file': a regular file, 'folder') to read, naming what it
    is instead (missing, a folder, a FIFO, a symbolic link loop ...); None when it is one.
    Nothing is opened: a FIFO would block."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f'a symbolic link loop, not a {kind}'
        if os.path.islink(path):
            return f'a broken symbolic link (to {os.readlink(path)}), not a {kind}'
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f'{kind} not found'
        return f'cannot be read ({e.strerror})'
    if kind == 'folder':
        return None if stat.S_ISDIR(st.st_mode) else 'not a folder'
    if stat.S_ISDIR(st.st_mode):
        return 'is a folder, not a file'
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in PATH_KINDS if test(st.st_mode)), 'special file')
        return f'not a regular file: {what}'
    return None


def check_input(path: str, kind: str = 'file') -> str:
    """`path` when it is a `kind` ('file': a regular file, or 'folder'); UsageError naming it
    and what it is otherwise (path_problem). For the inputs a command names, checked before
    any model is built, and before anything is opened (a FIFO would hang the command)."""
    problem = path_problem(path, kind)
    if problem:
        raise UsageError(f'{path}: {problem}')
    return path


def check_output_dir(path: str, flag: str = '--out_dir') -> str:
    """`path` when it is (or can be created as) a writable folder; UsageError otherwise."""
    problem = output_problem(path, folder=True)
    if problem:
        raise UsageError(f'{flag} {problem}')
    return path


def _file_key(path: str) -> tuple:
    """What identifies the file at `path`: its device and inode when it exists (so hard
    links and symbolic links compare equal), else its resolved path."""
    try:
        st = os.stat(path)
        return 'inode', st.st_dev, st.st_ino
    except OSError:
        return 'path', os.path.realpath(path)


def check_outputs(outputs: list, inputs: list = ()) -> None:
    """UsageError (one line, exit 2) when an output path is one of the inputs or another
    output, compared after resolving links, so a command never overwrites what it reads or
    one of its own outputs with another. outputs and inputs: (what, path) pairs, `what` the
    flag or a description that the message shows; a None path is left out. Call it before
    any work."""
    seen = {}
    for what, path in inputs:
        if path is not None:
            seen.setdefault(_file_key(path), f'{what} {path}')
    for what, path in outputs:
        if path is None:
            continue
        key = _file_key(path)
        if key in seen:
            raise UsageError(f'{what} {path}: is also {seen[key]}; refusing to overwrite it '
                             '(choose another output)')
        seen[key] = f'{what} {path}'


# Optional packages: requirements-dev.txt installs them, requirements.txt (the main job) does
# not. Module name -> the requirement line (tests/test_requirements.py checks they agree).
OPTIONAL_PACKAGES = {
    'av': 'av~=18.1',
    'onnx': 'onnx~=1.23',
    'onnxscript': 'onnxscript~=0.7',
    'onnxruntime': 'onnxruntime~=1.32',
    'lpips': 'lpips==0.1.4',
    'lightning': 'lightning==2.6.6',
    'gradio': 'gradio~=6.31',
}


def require(module: str, feature: str):
    """Import an optional package for `feature` (a flag or script), or UsageError (exit 2)
    saying in one line what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{feature} needs the {module} package: python -m pip install "
                         f"'{OPTIONAL_PACKAGES[module]}' (or every optional package: "
                         f"python -m pip install -r requirements-dev.txt)") from None


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


class ImageError(SRError):
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


def find_images(folder: str, what: str = 'folder', recursive: bool = True) -> list:
    """The images in a folder named on the command line (list_images), or UsageError when it
    is missing, not a folder, or holds no images; `what` names it in the message."""
    if not os.path.isdir(folder):
        problem = f'{what} not found' if not os.path.exists(folder) else f'not a folder ({what})'
        raise UsageError(f'{folder}: {problem}')
    paths = list_images(folder, recursive)
    if not paths:
        raise UsageError(f'{folder}: no images ({", ".join(IMAGE_EXTENSIONS)}) in this {what}')
    return paths


def _check_image_file(path: str) -> None:
    """ImageError unless `path` is a non-empty regular file."""
    problem = path_problem(path)
    if problem:
        raise ImageError(f'{path}: {problem.replace("not a file", "not an image")}')
    if os.path.getsize(path) == 0:
        raise ImageError(f'{path}: empty file (0 bytes)')


# The largest image, in megapixels, a script holds at full size: the SR output for
# test_image.py, the HR image for evaluate.py, each input for get_img_crop.py. 100 MP is 1.2 GB
# as a float32 tensor, and test_image.py holds about three. Checked from the file's header
# before decoding (a 32 KB PNG can declare 12000x12000); --max_megapixels raises it.
MAX_MEGAPIXELS = 100.0


def image_size(path: str) -> tuple:
    """(width, height) read from the file's header, without decoding the pixels."""
    _check_image_file(path)
    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # reading a header is safe; check_pixels judges the size
    try:
        with Image.open(path) as img:
            return img.size
    except UnidentifiedImageError:
        raise ImageError(f'{path}: not an image (unrecognised format)') from None
    except Exception as e:  # a header damaged enough that Pillow cannot parse it
        raise ImageError(f'{path}: truncated or corrupt image ({e})') from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def check_pixels(path: str, max_megapixels: float, scale: int = 1) -> tuple:
    """(width, height) of the image at `path`, from its header; ImageError when the image
    upscaled `scale` times has more than `max_megapixels` million pixels."""
    w, h = image_size(path)
    pixels = w * h * scale ** 2
    if pixels > max_megapixels * 1e6:
        size = (f'would give a {w * scale}x{h * scale} output' if scale > 1 else 'is')
        raise ImageError(f'{path}: {w}x{h} {size} of {pixels / 1e6:.4g} megapixels, over the '
                         f'limit of {max_megapixels:g}; raise it with --max_megapixels')
    return w, h


def set_max_megapixels(max_megapixels: float) -> None:
    """Raise Pillow's decompression-bomb limit to --max_megapixels where it is lower, so that
    Pillow neither warns about nor refuses an image that check_pixels let through. Never
    lowered: check_pixels is what refuses, and the limit is process-wide."""
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, int(max_megapixels * 1e6))


def open_image(path: str) -> Image.Image:
    """Open and fully decode an image with EXIF orientation applied, or raise ImageError."""
    _check_image_file(path)
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
    except Exception as e:  # anything else a damaged file makes a decoder raise
        raise ImageError(f'{path}: cannot decode image ({type(e).__name__}: {e})') from None
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
    alpha a (1, H, W) tensor or None. Every failure is an ImageError naming the file."""
    try:
        rgb, alpha = pil_to_array(open_image(path))
    except ImageError:
        raise
    except Exception as e:  # rarer exceptions Pillow raises converting a damaged file
        raise unreadable(path, e) from None
    return as_tensors(rgb, alpha)


def unreadable(path: str, e: Exception) -> ImageError:
    """The ImageError for an exception Pillow raised decoding `path`: its first line."""
    detail = (str(e).strip().splitlines() or [''])[0]
    return ImageError(f'{path}: unreadable image ({type(e).__name__}: {detail})')


def as_tensors(rgb: np.ndarray, alpha) -> tuple:
    """(3, H, W) and (1, H, W) (or None) float tensors from HxWx3 and HxW arrays."""
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
    try:
        fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=suffix, dir=folder)
    except OSError as e:  # a read-only folder: name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), path) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # name the file being written, not the temporary one
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise


def output_problem(path: str, folder: bool = False) -> str:
    """Why `path` (a file to write, or a folder to write into when `folder`) cannot be
    written, or None. Scripts check their outputs with it before the work, not after."""
    path = os.path.abspath(path)
    if folder and os.path.exists(path) and not os.path.isdir(path):
        return f'{path}: is a file, not a folder'
    if not folder and os.path.isdir(path):
        return f'{path}: is a folder, not a file'
    parent = path if folder else os.path.dirname(path)
    while not os.path.exists(parent):  # the folders atomic_write would create
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f'{parent}: is a file, so {path} cannot be created under it'
    if not os.access(parent, os.W_OK | os.X_OK):
        return f'{parent}: folder not writable'
    return None


def write_failure(path: str, e: OSError) -> str:
    """One line for a write that failed: 'no space left writing <file>' for a full disk."""
    if e.errno == errno.ENOSPC:
        return f'no space left writing {path}'
    return f'cannot write {path} ({e.strerror or e})'


def output_format(path: str) -> tuple:
    """(path, Pillow format) to write an image as: the format `path`'s extension names, or
    PNG, with '.png' put in place of the extension, where Pillow cannot write that one."""
    stem, ext = os.path.splitext(path)
    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is None or fmt not in Image.SAVE:
        return stem + '.png', 'PNG'
    return path, fmt


def save_pil(img: Image.Image, path: str, **options) -> str:
    """Write a PIL image atomically in the format output_format picks (JPEG at quality 95,
    without alpha); options go to Pillow's save (icc_profile, exif, quality ...); returns the
    path written."""
    path, fmt = output_format(path)
    if fmt == 'JPEG' and img.mode in ('RGBA', 'LA'):
        img = img.convert(img.mode[:-1])
    kwargs = {'quality': 95} if fmt == 'JPEG' else {}
    kwargs.update(options)
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **kwargs))
    return path


def save_image(x: torch.Tensor, path: str, alpha: torch.Tensor = None) -> str:
    """Save a (3, H, W) [0, 1] tensor (plus optional (1, H, W) alpha) as an 8-bit image, as
    save_pil does; returns the path written."""
    arr = to_uint8(x)
    if alpha is not None:
        arr = np.concatenate([arr, to_uint8(alpha)], axis=2)
    return save_pil(Image.fromarray(arr), path)


# Photos as they are (test_image.py, demo.py): the output keeps what the input was. The
# network always sees RGB float32 at the file's full precision; what comes out is written
# back in the input's kind: grey (L, LA, 1) stays grey, 16-bit grey (I;16) stays 16-bit,
# alpha stays, palette images become RGB or RGBA (with transparency), CMYK and other colour
# modes RGB. 32-bit grey (I, F TIFF) is scaled by its real range and written as 16-bit grey.
# The ICC profile is kept where it describes the output's colours; EXIF (JPEG, PNG, WebP) is
# kept with its orientation set to 1, the rotation being applied to the pixels once on load.
GREY_MODES = ('L', 'LA', 'I;16')
SIXTEEN_BIT_FORMATS = ('PNG', 'TIFF')  # the formats Pillow writes 16-bit grey to
ORIENTATION = 0x0112  # the EXIF tag


@dataclass
class Photo:
    """One input photo: its pixels for the network and what its outputs must keep."""
    rgb: torch.Tensor                     # (3, H, W) float32 in [0, 1], full precision
    alpha: Optional[torch.Tensor] = None  # (1, H, W) in [0, 1], or None
    mode: str = 'RGB'                     # what to write: L, LA, I;16, RGB or RGBA
    gray: bool = False                    # grey content: run on grey, write the luma back
    icc: Optional[bytes] = None           # ICC profile, where it fits `mode`
    exif: Optional[bytes] = None          # EXIF with orientation 1
    format: Optional[str] = None          # the file's format as Pillow names it
    notes: tuple = ()                     # one-line notices about what was left out

    @property
    def bits(self) -> int:
        return 16 if self.mode == 'I;16' else 8


def _icc_fits(icc: Optional[bytes], mode: str) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) is that of `mode`."""
    space = icc[16:20] if icc and len(icc) >= 20 else None
    return space == (b'GRAY' if mode in GREY_MODES else b'RGB ')


def _photo_header(path: str) -> tuple:
    """(format, frames, stored bits per colour channel) from the file's header."""
    try:
        with Image.open(path) as img:
            rawmode = img.tile[0].args[0] if img.tile and img.tile[0].args else ''
            wide = img.mode in ('RGB', 'RGBA') and ';16' in str(rawmode)
            return img.format, getattr(img, 'n_frames', 1), 16 if wide else 8
    except Exception:  # open_image has already said what is wrong with the file
        return None, 1, 8


def header_bits(path: str) -> int:
    """16 for an image load_photo writes back as 16-bit grey (I;16, I, F), else 8; from the
    header (8 when it cannot be read, or is no regular file: load_photo says why later)."""
    if not os.path.isfile(path):  # a FIFO would block open()
        return 8
    try:
        with Image.open(path) as img:
            return 16 if img.mode in ('I', 'F') or img.mode.startswith('I;16') else 8
    except Exception:
        return 8


def _wide_grey(img: Image.Image, path: str) -> tuple:
    """(grey HxW float32 in [0, 1], notice or None) of a 16- or 32-bit grey image: I;16 as is,
    I and F by their range when it is not [0, 65535] / [0, 1]."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith('I;16'):
        return (arr / 65535).astype(np.float32), None
    lo, hi = (0.0, 65535.0) if img.mode == 'I' else (0.0, 1.0)
    if not np.isfinite(arr).all():
        raise ImageError(f'{path}: 32-bit float image with NaN or infinite values')
    if arr.size and (arr.min() < lo or arr.max() > hi):
        lo, hi = float(arr.min()), float(arr.max())
        note = (f'{path}: 32-bit {img.mode} values span [{lo:g}, {hi:g}]; scaled from that '
                'range to 16-bit grey')
    else:
        note = f'{path}: 32-bit {img.mode} image; written as 16-bit grey'
    return ((arr - lo) / ((hi - lo) or 1)).astype(np.float32), note


def load_photo(path: str) -> Photo:
    """Read a photo for test_image.py: its pixels (as load_image reads them, but grey at full
    precision and in full range) and what its outputs must keep. ImageError."""
    img = open_image(path)
    fmt, frames, bits = _photo_header(path)
    notes = []
    if frames > 1:
        notes.append(f'{path}: {frames} frames; only the first is super-resolved')
    if bits == 16:
        notes.append(f'{path}: 16 bits per colour channel read as 8 (Pillow has no 16-bit '
                     'colour mode; 16-bit grey stays 16-bit)')
    icc = img.info.get('icc_profile')
    exif = None
    if img.info.get('exif'):  # JPEG APP1, PNG eXIf, WebP EXIF; TIFF's tags are the file's own
        try:
            tags = img.getexif()
            tags[ORIENTATION] = 1
            exif = tags.tobytes()
        except Exception:  # a damaged EXIF block: the pixels are still good, the tags dropped
            exif = None
    mode, alpha = img.mode, None
    try:
        if mode == 'P' or mode == 'PA':
            img = img.convert('RGBA' if mode == 'PA' or 'transparency' in img.info else 'RGB')
            mode = img.mode
        if mode in ('I', 'F') or mode.startswith('I;16'):
            grey, note = _wide_grey(img, path)
            notes += [note] if note else []
            rgb, mode = np.repeat(grey[..., None], 3, axis=2), 'I;16'
        else:
            if mode in ('LA', 'La', 'RGBA', 'RGBa'):
                alpha = np.asarray(img.getchannel('A'), dtype=np.float32) / 255
            mode = {'1': 'L', 'La': 'LA', 'RGBa': 'RGBA'}.get(mode, mode)
            if mode not in ('L', 'LA', 'RGBA'):
                mode = 'RGB'  # CMYK, YCbCr, LAB, HSV ...
            rgb = np.asarray(img.convert('RGB'), dtype=np.float32) / 255
    except ImageError:
        raise
    except Exception as e:  # rarer exceptions Pillow raises converting a damaged file
        raise unreadable(path, e) from None
    rgb, alpha = as_tensors(rgb, alpha)
    gray = mode in GREY_MODES or is_grayscale(rgb)
    return Photo(rgb, alpha, mode, gray, icc if _icc_fits(icc, mode) else None, exif, fmt,
                 tuple(notes))


def photo_image(x: torch.Tensor, mode: str, alpha: torch.Tensor = None) -> Image.Image:
    """A (3, H, W) [0, 1] tensor (and (1, H, W) alpha) as a PIL image of `mode` (a Photo's):
    grey modes take the BT.601 luma, I;16 at 16 bits."""
    if mode in GREY_MODES:
        luma = sum(wt * ch for wt, ch in zip(BT601_LUMA, x.float()))[None]
        if mode == 'I;16':
            arr = luma[0].clamp(0, 1).mul(65535).round().to(torch.int32).numpy()
            return Image.fromarray(arr.astype(np.uint16))
        arr = to_uint8(luma)
    else:
        arr = to_uint8(x)
    if alpha is not None and mode in ('LA', 'RGBA'):
        arr = np.concatenate([arr, to_uint8(alpha)], axis=2)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def save_photo(x: torch.Tensor, path: str, photo: Photo, alpha: torch.Tensor = None,
               quality: int = None) -> str:
    """Write `x` (and `alpha`) in `photo`'s mode, with its ICC profile and EXIF, as save_pil
    does (the format from path's extension); quality: JPEG / WebP (default 95). Returns the
    path written. ValueError for 16-bit grey to a format that cannot hold it."""
    img = photo_image(x, photo.mode, alpha)
    fmt = output_format(path)[1]
    if photo.mode == 'I;16' and fmt not in SIXTEEN_BIT_FORMATS:
        raise ValueError(f'{path}: 16-bit grey can be written as PNG or TIFF only, not {fmt}')
    options = {}
    if photo.icc:
        options['icc_profile'] = photo.icc
    if photo.exif and fmt in ('JPEG', 'PNG', 'WEBP'):
        options['exif'] = photo.exif
    if fmt in ('JPEG', 'WEBP'):
        options['quality'] = 95 if quality is None else quality
    return save_pil(img, path, **options)


# =============================================================================================
# 2. Colour
# BT.601 YCbCr in the MATLAB convention (rgb2ycbcr / ycbcr2rgb): Y in [16, 235] / 255.
# =============================================================================================

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


# =============================================================================================
# 3. Resize
# MATLAB's imresize (bicubic, antialiased) on (..., H, W) tensors, modcrop, and downscale,
# the project's one degradation (training, validation, evaluation, --downsample bicubic).
# =============================================================================================

def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _resize_taps(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple:
    """(index, weight), both (out_len, taps): output pixel i along one axis is
    sum_k weight[i, k] * input[index[i, k]], as MATLAB's imresize computes it: Keys' cubic
    kernel, widened by 1/scale when shrinking, weights normalised, symmetric edges."""
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
    return mirror[torch.remainder(idx.long() - 1, 2 * in_len)], w


# Up to this many entries an axis is resized with a dense (out, in) matrix: one fast matmul,
# right for training crops. Beyond it (large photos) a sparse matrix keeps memory at
# out x taps instead of out x in (a 6000 -> 24000 px axis would need 1.1 GB dense).
_DENSE_LIMIT = 1 << 21


@functools.lru_cache(maxsize=64)
def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool,
                   device=torch.device('cpu'), dtype=torch.float64) -> torch.Tensor:
    """(out_len, in_len) matrix M with out = M @ in along one axis (dense or sparse). Cached
    per device and dtype too: copying it to a GPU at every call would make the host wait for
    the device (a synchronous copy) once per training batch."""
    if (torch.device(device), dtype) != (torch.device('cpu'), torch.float64):
        return _resize_matrix(in_len, out_len, scale, antialias).to(device, dtype)
    idx, w = _resize_taps(in_len, out_len, scale, antialias)
    if out_len * in_len <= _DENSE_LIMIT:
        return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, idx, w)
    rows = torch.arange(out_len)[:, None].expand_as(idx)
    return torch.sparse_coo_tensor(torch.stack([rows.reshape(-1), idx.reshape(-1)]),
                                   w.reshape(-1), (out_len, in_len),
                                   check_invariants=True).coalesce()


def _apply_axis(m: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """m @ x along `dim` (-2 or -1) of a (..., H, W) tensor."""
    if not m.is_sparse:
        return torch.matmul(m, x) if dim == -2 else torch.matmul(x, m.T)
    moved = x.movedim(dim, 0)
    out = torch.sparse.mm(m, moved.reshape(moved.shape[0], -1))
    return out.reshape(m.shape[0], *moved.shape[1:]).movedim(0, dim)


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
    mh = _resize_matrix(h, size[0], sh, antialias, x.device, dtype)
    mw = _resize_matrix(w, size[1], sw, antialias, x.device, dtype)
    return _apply_axis(mw, _apply_axis(mh, x.to(dtype), -2), -1)


def modcrop(x, scale: int):
    """Crop the bottom/right so that H and W are multiples of `scale` ((..., H, W) tensors or
    HxW[xC] arrays)."""
    if isinstance(x, np.ndarray):
        h, w = x.shape[:2]
        return x[:h - h % scale, :w - w % scale]
    h, w = x.shape[-2:]
    return x[..., :h - h % scale, :w - w % scale]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values to the 8-bit grid, as an LR image saved to disk would be."""
    return x.clamp(0, 1).mul(255).round().div(255)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The project's one degradation: MATLAB bicubic shrink by 1/scale, rounded to 8 bits."""
    return quantize(imresize(hr, 1.0 / scale))


# =============================================================================================
# 4. Metrics
# PSNR / SSIM on 8-bit images (SR rounded first), border of `scale` pixels cropped,
# BT.601 YCbCr, float64; "Y" = luma only, "YCbCr" = all three channels. NIQE and LPIPS on
# the same 8-bit images with the same border.
# =============================================================================================

def _as_uint8_hwc(img) -> np.ndarray:
    """Accept a (3, H, W) / (1, H, W) [0, 1] tensor or an HxWx3 / HxW[x1] uint8 array; grey
    becomes R = G = B."""
    if isinstance(img, torch.Tensor):
        img = to_uint8(img)
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f'metrics expect uint8 images or [0, 1] tensors, got {img.dtype}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
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


@functools.lru_cache(maxsize=32)
def _gaussian_band(n: int) -> torch.Tensor:
    """(n - 10, n) float64 matrix: row i holds the 11-tap Gaussian (sigma 1.5) at i..i+10, so
    band_h @ x @ band_w.T is the 11x11 Gaussian filter over the valid region."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    m = torch.zeros(n - 10, n, dtype=torch.float64)
    for k in range(11):
        m.diagonal(k).copy_(g[k].expand(n - 10))
    return m


def _ssim_channel(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (H, W) float64 tensors on the 0-255 scale; 11x11 Gaussian, valid region."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    bh, bw = _gaussian_band(a.shape[0]), _gaussian_band(a.shape[1])
    # the separable filter as two matrix products over the five maps at once (much faster
    # on the CPU than an 11x11 float64 convolution)
    mu_a, mu_b, aa, bb, ab = bh @ torch.stack([a, b, a * a, b * b, a * b]) @ bw.T
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    ssim_map = (((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(ssim_map.mean())


SSIM_WINDOW = 11  # the side of SSIM's Gaussian window: the smallest image SSIM can score


def ssim(img1, img2, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM (Wang et al. 2004) on the 0-255 scale; the mean over channels for YCbCr."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f'SSIM needs images of at least 11x11 after cropping, got {a.shape[:2]}')
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


def image_metrics(sr, hr, scale: int) -> dict:
    """PSNR/SSIM on Y and on YCbCr, border of `scale` pixels cropped."""
    return {'psnr_y': psnr(sr, hr, scale, True), 'ssim_y': ssim(sr, hr, scale, True),
            'psnr_ycbcr': psnr(sr, hr, scale, False), 'ssim_ycbcr': ssim(sr, hr, scale, False)}


# NIQE (Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer",
# 2013): no reference, lower is better. 36 natural-scene features per 96x96 block (18 at full
# and 18 at half size) are fitted with a Gaussian, whose distance to the pristine-image model
# (weights/niqe_pris_params.npz; weights/README.md says where it comes from) is the score.
# All blocks are processed at once; matches MATLAB's niqe to 1e-6 on Set14's baboon.png.

NIQE_BLOCK = 96
NIQE_PARAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights',
                           'niqe_pris_params.npz')


@functools.lru_cache(maxsize=1)
def _niqe_model() -> tuple:
    """The pristine model as float64 tensors: mean (36,), covariance (36, 36), and the 7-tap
    Gaussian whose outer product is the 7x7 local-normalisation window."""
    with np.load(NIQE_PARAMS, allow_pickle=False) as f:
        mu, cov, window = f['mu_pris_param'], f['cov_pris_param'], f['gaussian_window']
    # the window is the outer product of its marginal (to 1e-17): two 1-D passes, 7x cheaper
    return (torch.from_numpy(mu[0]), torch.from_numpy(cov),
            torch.from_numpy(window.sum(axis=1)))


@functools.lru_cache(maxsize=1)
def _ggd_shape_table() -> tuple:
    """Shapes s = 0.2, 0.201, ..., 10 and the generalised Gaussian's (E|x|)^2 / E[x^2] for each,
    Gamma(2/s)^2 / (Gamma(1/s) Gamma(3/s)), which increases with s."""
    s = torch.arange(200, 10001, dtype=torch.float64) / 1000
    return s, torch.exp(2 * torch.lgamma(2 / s) - torch.lgamma(1 / s) - torch.lgamma(3 / s))


def _aggd_fit(x: torch.Tensor) -> tuple:
    """Asymmetric generalised Gaussian fit of each row of x (..., n) by moment matching on the
    shape table (MATLAB's estimateaggdparam): (shape, left scale, right scale)."""
    neg, pos = x.clamp(max=0), x.clamp(min=0)
    sq_neg, sq_pos = torch.linalg.vecdot(neg, neg), torch.linalg.vecdot(pos, pos)
    left = torch.sqrt(sq_neg / (x < 0).sum(-1))   # NaN without negative values, as MATLAB
    right = torch.sqrt(sq_pos / (x > 0).sum(-1))
    g = left / right
    n = x.shape[-1]
    rhat = ((pos.sum(-1) - neg.sum(-1)) / n) ** 2 / ((sq_neg + sq_pos) / n)
    target = rhat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    shapes, ratio = _ggd_shape_table()
    # The nearest table entry (the first of two equally near, as argmin). Without values on
    # both sides there is no fit: MATLAB's min over NaNs then returns the first entry.
    finite = torch.isfinite(target)
    t = torch.where(finite, target, ratio[0])
    i = torch.searchsorted(ratio, t).clamp(1, len(ratio) - 1)
    i = torch.where((t - ratio[i - 1]) ** 2 <= (ratio[i] - t) ** 2, i - 1, i)
    shape = shapes[torch.where(finite, i, 0)]
    scale = torch.exp(0.5 * (torch.lgamma(1 / shape) - torch.lgamma(3 / shape)))
    return shape, left * scale, right * scale


# |I - mu| below this (0-255 scale) is zero in exact arithmetic: rounding errors are ~1e-13
_MSCN_ZERO = 1e-9


def _mscn(img: torch.Tensor) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients (I - mu) / (sigma + 1) of an (H, W)
    float64 image: local mean and deviation under the 7x7 Gaussian, edges replicated
    (MATLAB's imfilter 'replicate')."""
    g = _niqe_model()[2].tolist()
    h, w = img.shape
    maps = torch.nn.functional.pad(torch.stack([img, img * img])[None], (3, 3, 3, 3),
                                   mode='replicate')[0]
    rows = maps[..., :w] * g[0]                        # along rows,
    for k in range(1, 7):
        rows.add_(maps[..., k:k + w], alpha=g[k])
    blurred = rows[:, :h] * g[0]                       # then along columns
    for k in range(1, 7):
        blurred.add_(rows[:, k:k + h], alpha=g[k])
    mu, mu_sq = blurred
    # A flat (or mirror-symmetric) neighbourhood gives I - mu = 0, which rounding turns into
    # +-1e-13 depending on the summation order; the fits count negative and positive values,
    # so make those exact zeros. (MATLAB's imfilter gives 0 there on Set14's baboon; a 2-D
    # 7x7 filter without this gives 5.72996 instead of MATLAB's 5.72957.)
    diff = img - mu
    diff = torch.where(diff.abs() < _MSCN_ZERO, 0, diff)
    return diff / (torch.sqrt((mu_sq - mu * mu).abs()) + 1)


def _niqe_features(mscn: torch.Tensor, block: int) -> torch.Tensor:
    """(blocks, 18) features of the block x block tiles of an MSCN map whose sides are
    multiples of `block`: the GGD fit of the coefficients (shape, scale) and the AGGD fits of
    their products with the horizontal, vertical and both diagonal neighbours (shape, mean,
    left and right scale). Neighbours wrap around inside a tile (MATLAB's circshift)."""
    h, w = mscn.shape
    tiles = mscn.reshape(h // block, block, w // block, block).transpose(1, 2)
    tiles = tiles.reshape(-1, block, block)
    # one map at a time keeps memory at a few copies of the image, even for large photos
    fits = [_aggd_fit(tiles.flatten(1))]
    fits += [_aggd_fit((tiles * torch.roll(tiles, shift, dims=(1, 2))).flatten(1))
             for shift in ((0, 1), (1, 0), (1, 1), (1, -1))]
    shape, left, right = (torch.stack(f, 1) for f in zip(*fits))
    mean = (right - left) * torch.exp(torch.lgamma(2 / shape) - torch.lgamma(1 / shape))
    pairs = torch.stack([shape, mean, left, right], -1)[:, 1:].flatten(1)
    return torch.cat([shape[:, :1], (left[:, :1] + right[:, :1]) / 2, pairs], 1)


def niqe_luma(img, crop_border: int = 0) -> torch.Tensor:
    """The (H, W) float64 image NIQE scores: the Y channel (0-255) of the 8-bit image, border
    cropped, rounded as MATLAB's rgb2ycbcr rounds uint8 (half away from zero)."""
    a = _as_uint8_hwc(img)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in 0..255, in thousandths as
    # integers: 194 colours give exactly k + 0.5, which floats would round either way
    y = a.astype(np.int64) @ np.array([65481, 128553, 24966]) + 16 * 255000
    return torch.from_numpy(((y + 127500) // 255000).astype(np.float64))


def _niqe_score(y: torch.Tensor) -> float:
    """NIQE of an (H, W) float64 luma image (niqe_luma) with at least two whole blocks."""
    rows, cols = y.shape[0] // NIQE_BLOCK, y.shape[1] // NIQE_BLOCK
    y = y[:rows * NIQE_BLOCK, :cols * NIQE_BLOCK]
    half = imresize(y, 0.5)  # MATLAB's imresize(im, 0.5): bicubic, antialiased
    feats = torch.cat([_niqe_features(_mscn(y), NIQE_BLOCK),
                       _niqe_features(_mscn(half), NIQE_BLOCK // 2)], 1)
    complete = feats[~feats.isnan().any(1)]  # MATLAB's nancov drops rows with a NaN
    if len(complete) < 2:
        return float('nan')
    mu_p, cov_p, _ = _niqe_model()
    d = mu_p - feats.nanmean(0)
    return float(torch.sqrt(d @ torch.linalg.pinv((cov_p + torch.cov(complete.T)) / 2) @ d))


def niqe(img, crop_border: int = 0) -> float:
    """NIQE: no-reference naturalness, lower is better (natural photos score about 3-6).

    Takes what psnr takes (a [0, 1] tensor or a uint8 array; grey counts as R = G = B) and
    scores the rounded Y channel with `crop_border` pixels cropped; the image is then cut to
    whole 96x96 blocks, of which it needs at least two (ValueError otherwise). An image
    without texture (fewer than two blocks with coefficients of both signs) gives nan."""
    y = niqe_luma(img, crop_border)
    if (y.shape[0] // NIQE_BLOCK) * (y.shape[1] // NIQE_BLOCK) < 2:
        cropped = f' after cropping {crop_border} border pixels' if crop_border else ''
        raise ValueError(f'NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks, got a '
                         f'{y.shape[1]}x{y.shape[0]} image{cropped}')
    return _niqe_score(y)


class LPIPSError(SRError):
    """LPIPS cannot run here (package or AlexNet weights missing); str() is one line."""


def _alexnet_state() -> dict:
    """torchvision's ImageNet AlexNet, from torch's hub cache (downloaded there once)."""
    from torchvision.models import AlexNet_Weights
    weights = AlexNet_Weights.IMAGENET1K_V1
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
    # A machine without internet must fail fast with a useful message, not hang.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        # torch.hub announces the download on stdout, where evaluate.py prints its table
        with contextlib.redirect_stdout(sys.stderr):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:
        reason = ' '.join(f'{type(e).__name__}: {e}'.split())
        raise LPIPSError(f"LPIPS needs torchvision's ImageNet AlexNet weights ({reason}): "
                         f'download {weights.url} and place it at {path}') from None
    finally:
        socket.setdefaulttimeout(old_timeout)


class LPIPS:
    """LPIPS (Zhang et al. 2018), AlexNet, v0.1: a learned full-reference distance, lower is
    better (0 for identical images). Images need at least MIN_SIZE x MIN_SIZE pixels.

    Needs the `lpips` package (requirements.txt) and torchvision's ImageNet AlexNet, which
    downloads into torch's hub cache on first use. backbone='random' uses an untrained AlexNet:
    for testing the wiring only, its distances mean nothing."""

    MIN_SIZE = 31  # AlexNet's second max-pooling needs 3x3 left

    def __init__(self, device='cpu', backbone: str = 'imagenet'):
        if backbone not in ('imagenet', 'random'):
            raise ValueError(f"backbone must be 'imagenet' or 'random', got {backbone!r}")
        try:
            lpips = require('lpips', 'LPIPS')
        except UsageError as e:
            raise LPIPSError(str(e)) from None
        state = _alexnet_state() if backbone == 'imagenet' else None
        # Built without any weights (lpips would download AlexNet itself, and load its own
        # file without weights_only), then filled from files loaded safely.
        with warnings.catch_warnings():  # lpips passes torchvision the deprecated `pretrained`
            warnings.simplefilter('ignore', UserWarning)
            net = lpips.LPIPS(pretrained=False, net='alex', version='0.1', pnet_rand=True,
                              verbose=False)
        linear = os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'alex.pth')
        linear = load_state_file(linear)
        net.lins.load_state_dict({k[len('lin'):]: v for k, v in linear.items()})
        if state is not None:
            # lpips keeps AlexNet's layers under their torchvision indices: slice2.3 = features.3
            net.net.load_state_dict({name: state['features.' + name.split('.', 1)[1]]
                                     for name in net.net.state_dict()})
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, img1: torch.Tensor, img2: torch.Tensor, crop_border: int = 0):
        """Distance of two RGB [0, 1] tensors: (3, H, W) -> float, (N, 3, H, W) -> (N,)
        tensor. Scored, as every metric here, on the 8-bit images with the border cropped."""
        if img1.shape != img2.shape:
            raise ValueError(f'image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}')
        single = img1.dim() == 3
        pair = [x[None] if single else x for x in (img1, img2)]
        if crop_border:
            pair = [x[..., crop_border:-crop_border, crop_border:-crop_border] for x in pair]
        if min(pair[0].shape[-2:]) < self.MIN_SIZE:
            cropped = f' after cropping {crop_border} border pixels' if crop_border else ''
            raise ValueError(f'LPIPS needs at least {self.MIN_SIZE}x{self.MIN_SIZE} pixels, got '
                             f'{pair[0].shape[-1]}x{pair[0].shape[-2]}{cropped}')
        # LPIPS takes [-1, 1]
        a, b = (quantize(x.float()).to(self.device) * 2 - 1 for x in pair)
        distance = self.net(a, b).flatten().cpu()
        return float(distance[0]) if single else distance


# The grid score: a lattice-artifact check, not a quality measure. A sub-pixel upsampler whose
# scale x scale output phases have drifted apart draws a regular dot grid, visible on skin and
# cloth although PSNR barely notices it. Its unit is the grey level of a greyscale conversion
# (full-range luma 0.299 R + 0.587 G + 0.114 B on the 8-bit values, as PIL's 'L'), not the
# studio-range Y of the PSNR (which would scale every score by 219/255). At x4 on Set14 (mean
# over the images): HR 1.21, bicubic 0.70, SRResNet 0.90; the SRGAN x4 shipped before issue 19,
# 3.82 (6.91 on bridge).
GRID_LIMIT = 1.5  # grey levels; an SRGAN output above this shows the grid


def grid_score(img, scale: int) -> float:
    """Range, in grey levels, of the means of the scale x scale pixel phases y[i::s, j::s] of the
    8-bit image's luma y. `img` is what psnr takes (a [0, 1] tensor, rounded to 8 bits, or a
    uint8 array), or an (H, W) luma channel itself. The phases count from the image's top-left
    pixel, the origin of the upsampler's lattice: score the whole output, border included."""
    if isinstance(img, (torch.Tensor, np.ndarray)) and img.ndim == 2:
        y = torch.as_tensor(np.asarray(img), dtype=torch.float64)
    else:
        rgb = _as_uint8_hwc(img).astype(np.float64)
        y = torch.from_numpy(rgb @ np.array([0.299, 0.587, 0.114]))
    if scale < 2 or min(y.shape) < scale:
        raise ValueError(f'grid score needs a scale of at least 2 and an image of at least '
                         f'{scale}x{scale} pixels, got scale {scale} and {y.shape[1]}x{y.shape[0]}')
    h, w = y.shape[0] // scale * scale, y.shape[1] // scale * scale  # whole lattice cells
    phases = y[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(dim=(0, 2))
    return float(phases.max() - phases.min())


# =============================================================================================
# 5. Datasets
# Training crops and validation images as (lr, hr) float tensors, and the DataLoader
# recipe; randomness comes from seeded torch generators so runs reproduce.
# =============================================================================================

def image_to_uint8(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array of a PIL image: alpha dropped, 16-bit and float scaled to 8 bits."""
    if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
        rgb, _ = pil_to_array(img)
        return np.rint(rgb * 255).astype(np.uint8)
    return np.asarray(img if img.mode == 'RGB' else img.convert('RGB'))


def _torchvision_io():
    # imported on first use: torchvision takes seconds to import and only the datasets need it
    import torchvision.io
    return torchvision.io


def read_uint8(path: str) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor, EXIF orientation applied.

    PNG and JPEG go through torchvision's decoder (faster than PIL, same pixels: see
    tests/test_data.py and benchmarks/bench_data.py); everything else, and anything torchvision
    refuses, through PIL, which also gives the one-line ImageError for a broken file."""
    if path.lower().endswith(('.png', '.jpg', '.jpeg')):
        tio = _torchvision_io()
        try:
            img = tio.decode_image(tio.read_file(path), mode=tio.ImageReadMode.RGB,
                                   apply_exif_orientation=True)
        except RuntimeError:
            img = None
        if img is not None and img.dtype == torch.uint8:  # 16-bit PNGs decode as uint16
            return img
    return torch.from_numpy(image_to_uint8(open_image(path))).permute(2, 0, 1)


def _regular_files(root: str, paths: list) -> list:
    """The `paths` that are regular files (or links to one); the others (a FIFO named *.png,
    a socket, a device), which opening would block on or misread, are left out with one
    warning saying what they are not."""
    regular, other = [], []
    for p in paths:
        try:
            (regular if stat.S_ISREG(os.stat(p).st_mode) else other).append(p)
        except OSError:  # a dangling link: left to the readers' 'file not found'
            regular.append(p)
    if other:
        _warn_left_out(root, other, 'not a regular file')
    return regular


def _warn_left_out(root: str, names: list, why: str) -> None:
    """One warning for all the files of `root` left out for the same reason."""
    shown = ', '.join(os.path.basename(p) for p in names[:3])
    more = f' and {len(names) - 3} more' if len(names) > 3 else ''
    warnings.warn(f'{root}: {len(names)} image(s) {why}, left out ({shown}{more})',
                  stacklevel=3)


class TrainSet(torch.utils.data.Dataset):
    """Random HR crops and their bicubic LR: dataset[i] -> (lr, hr), float [0, 1].

    Every image under `root` (recursive, sorted). `augment` applies the same random flips and
    90-degree rotation to both (hr is augmented, lr is computed from it). Randomness comes from
    torch's global generator, which DataLoader seeds in each worker (see make_loader), so fixed
    seeds reproduce runs. The crop and augmentation work on uint8, before conversion to float.
    `cache` decodes every image up front and keeps it in memory as uint8, so that forked
    DataLoader workers share one copy (about 7 GB for DIV2K's 800 HR images).

    An image that fails to decode (truncated or corrupt past its header, which is all the scan
    reads) is skipped with one warning naming it: the next readable image takes its place, with
    the same random crop, so a resumed run draws exactly what an uninterrupted one did. Such
    images are flagged in memory shared with the DataLoader workers; check_broken() (called by
    the training loop) stops the run once more than `max_broken` are found."""

    def __init__(self, root: str, upscale_factor: int = 4, crop_size: int = 96,
                 augment: bool = True, cache: bool = False):
        if crop_size % upscale_factor:
            raise UsageError(f'crop_size {crop_size} is not a multiple of the scale '
                             f'{upscale_factor}')
        paths = _regular_files(root, find_images(root, 'training folder'))
        self.scale, self.crop_size, self.augment = upscale_factor, crop_size, augment
        self.paths, small, broken = [], [], []
        for p in paths:
            try:
                with Image.open(p) as img:  # reads the header only
                    w, h = img.size
            except Exception:
                broken.append(p)
                continue
            (small if min(w, h) < crop_size else self.paths).append(p)
        if broken:
            _warn_left_out(root, broken, 'not readable')
        if small:
            _warn_left_out(root, small, f'smaller than the {crop_size}px crop')
        if not self.paths:
            raise ImageError(f'{root}: no usable image of at least {crop_size}x{crop_size}')
        _torchvision_io()  # import once here, not in every DataLoader worker
        self.root = root
        self.broken = multiprocessing.RawArray('b', len(self.paths))
        # 1% of the images may be unreadable (at least one, and never all of them)
        self.max_broken = min(max(1, len(self.paths) // 100), len(self.paths) - 1)
        self.cache = None
        if cache:
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
                self.cache = list(pool.map(self._read, range(len(self.paths))))
            self.check_broken()

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, i: int):
        """Image i as a uint8 tensor, or None (flagged, with one warning) when it is broken."""
        try:
            img = self.cache[i] if self.cache is not None else read_uint8(self.paths[i])
            if img is None:
                return None
            h, w = img.shape[-2:]
            if min(h, w) < self.crop_size:  # the header said otherwise (the file changed)
                raise ImageError(f'{self.paths[i]}: {w}x{h} is smaller than the '
                                 f'{self.crop_size}px crop')
            return img
        except ImageError as e:
            if not self.broken[i]:
                self.broken[i] = 1
                print(f'warning: {e}; skipped, the next training image is used in its place',
                      file=sys.stderr, flush=True)
            return None

    def check_broken(self) -> None:
        """ImageError (one line) once more than max_broken images have failed to decode."""
        bad = np.flatnonzero(np.frombuffer(self.broken, dtype=np.int8))
        if len(bad) > self.max_broken:
            names = ', '.join(os.path.basename(self.paths[k]) for k in bad[:3])
            more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
            raise ImageError(f'{self.root}: {len(bad)} of {len(self.paths)} training images '
                             f'cannot be decoded ({names}{more}), more than the '
                             f'{self.max_broken} tolerated; stopped')

    def __getitem__(self, i: int) -> tuple:
        n = len(self.paths)
        for j in range(i, i + n):  # image i, or the next readable one in its place
            img = None if self.broken[j % n] else self._read(j % n)
            if img is not None:
                return self._sample(img)
        raise ImageError(f'{self.root}: none of the {n} training images can be decoded')

    def _sample(self, img: torch.Tensor) -> tuple:
        """A random (lr, hr) crop of a (3, H, W) uint8 image."""
        h, w = img.shape[-2:]
        c = self.crop_size
        top = int(torch.randint(0, h - c + 1, ()))
        left = int(torch.randint(0, w - c + 1, ()))
        hr = img[:, top:top + c, left:left + c]
        if self.augment:
            # horizontal flip, vertical flip, transpose: together the 8 orientations
            hflip, vflip, transpose = torch.randint(0, 2, (3,)).tolist()
            if hflip:
                hr = hr.flip(-1)
            if vflip:
                hr = hr.flip(-2)
            if transpose:
                hr = hr.transpose(-1, -2)
        hr = hr.contiguous().float().div_(255)
        return downscale(hr, self.scale), hr


def load_hr_lr(path: str, scale: int, max_megapixels: float = MAX_MEGAPIXELS) -> tuple:
    """(hr, lr) as (3, H, W) tensors: HR modcropped, LR its bicubic downscale, as validation
    and evaluation score them. Raises ImageError for unreadable images, ones over
    max_megapixels (from the header, before decoding) and ones too small to score."""
    check_pixels(path, max_megapixels)
    return crop_and_downscale(load_image(path)[0], scale, path)


def crop_and_downscale(hr: torch.Tensor, scale: int, path: str) -> tuple:
    """(hr, lr): `hr` modcropped and its bicubic downscale, as load_hr_lr makes them;
    ImageError (naming `path`) when too small to score."""
    hr = modcrop(hr, scale)
    smallest = 2 * scale + SSIM_WINDOW  # the SSIM window must fit once the border is cropped
    if min(hr.shape[-2:]) < smallest:
        raise ImageError(f'{path}: {hr.shape[-1]}x{hr.shape[-2]} after cropping to a '
                         f'multiple of {scale} is too small to score (needs at least '
                         f'{smallest}x{smallest})')
    return hr, downscale(hr, scale)


class ValidSet(torch.utils.data.Dataset):
    """Whole images: dataset[i] -> (lr, hr, name), as load_hr_lr makes them (ImageError for an
    image that cannot be scored)."""

    def __init__(self, root: str, upscale_factor: int = 4):
        self.paths = _regular_files(root, find_images(root, 'validation folder'))
        self.scale = upscale_factor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        hr, lr = load_hr_lr(self.paths[i], self.scale)
        return lr, hr, os.path.basename(self.paths[i])


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy and random from the worker's torch seed, which
    DataLoader derives from the loader's generator (torch itself is already seeded)."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, workers: int = 4, shuffle: bool = True,
                sampler=None, device_type: str = 'cpu', seed: int = None,
                drop_last: bool = True, prefetch_factor: int = 4,
                persistent_workers: bool = True):
    """A DataLoader with the settings training wants.

    Reproducible: the shuffle order and the workers' seeds come from a generator seeded with
    `seed`, or, when None, with a number drawn from torch's global generator (so that
    torch.manual_seed alone reproduces a run). With workers=0 the samples' randomness is the
    global generator itself. Under DDP give each rank its own seed (seed + rank) so that ranks
    crop differently, and pass the DistributedSampler as `sampler` (it does the shuffling).
    Memory is pinned for CUDA; workers persist across epochs (no restart cost per epoch; their
    RNG then runs on from epoch to epoch, so a run resumed mid-way draws other crops: pass
    persistent_workers=False and reseed each epoch where resuming must be exact)."""
    samples = len(sampler) if sampler is not None else len(dataset)
    if drop_last and samples < batch_size:  # an epoch of no batches: a training loop spins
        raise ValueError(f'{samples} samples cannot fill one batch of {batch_size}')
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=device_type == 'cuda', drop_last=drop_last,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=seed_worker, generator=generator)


class DeviceCrops:
    """TrainSet's samples cut on the training device, a batch at a time: random crops, the same
    8 flips/rotations, and the bicubic LR (downscale), from the decoded uint8 images kept on
    `device`. No DataLoader workers and no host sync per batch: a batch is a few batched
    kernels (random draws, one gather, one resize).

    The images sit back to back in one flat uint8 buffer (any sizes, no padding); a batch is one
    torch.take with indices computed on the device. Randomness comes from self.generator (on
    `device`), which the caller seeds (train.py: per seed, epoch and rank)."""

    def __init__(self, dataset: TrainSet, device):
        self.device = torch.device(device)
        self.scale, self.crop_size = dataset.scale, dataset.crop_size
        self.augment = dataset.augment
        n = len(dataset)
        images = dataset.cache if dataset.cache is not None else [dataset._read(i)
                                                                  for i in range(n)]
        dataset.check_broken()  # too many unusable images stop here; at least one is usable
        # an image TrainSet could not use (None; it warned) is replaced by the next usable one,
        # as TrainSet.__getitem__ does
        use = [next(j % n for j in range(i, i + n) if images[j % n] is not None)
               for i in range(n)]
        start, total = {}, 0
        for i in sorted(set(use)):
            start[i], total = total, total + images[i].numel()
        self.buffer = torch.empty(total, dtype=torch.uint8, device=self.device)
        for i, offset in start.items():
            self.buffer[offset:offset + images[i].numel()].copy_(images[i].reshape(-1))
        shape = torch.tensor([images[i].shape[-2:] for i in use], dtype=torch.long)
        self.offsets = torch.tensor([start[i] for i in use], device=self.device)
        self.heights, self.widths = shape[:, 0].to(self.device), shape[:, 1].to(self.device)
        self.generator = torch.Generator(self.device)

    @staticmethod
    def nbytes(dataset: TrainSet) -> int:
        """Device memory the decoded images of `dataset` take (its cache must be filled)."""
        return sum(img.numel() for img in dataset.cache if img is not None)

    def draw(self, index: torch.Tensor) -> tuple:
        """Random (top, left, flips) for the images `index`: TrainSet's distribution (uniform
        crop position; horizontal flip, vertical flip and transpose each with probability 1/2)."""
        n, c, g = index.numel(), self.crop_size, self.generator
        # float64 uniforms scaled to each image's range: unbiased, and no host sync
        u = torch.rand(n, 2, dtype=torch.float64, generator=g, device=self.device)
        top = (u[:, 0] * (self.heights[index] - c + 1)).long()
        left = (u[:, 1] * (self.widths[index] - c + 1)).long()
        flips = torch.randint(0, 2, (n, 3), generator=g, device=self.device).bool()
        if not self.augment:
            flips.zero_()
        return top, left, flips

    def cut(self, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
            flips: torch.Tensor) -> tuple:
        """(lr, hr), (B, 3, c/scale, c/scale) and (B, 3, c, c) float [0, 1]: the crops at
        (top, left) of the images `index`, flipped as TrainSet does (flips[:, 0] horizontal,
        [:, 1] vertical, [:, 2] transpose, applied in that order)."""
        c = self.crop_size
        ar = torch.arange(c, device=self.device)
        row, col = ar.view(1, c, 1), ar.view(1, 1, c)
        hflip, vflip, transpose = (flips[:, k].view(-1, 1, 1) for k in range(3))
        # output pixel (row, col) comes from crop pixel (a, b): undo the transpose, then the flips
        a, b = torch.where(transpose, col, row), torch.where(transpose, row, col)
        a, b = torch.where(vflip, c - 1 - a, a), torch.where(hflip, c - 1 - b, b)
        h, w = self.heights[index].view(-1, 1, 1), self.widths[index].view(-1, 1, 1)
        pixel = (top.view(-1, 1, 1) + a) * w + left.view(-1, 1, 1) + b               # (B, c, c)
        channel = torch.arange(3, device=self.device).view(1, 3, 1, 1) * (h * w).unsqueeze(1)
        flat = self.offsets[index].view(-1, 1, 1, 1) + channel + pixel.unsqueeze(1)  # (B, 3, c, c)
        hr = torch.take(self.buffer, flat).float().div_(255)
        return downscale(hr, self.scale), hr

    def batches(self, indices: list, batch_size: int):
        """The batches of one epoch: `indices` (image numbers, e.g. an EpochSampler's) cut in
        order, len(indices) // batch_size batches of (lr, hr)."""
        order = torch.as_tensor(list(indices), dtype=torch.long).to(self.device)
        for k in range(len(order) // batch_size):
            index = order[k * batch_size:(k + 1) * batch_size]
            yield self.cut(index, *self.draw(index))


# =============================================================================================
# 6. Preparation
# Cutting training images into sub-images once, and the command line of this file:
# python utils.py --input data/DIV2K_train_HR --output data/DIV2K_train_sub
# =============================================================================================

# Training reads a random 96px crop per sample. Decoding a whole 2K PNG for it costs ~50-70 ms;
# cutting the images once into overlapping 480px sub-images makes each sample a ~5 ms decode
# (benchmarks/bench_data.py measures the gain).

def window_starts(length: int, crop_size: int, step: int, thresh_size: int = 0) -> list:
    """Offsets 0, step, 2*step, ... while a window fits, plus one window flush with the far
    edge when the strip left over is wider than `thresh_size`."""
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def subimage_name(stem: str, index: int) -> str:
    return f'{stem}_s{index:03d}.png'


def _write_png(arr: np.ndarray, path: str, compress_level: int = 6) -> str:
    """Write `arr` as a PNG unless `path` already holds exactly these pixels:
    'written' or 'skipped'. Atomic, so an interrupted run never leaves a half-written file."""
    if os.path.exists(path):
        try:
            with Image.open(path) as old:
                if old.size == (arr.shape[1], arr.shape[0]) and np.array_equal(
                        image_to_uint8(old), arr):
                    return 'skipped'
        except Exception:
            pass  # unreadable leftover: overwrite it
    img = Image.fromarray(np.ascontiguousarray(arr))
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG', compress_level=compress_level))
    return 'written'


def extract_subimages(path: str, output: str, crop_size: int = 480, step: int = 240,
                      thresh_size: int = 0, compress_level: int = 6) -> dict:
    """Cut one image into crop_size windows saved as output/{stem}_s{index:03d}.png.

    Returns counts {'written', 'skipped'} and 'warning' / 'error' (a line naming the file, or
    None); never raises for a bad image, so that a folder run goes on."""
    result = {'path': path, 'written': 0, 'skipped': 0, 'warning': None, 'error': None}
    try:
        arr = image_to_uint8(open_image(path))
        h, w = arr.shape[:2]
        stem = os.path.splitext(os.path.basename(path))[0]
        if h < crop_size or w < crop_size:
            result['warning'] = (f'{path}: {w}x{h} is smaller than the {crop_size}px crop, '
                                 f'copied whole')
            windows = [arr]
        else:
            windows = [arr[top:top + crop_size, left:left + crop_size]
                       for top in window_starts(h, crop_size, step, thresh_size)
                       for left in window_starts(w, crop_size, step, thresh_size)]
        for index, win in enumerate(windows, 1):
            out = os.path.join(output, subimage_name(stem, index))
            result[_write_png(win, out, compress_level)] += 1
    except ImageError as e:
        result['error'] = str(e)
    except Exception as e:  # a full disk, a permission: name the file, keep going
        result['error'] = f'{path}: {type(e).__name__}: {e}'
    return result


def _extract_task(task: tuple) -> dict:
    return extract_subimages(*task)


def _worker_stop(signum, frame):
    sys.exit(EXIT_INTERRUPTED)  # SystemExit: atomic_write removes its temporary file, quietly


def _quiet_worker() -> None:
    """A preparation worker leaves Ctrl-C to the main process, which stops it with SIGTERM
    (Pool.terminate): the worker removes its temporary file and ends without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_stop)


def prepare_subimages(input_dir: str, output_dir: str, crop_size: int = 480, step: int = 240,
                      thresh_size: int = 0, workers: int = None, compress_level: int = 6,
                      progress: bool = True) -> dict:
    """Cut every image under `input_dir` into sub-images in `output_dir`, in parallel.
    Returns totals: images (read), written, skipped, failed, and the error lines."""
    in_abs, out_abs = os.path.abspath(input_dir), os.path.abspath(output_dir)
    if in_abs == out_abs:
        raise ValueError(f'{output_dir}: the output folder must differ from the input folder')
    # never re-cut earlier outputs when the output folder lies inside the input folder
    paths = [p for p in list_images(input_dir)
             if not os.path.abspath(p).startswith(out_abs + os.sep)]
    totals = {'images': 0, 'written': 0, 'skipped': 0, 'failed': 0, 'errors': []}
    seen = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in seen:  # both would write {stem}_s001.png ...
            totals['errors'].append(f'{p}: same name as {seen[stem]}, not processed')
            error(totals['errors'][-1])
        else:
            seen[stem] = p
    os.makedirs(output_dir, exist_ok=True)
    tasks = [(p, output_dir, crop_size, step, thresh_size, compress_level)
             for p in seen.values()]
    if workers is None:  # the cores this process may use (fewer than cpu_count in containers)
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                   else os.cpu_count() or 1)
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=len(tasks), unit='img', disable=not progress, desc='sub-images')
    pool = multiprocessing.Pool(workers, initializer=_quiet_worker) if workers > 1 else None
    try:
        results = pool.imap_unordered(_extract_task, tasks) if pool else map(_extract_task, tasks)
        for r in results:
            bar.update()
            if r['warning']:
                tqdm.write(f'warning: {r["warning"]}', file=sys.stderr)
            if r['error']:
                totals['errors'].append(r['error'])
                tqdm.write(f'error: {r["error"]}', file=sys.stderr)
            else:
                totals['images'] += 1
            totals['written'] += r['written']
            totals['skipped'] += r['skipped']
    except BaseException:
        if pool:
            pool.terminate()  # each sub-image is written atomically: none is left half-written
        raise
    finally:
        if pool:
            pool.close()
            pool.join()
        bar.close()
    totals['failed'] = len(totals['errors'])
    return totals


@script
def main(argv=None) -> int:
    """Sub-image preparation CLI; returns the exit code (1 when any image failed); a problem
    with the flags or folders raises UsageError (run_main: one line, exit 2)."""
    parser = argparse.ArgumentParser(
        description='Cut training images (DIV2K) into overlapping sub-images, so that each '
                    'training sample decodes a small PNG instead of a 2K one.')
    parser.add_argument('--input', required=True, help='folder of HR images (searched recursively)')
    parser.add_argument('--output', required=True, help='folder for the sub-images (PNG)')
    parser.add_argument('--crop_size', type=int, default=480, help='sub-image side in pixels')
    parser.add_argument('--step', type=int, default=240, help='stride between sub-images')
    parser.add_argument('--thresh_size', type=int, default=0,
                        help='add a window flush with the far edge only when the strip left '
                             'over is wider than this')
    parser.add_argument('--workers', type=int, default=None,
                        help='processes (default: one per CPU core)')
    parser.add_argument('--compress_level', type=int, default=6, choices=range(10),
                        metavar='0-9', help='PNG zlib level: 6 (default) is ~12%% smaller and '
                        '~8%% faster to decode than 3; 0 stores raw pixels: twice the disk, '
                        '~1.7x faster to decode')
    args = parser.parse_args(argv)
    if args.crop_size < 1 or args.step < 1 or args.thresh_size < 0:
        raise UsageError('--crop_size and --step must be positive, --thresh_size not negative')
    if not os.path.isdir(args.input):
        raise UsageError(f'{args.input}: input folder not found')
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise UsageError(f'{args.output}: the output folder must differ from the input folder')
    problem = output_problem(args.output, folder=True)
    if problem:
        raise UsageError(problem)
    if not list_images(args.input):
        raise UsageError(f'{args.input}: 0 images found ({", ".join(IMAGE_EXTENSIONS)}, '
                         'searched recursively)')
    totals = prepare_subimages(args.input, args.output, args.crop_size, args.step,
                               args.thresh_size, args.workers, args.compress_level)
    print(f"{totals['images']} images read, {totals['written']} sub-images written, "
          f"{totals['skipped']} skipped (already there), {totals['failed']} failed")
    return 1 if totals['failed'] else 0


# =============================================================================================
# 7. Checkpoints
# Checkpoints and weights files: every load goes through model.load_state_file (the one
# torch.load, weights_only=True), every save is atomic; a file that cannot be used raises
# CheckpointError (one line naming it), CheckpointPathError when there is no file.
# =============================================================================================

class CheckpointError(SRError):
    """A weights or checkpoint file that cannot be used; str() names the file."""


class CheckpointPathError(CheckpointError):
    """The weights or checkpoint path is missing or a folder: a command-line problem."""
    exit_status = EXIT_USAGE


class WeightsRefused(CheckpointError):
    """A weights file that loads but cannot be used as given: settings of the wrong type or
    range, tensors that are not finite floats. The command cannot run with it (exit 2)."""
    exit_status = EXIT_USAGE


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save to a temporary file, then os.replace: a kill never leaves a broken file.
    A failed write raises OSError naming `path` (ENOSPC when the disk is full)."""
    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:
            # torch.save reports a full disk as a RuntimeError of its zip writer
            # ('unexpected pos ...'); the free space tells which it was
            full = shutil.disk_usage(os.path.dirname(tmp)).free < 1 << 20
            raise OSError(errno.ENOSPC if full else errno.EIO,
                          os.strerror(errno.ENOSPC) if full else str(e).splitlines()[0]) from None
    atomic_write(path, write)


def _unsafe_globals(path: str) -> list:
    """The Python objects (module.name) a torch.save file would have to import to load, read
    from its pickle without running it; [] for anything else (truncated, not a checkpoint)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint or weights file safely (weights_only=True), or raise CheckpointError
    (CheckpointPathError when there is no file at `path`)."""
    if os.path.isdir(path):
        raise CheckpointPathError(f'{path}: is a folder, not a weights or checkpoint file')
    problem = path_problem(path)  # a FIFO would hang torch.load
    if problem:
        raise CheckpointPathError(f'{path}: {problem}')
    try:
        state = load_state_file(path)
    except Exception as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            # a pickle of something other than tensors (a whole model object, or worse):
            # unpickling it could run code, so it is refused rather than loaded
            raise CheckpointError(f'{path}: refused: the file holds pickled Python objects '
                                  f'(weights_only): {", ".join(unsafe[:3])}') from None
        raise CheckpointError(f'{path}: {load_failure(path, e)}') from None
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


def state_dict_mismatch(module: torch.nn.Module, sd: dict) -> str:
    """What differs between `module`'s state_dict and `sd` (the first keys and shapes), and
    the likely cause; '' when they match."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f'{k} {tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} here' for k in own
              if k in sd and hasattr(sd[k], 'shape') and sd[k].shape != own[k].shape]
    parts = [f'{what} {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
             for what, keys in (('missing', missing), ('unexpected', unexpected),
                                ('shape of', shapes)) if keys]
    if not parts:
        return ''
    differ = {k.split('.')[0] for k in missing + unexpected}
    causes = []
    if 'upsample' in differ:
        causes.append('the scale (--upscale_factor) differs')
    if 'body' in differ:
        causes.append('--num_blocks differs')
    if shapes and not causes:
        causes.append('the channel count differs')
    cause = f'; likely cause: {" and ".join(causes)}' if causes else ''
    return '; '.join(parts) + cause


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


# The generator settings a weights file may record: each an int (not a bool) in this range.
# The ranges only stop nonsense (a list, 1e12 channels) before a network is built; the
# state_dict's own shapes must agree with them too.
SETTING_RANGES = {'upscale_factor': (2, 8), 'num_blocks': (1, 1024), 'channels': (1, 4096)}


def check_settings(path: str, cfg: dict, inferred: dict) -> dict:
    """The generator settings (upscale_factor, num_blocks, channels) of a weights file: those
    it records, checked for type and range and against its state_dict, else those read off the
    state_dict. WeightsRefused (one line naming the file and the setting) otherwise."""
    settings = {}
    for key, (low, high) in SETTING_RANGES.items():
        if key not in cfg:
            settings[key] = inferred[key]
            continue
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise WeightsRefused(f'{path}: records {key} = {short_repr(value)}, which is not an '
                                 f'integer in [{low}, {high}]')
        if key == 'upscale_factor' and value not in DEFAULT_WEIGHTS:
            raise WeightsRefused(f'{path}: records upscale_factor = {value}; the generator '
                                 f'supports {", ".join(map(str, sorted(DEFAULT_WEIGHTS)))}')
        if key != 'upscale_factor' and value != inferred[key]:
            keys = (f'{"missing" if value > inferred[key] else "unexpected"} '
                    f'body.{min(value, inferred[key])}.*' if key == 'num_blocks'
                    else 'head.0.weight')
            raise WeightsRefused(f'{path}: records {key} = {value}, but its state_dict has '
                                 f'{inferred[key]} ({keys}); the settings and the tensors '
                                 'disagree')
        settings[key] = value
    return settings


def check_tensors(path: str, sd: dict) -> None:
    """WeightsRefused unless every tensor of a generator state_dict is finite floating point
    (BatchNorm's integer batch counters aside): NaN or integer weights give a black picture."""
    for key, t in sd.items():
        if key.endswith('num_batches_tracked'):
            continue
        if not t.is_floating_point():
            raise WeightsRefused(f'{path}: tensor {key} is {str(t.dtype).removeprefix("torch.")}'
                                 ', not floating point; not usable generator weights')
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsRefused(f'{path}: tensor {key} is not finite ({bad} NaN or infinite '
                                 'values); the weights are broken (a diverged training run?)')


def short_repr(value, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def load_generator(path: str, upscale_factor: int = None, device='cpu', asked: str = None):
    """Build the Generator a weights file describes and load it (float32, eval mode).

    `upscale_factor`, when given, must agree with the file; `asked` says where it came from
    when not from --upscale_factor (another weights file). Raises CheckpointError."""
    sd, cfg = _generator_state(load_checkpoint(path))
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f'{path}: holds no generator state_dict')
    inferred = _infer_config(sd)
    if inferred['num_blocks'] == 0 or 'channels' not in inferred:
        raise CheckpointError(f'{path}: not an SRResNet/SRGAN generator for this model '
                              f'(keys like {sorted(sd)[:3]})')
    settings = check_settings(path, cfg, inferred)
    check_tensors(path, sd)
    file_scale = settings['upscale_factor']
    if upscale_factor is not None and int(upscale_factor) != file_scale:
        raise CheckpointError(f'{path}: holds an x{file_scale} generator, but '
                              f'{asked or f"--upscale_factor {upscale_factor} was asked for"}')
    try:
        g = Generator(file_scale, settings['num_blocks'], settings['channels'])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{path}: records unusable generator settings ({e})') from None
    mismatch = state_dict_mismatch(g, sd)
    if mismatch:
        raise CheckpointError(f'{path}: does not match the generator its settings describe '
                              f'(x{file_scale}, num_blocks {g.config["num_blocks"]}): '
                              f'{mismatch}') from None
    g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return g.to(device).eval()


def blend_generators(psnr_model: Generator, gan_model: Generator, strength: float) -> Generator:
    """Network interpolation (Wang et al., ESRGAN): a generator each of whose parameters and
    floating-point buffers (BatchNorm statistics) is (1 - strength) * psnr_model's +
    strength * gan_model's, so 0 gives psnr_model (SRResNet) and 1 gan_model (SRGAN) exactly.
    Integer buffers (BatchNorm's batch counter) come from the nearer end. ValueError for a
    strength outside [0, 1] or generators of different settings."""
    if not 0 <= strength <= 1:
        raise ValueError(f'strength must be in [0, 1], got {strength}')
    if psnr_model.config != gan_model.config:
        raise ValueError(f'cannot blend generators of different settings: {psnr_model.config} '
                         f'and {gan_model.config}')
    blend = Generator(**psnr_model.config)
    ends = (psnr_model.state_dict(), gan_model.state_dict())
    blend.load_state_dict({k: torch.lerp(a, ends[1][k], strength) if a.is_floating_point()
                           else ends[round(strength)][k] for k, a in ends[0].items()})
    return blend.to(next(psnr_model.parameters()).device).eval()


def load_blend(psnr_path: str, gan_path: str, strength: float, upscale_factor: int = None,
               device='cpu', asked: str = None) -> Generator:
    """blend_generators of two weights files; CheckpointError (one line) when either cannot
    be loaded or their settings differ (upscale_factor and asked: load_generator's)."""
    psnr_model = load_generator(psnr_path, upscale_factor, device, asked)
    gan_model = load_generator(gan_path, upscale_factor, device, asked)
    if psnr_model.config != gan_model.config:
        raise CheckpointError(f'{psnr_path} and {gan_path}: cannot blend generators of '
                              f'different settings ({psnr_model.config} and {gan_model.config})')
    return blend_generators(psnr_model, gan_model, strength)


# The generator weights this project ships, per scale: SRResNet (the PSNR end, and the
# --strength blends' fidelity end) and SRGAN. Scripts that run a generator without --weight
# take default_weight(--upscale_factor or DEFAULT_SCALE).
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'weights')
DEFAULT_WEIGHTS = {s: {kind: os.path.join(WEIGHTS_DIR, f'{kind}_x{s}.pth')
                       for kind in ('srresnet', 'srgan')} for s in (2, 4, 8)}
DEFAULT_SCALE = 4


def default_weight(scale: int = DEFAULT_SCALE, kind: str = 'srgan',
                   flag: str = '--weight') -> str:
    """The shipped weights file of `kind` ('srgan' or 'srresnet') for `scale`. Without an SRGAN
    file the SRResNet one beside it is used, with a one-line note on stderr saying so.
    CheckpointPathError (naming `flag`, the way to give a file) when there is none."""
    files = DEFAULT_WEIGHTS[scale]
    path = files[kind]
    if os.path.isfile(path):
        return path
    if kind == 'srgan' and os.path.isfile(files['srresnet']):
        print(f'note: no SRGAN weights for x{scale} ({path}); using the SRResNet weights '
              f"{files['srresnet']}", file=sys.stderr, flush=True)
        return files['srresnet']
    also = f", nor {files['srresnet']}" if kind == 'srgan' else ''
    raise CheckpointPathError(f'{path}: the default weights file is not there{also}, so there '
                              f'are no x{scale} {kind} weights; pass {flag} FILE with a weights '
                              "file from train.py (or the original project's generator "
                              'state_dict)')


# =============================================================================================
# 8. Inference
# Running a generator on whole images: autocast precision, the tiling policy (tile size,
# overlap), tiled_forward, and the inference model (BatchNorm folded, channels_last).
# =============================================================================================

def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open('/proc/cpuinfo') as f:
            info = f.read()
    except OSError:
        return False
    return re.search(r'\b(amx_bf16|avx512_bf16)\b', info) is not None


def bf16_emulated_message() -> str:
    """What --amp bf16 on a CPU without native bf16 is told (one line, naming the feature)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return (f'--amp bf16: this CPU ({capability}) has neither AVX512-BF16 nor AMX-BF16 '
            '(avx512_bf16 / amx_bf16 in /proc/cpuinfo), so bf16 is emulated and runs many times '
            'slower than fp32; --amp auto picks fp32 here')


def autocast_dtype(amp: str, device: torch.device):
    """The autocast dtype for --amp on `device`, or None for fp32. Raises UsageError; warns
    (one line) when bf16 is asked for on a CPU that only emulates it."""
    if amp == 'off':
        return None
    if amp == 'fp16':
        if device.type != 'cuda':
            raise UsageError('--amp fp16 needs --cuda (fp16 is slow and inaccurate on the CPU)')
        return torch.float16
    if amp == 'bf16':
        if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
            raise UsageError('--amp bf16: this GPU does not support bfloat16')
        if device.type == 'cpu' and not cpu_has_bf16():
            warn(bf16_emulated_message())
        return torch.bfloat16
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


# How the scripts name each autocast dtype (None: no autocast).
PRECISION_NAMES = {None: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}


# LR pixels each tile shares with its neighbours on every side. SRResNet's receptive field
# reaches ~40 LR pixels, but in a trained network far pixels matter little. Measured with the
# shipped weights, tiles of 2 * overlap + 48 against the whole image, rounded to 8 bits: with
# overlap 8 SRGAN differs by up to 9/255; with 12 and 16 by 1/255 at up to 2000 and 130 values;
# with 24 by 1/255 at 4 values at most (fp32). bf16 runs differ by 1/255 at <1% of the values
# for any overlap from 12 on (bf16 rounding of the activations), never by more. CUDA fp32, bf16
# and fp16 (a quickly trained network): at most 1/255 from 12 on.
TILE_OVERLAP = 24
# Activation memory one tile may use on the CPU; on CUDA a quarter of the free memory.
CPU_TILE_BUDGET = 1 << 30


def max_tile(scale: int, device: torch.device, dtype=None) -> int:
    """The largest tile side (LR pixels) whose activations fit the memory budget."""
    if device.type == 'cuda':
        budget = torch.cuda.mem_get_info(device)[0] // 4
    else:
        budget = CPU_TILE_BUDGET
    elem = 4 if dtype is None else 2
    # Peak: two 64-channel maps at the output resolution (upsampler output and its
    # activation) plus a few 64-channel LR maps; x1.5 for allocator slack and workspaces.
    per_pixel = (128 * scale ** 2 + 256) * elem * 1.5
    return max(64, int(math.sqrt(budget / per_pixel)) // 8 * 8)


def pick_tile(h: int, w: int, largest: int, overlap: int) -> int:
    """Tile side for an h x w LR image: 0 (whole image) when it fits in `largest`, else the
    smallest tile that covers it with as many tiles as `largest` would need (less overlap
    work than cutting `largest`-sized tiles and a thin one at the end)."""
    if h <= largest and w <= largest:
        return 0
    step = largest - 2 * overlap

    def side(length: int) -> int:
        n = max(1, math.ceil((length - 2 * overlap) / step))
        return math.ceil((length + 2 * overlap * (n - 1)) / n)

    return max(side(h), side(w))


def _tile_starts(length: int, tile: int, overlap: int) -> list:
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tile_count(h: int, w: int, tile: int, overlap: int) -> int:
    """How many forward passes tiled_forward makes for an h x w input."""
    if tile <= 0:
        return 1
    return len(_tile_starts(h, tile, overlap)) * len(_tile_starts(w, tile, overlap))


@torch.inference_mode()
def tiled_forward(model, lr: torch.Tensor, scale: int, tile: int = 0,
                  overlap: int = TILE_OVERLAP, progress: Callable = None) -> torch.Tensor:
    """Run `model` on a (N, 3, h, w) LR tensor, in tiles of `tile` LR pixels overlapping by
    `overlap` on each side, so peak memory is bounded by the tile size; tile=0 runs whole.
    progress(done, total), when given, is called after each tile.

    Each output pixel is taken from the tile in which it lies furthest from a tile edge
    (the centre parts), so the receptive field is complete there."""
    n, c, h, w = lr.shape
    if tile <= 0 or (h <= tile and w <= tile):
        out = model(lr)
        if progress:
            progress(1, 1)
        return out
    if tile <= 2 * overlap:
        raise ValueError(f'tile ({tile}) must be larger than twice the overlap ({overlap})')
    out = None
    total, done = tile_count(h, w, tile, overlap), 0
    for top in _tile_starts(h, tile, overlap):
        for left in _tile_starts(w, tile, overlap):
            patch = lr[..., top:top + tile, left:left + tile]
            sr = model(patch)
            done += 1
            if progress:
                progress(done, total)
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


def inference_model(generator: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The generator as run for inference: BatchNorm folded into the convolutions, eval
    mode, no gradients, channels_last weights on `device` (oneDNN's and cuDNN's fast
    layout for these convolutions)."""
    model = fuse_batchnorm(generator).to(device).eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


# Inputs narrower than this (LR pixels) are mirrored out to it before the network and the
# output cropped back. Left alone, the zero padding of the convolutions dominates such an
# image: with the shipped SRGAN a red 1x1 pixel came out (14, 10, 7), a red 2x2 (195, 33, 21);
# mirrored to 12 px they give (254, 3, 2) and (254, 4, 2), and 16 or more change little more.
MIN_INPUT_SIDE = 12


def mirror_pad(x: torch.Tensor, side: int) -> tuple:
    """(x mirrored out to at least side x side, (top, left) offset of x in it) for a
    (..., h, w) tensor; mirroring repeats as often as needed (a 1x1 image becomes flat)."""
    h, w = x.shape[-2:]
    if min(h, w) >= side:
        return x, (0, 0)

    def index(n: int) -> tuple:
        extra = max(0, side - n)
        i = torch.arange(-(extra // 2), n + extra - extra // 2) % (2 * n)
        return torch.where(i < n, i, 2 * n - 1 - i), extra // 2

    rows, top = index(h)
    cols, left = index(w)
    return x[..., rows, :][..., cols], (top, left)


def plan_tile(h: int, w: int, scale: int, device: torch.device, dtype=None,
              overlap: int = TILE_OVERLAP, tile: int = None) -> int:
    """The tile side (LR pixels) super_resolve uses for an h x w input: `tile` when given
    (0 = whole image), else the automatic policy (max_tile's memory budget, pick_tile)."""
    if tile is not None:
        return tile
    return pick_tile(h, w, max_tile(scale, device, dtype), overlap)


# Frames per forward pass at most: larger batches barely raise GPU throughput, while the
# batch's float32 SR frames (about 100 MB each for a 4K output) all sit in memory at once.
MAX_BATCH = 8


def frames_per_pass(h: int, w: int, scale: int, device: torch.device, dtype=None,
                    overlap: int = TILE_OVERLAP, tile: int = None) -> int:
    """How many h x w frames super_resolve runs in one forward pass: as many whole frames (or
    tiles of frames) as fit in the area of the largest tile the memory budget allows, up to
    MAX_BATCH."""
    largest = max_tile(scale, device, dtype)
    tile = plan_tile(h, w, scale, device, dtype, overlap, tile)
    area = min(tile, h) * min(tile, w) if tile else h * w
    return max(1, min(MAX_BATCH, largest * largest // area))


class InferenceError(ImageError):
    """The generator gave no usable output for an image: out of memory even with a smaller
    tile, or an output that is not finite. An ImageError, so a folder run goes on with the
    next image; str() names the image when the caller said which (super_resolve's name)."""


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError of the CPU allocator that could not
    allocate (DefaultCPUAllocator: not enough memory ...)."""
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ('out of memory' in text.lower()
                                         or 'DefaultCPUAllocator' in text))


def forward_with_retry(model, x: torch.Tensor, scale: int, tile: int, overlap: int, dtype,
                       step: Callable = None, where: str = '') -> tuple:
    """(tiled_forward's output, the tile it used). Out of memory (CUDA or CPU) is retried once
    with half the tile (half the longer side for a whole image) where that still exceeds twice
    the overlap, with a one-line note; otherwise InferenceError naming `where` and --tile."""
    device = x.device
    for attempt in (0, 1):
        try:
            with torch.inference_mode(), torch.autocast(device.type,
                                                        dtype=dtype or torch.bfloat16,
                                                        enabled=dtype is not None):
                return tiled_forward(model, x, scale, tile, overlap, step), tile
        except (RuntimeError, MemoryError) as e:
            if not (isinstance(e, MemoryError) or is_out_of_memory(e)):
                raise
        # outside the except block, so the failed attempt's tensors are freed first
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        tried = f'tile {tile}' if tile and tile < max(x.shape[-2:]) else 'the whole image'
        smaller = (tile if tried != 'the whole image' else max(x.shape[-2:])) // 2
        if attempt or smaller <= 2 * overlap:
            raise InferenceError(f'{where}out of memory on the {device.type.upper()} with '
                                 f'{tried}; try a smaller --tile (above twice --tile_overlap, '
                                 f'{2 * overlap}) or a smaller image')
        print(f'note: {where}out of memory with {tried}; retrying with --tile {smaller}',
              file=sys.stderr, flush=True)
        tile = smaller


def super_resolve(model: torch.nn.Module, lr: torch.Tensor, scale: int, tile: int = None,
                  overlap: int = TILE_OVERLAP, dtype=None,
                  progress: Callable = None, name: str = None) -> torch.Tensor:
    """The one path from a loaded generator (inference_model) to its output: (3, h, w) or
    (N, 3, h, w) LR in [0, 1] -> (3 or N, 3, h*scale, w*scale) float32 on the CPU, unclamped.

    tile: None = automatic (plan_tile), 0 = whole image, N = tiles of N LR pixels overlapping
    by `overlap`; dtype: the autocast dtype (autocast_dtype), None for float32; N frames run
    frames_per_pass at a time; inputs under MIN_INPUT_SIDE are mirrored out to it first.
    progress(done, total) is called after each forward pass. Out of memory is retried once
    with a smaller tile (forward_with_retry); InferenceError, naming `name` (the image) when
    given, when that fails too or when the output is not finite (NaN or infinity)."""
    device = next(model.parameters()).device
    where = f'{name}: ' if name else ''
    single = lr.dim() == 3
    h, w = lr.shape[-2:]
    lr, (top, left) = mirror_pad(lr[None] if single else lr, MIN_INPUT_SIDE)
    ph, pw = lr.shape[-2:]
    tile = plan_tile(ph, pw, scale, device, dtype, overlap, tile)
    batch = frames_per_pass(ph, pw, scale, device, dtype, overlap, tile)
    chunks = lr.split(batch)
    per_chunk = tile_count(ph, pw, tile, overlap)
    outputs = []
    for i, chunk in enumerate(chunks):
        x = chunk.to(device).contiguous(memory_format=torch.channels_last)
        step = None if progress is None else (
            lambda done, _, i=i: progress(i * per_chunk + done, len(chunks) * per_chunk))
        sr, tile = forward_with_retry(model, x, scale, tile, overlap, dtype, step, where)
        if not torch.isfinite(sr).all():
            hint = ('; try --amp off' if dtype == torch.float16 else
                    '; the weights are likely broken')
            raise InferenceError(f'{where}the generator output is not finite (NaN or '
                                 f'infinity){hint}')
        outputs.append(sr[..., top * scale:(top + h) * scale,
                          left * scale:(left + w) * scale].float().cpu())
    sr = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return sr[0] if single else sr


# Geometric self-ensemble (Lim et al., EDSR, 2017: the "+" rows): the network runs on the 8
# flips and rotations of the input, each output is turned back, and the 8 are averaged. About
# 0.1-0.2 dB PSNR for 8x the time.
def ensemble_transforms() -> list:
    """The 8 (quarter turns, mirrored) pairs of the dihedral group, identity first."""
    return [(k, flip) for flip in (False, True) for k in range(4)]


def _transform(x: torch.Tensor, k: int, flip: bool, undo: bool = False) -> torch.Tensor:
    if not undo:
        x = x.flip(-1) if flip else x
        return torch.rot90(x, k, dims=(-2, -1))
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def ensemble_resolve(model: torch.nn.Module, lr: torch.Tensor, scale: int, tile: int = None,
                     overlap: int = TILE_OVERLAP, dtype=None,
                     progress: Callable = None, name: str = None) -> torch.Tensor:
    """super_resolve's output averaged over the 8 flips and rotations of `lr` (each output
    turned back first): same arguments, same result shape; 8x the time."""
    transforms = ensemble_transforms()
    total = torch.zeros(())
    for t, (k, flip) in enumerate(transforms):
        step = None if progress is None else (
            lambda done, n, t=t: progress(t * n + done, len(transforms) * n))
        sr = super_resolve(model, _transform(lr, k, flip), scale, tile, overlap, dtype, step,
                           name)
        total = total + _transform(sr, k, flip, undo=True)
    return total / len(transforms)


def resolve(model: torch.nn.Module, lr: torch.Tensor, scale: int, tile: int = None,
            overlap: int = TILE_OVERLAP, dtype=None, progress: Callable = None,
            ensemble: bool = False, name: str = None) -> torch.Tensor:
    """super_resolve, or ensemble_resolve when `ensemble` (--ensemble); `name` (the input
    file) is what an InferenceError names."""
    run = ensemble_resolve if ensemble else super_resolve
    return run(model, lr, scale, tile, overlap, dtype, progress, name)


# A method upscales a (3, h, w) LR tensor in [0, 1] to (3, h*s, w*s); the output need not
# be clamped, the metrics clamp and round.
Method = Callable[[torch.Tensor], torch.Tensor]


def bicubic_method(scale: int) -> Method:
    return lambda lr: imresize(lr, scale)


def generator_method(generator: torch.nn.Module, scale: int, device: torch.device,
                     amp_dtype: Optional[torch.dtype] = None, tile: int = None,
                     overlap: int = TILE_OVERLAP, ensemble: bool = False) -> Method:
    """A method running `generator` through super_resolve, as test_image.py does (BatchNorm
    fused, channels_last, optional autocast, the same tile policy); ensemble: the 8-transform
    self-ensemble (ensemble_resolve)."""
    model = inference_model(generator, device)
    return lambda lr: resolve(model, lr, scale, tile, overlap, amp_dtype, ensemble=ensemble)


# =============================================================================================
# 9. Command line
# The shared flags, one definition each (add_flags), the device --cuda asks for, and argparse
# types: a bad flag value is one line and exit status 2 before anything runs.
# =============================================================================================

def device_for(cuda: bool) -> torch.device:
    """The device --cuda asks for; UsageError when there is no GPU."""
    if cuda and not torch.cuda.is_available():
        raise UsageError('--cuda: no CUDA device is available (leave out --cuda to run on '
                         'the CPU)')
    return torch.device('cuda' if cuda else 'cpu')


class Default(NamedTuple):
    """A flag's default whose value does not say it: `text` is what --help shows."""
    value: object
    text: str


def described(text: str, default) -> str:
    """A flag's help line: `text` and its default, shown one way everywhere."""
    shown = default.text if isinstance(default, Default) else default
    return f'{text} (default: {shown})'


def _default(default) -> object:
    return default.value if isinstance(default, Default) else default


class WeightSpec(NamedTuple):
    """A --weight value: a generator weights file and the label a table gives it."""
    name: str
    path: str


def weight_spec(text: str) -> WeightSpec:
    """--weight's type: 'NAME=PATH', or a bare 'PATH' labelled with its file stem (an existing
    file whose name holds '=' is a PATH)."""
    name, sep, path = text.partition('=')
    if sep and name and os.sep not in name and not os.path.exists(text):
        return WeightSpec(name, path)
    return WeightSpec(os.path.splitext(os.path.basename(text))[0], text)


# The shared flags, one definition each; add_flags picks them by name, a script passes a
# different default (a value or a Default) where it has a reason to.

def flag_upscale_factor(p: argparse.ArgumentParser,
                        default=Default(None, 'the one the weights file records; '
                                              f'{DEFAULT_SCALE} without a weights file')):
    p.add_argument('--upscale_factor', type=int, choices=sorted(DEFAULT_WEIGHTS),
                   default=_default(default),
                   help=described('super-resolution scale; it must agree with the weights '
                                  'file', default))


def flag_weight(p: argparse.ArgumentParser,
                default=Default(None, 'weights/srgan_x{S}.pth for --upscale_factor S, '
                                      'weights/srresnet_x{S}.pth where there is no SRGAN file'),
                repeat: bool = False):
    """--weight PATH or NAME=PATH (utils.WeightSpec); repeat: several, each a table row, given
    as --weight A --weight B or --weight A B."""
    many = dict(nargs='+', action='extend') if repeat else {}
    p.add_argument('--weight', type=weight_spec, default=_default(default), metavar='[NAME=]PATH',
                   help=described('generator weights file (train.py\'s, weights/, or a bare '
                                  'generator state_dict), NAME the label a table gives it'
                                  + ('; repeatable' if repeat else ''), default), **many)


def flag_cuda(p: argparse.ArgumentParser, default=Default(False, 'the CPU')):
    p.add_argument('--cuda', action='store_true', help=described('run on the GPU', default))


def flag_amp(p: argparse.ArgumentParser, default='auto'):
    p.add_argument('--amp', choices=['auto', 'off', 'bf16', 'fp16'], default=_default(default),
                   help=described('autocast precision: auto = bf16 where the GPU/CPU has native '
                                  'bf16, else fp32; off = fp32; fp16 needs --cuda', default))


def flag_tile(p: argparse.ArgumentParser, default=Default(None, 'automatic, from the image '
                                                                'size and the device memory')):
    """--tile and --tile_overlap."""
    p.add_argument('--tile', type=number(int, 0), default=_default(default), metavar='N',
                   help=described('run the generator on N x N LR tiles to bound memory; 0 = '
                                  'the whole image at once', default))
    p.add_argument('--tile_overlap', type=number(int, 0), default=TILE_OVERLAP, metavar='N',
                   help=described('LR pixels neighbouring tiles share', TILE_OVERLAP))


def flag_max_megapixels(p: argparse.ArgumentParser, default=MAX_MEGAPIXELS):
    p.add_argument('--max_megapixels', type=number(float, 0, low_open=True),
                   default=_default(default), metavar='MP',
                   help=described('refuse images that would be larger than this at full size '
                                  '(checked from the file header, before decoding)', default))


def flag_out_dir(p: argparse.ArgumentParser, default='results'):
    p.add_argument('--out_dir', default=_default(default), metavar='DIR',
                   help=described('output folder', default))


def flag_ensemble(p: argparse.ArgumentParser,
                  default=Default(False, 'off: one pass')):
    p.add_argument('--ensemble', action='store_true',
                   help=described('geometric self-ensemble (EDSR\'s "+"): average the network '
                                  'over the 8 flips and rotations of the input; 8x the time',
                                  default))


def flag_outscale(p: argparse.ArgumentParser, default=Default(None, "the network's scale")):
    p.add_argument('--outscale', type=number(float, 0, low_open=True), default=_default(default),
                   metavar='S',
                   help=described("final scale: the network's --upscale_factor first, then "
                                  'MATLAB bicubic to round(S x width) x round(S x height)',
                                  default))


FLAGS = {'upscale_factor': flag_upscale_factor, 'weight': flag_weight, 'cuda': flag_cuda,
         'amp': flag_amp, 'tile': flag_tile, 'max_megapixels': flag_max_megapixels,
         'out_dir': flag_out_dir, 'ensemble': flag_ensemble, 'outscale': flag_outscale}


def add_flags(p: argparse.ArgumentParser, *names: str, **defaults) -> None:
    """Add the shared flags `names` (keys of FLAGS) to `p`; defaults[name] replaces a flag's
    default (a value, or a Default when the value does not say it)."""
    for name in names:
        FLAGS[name](p, **({'default': defaults[name]} if name in defaults else {}))


def inference_setup(args: argparse.Namespace) -> tuple:
    """(device, autocast dtype) from the --cuda, --amp, --tile and --tile_overlap flags;
    UsageError for flags that do not fit together or that this machine cannot honour."""
    tile = getattr(args, 'tile', None)
    overlap = getattr(args, 'tile_overlap', TILE_OVERLAP)
    if tile and tile <= 2 * overlap:
        raise UsageError(f'--tile {tile} must be 0 or larger than twice --tile_overlap '
                         f'({overlap})')
    device = device_for(getattr(args, 'cuda', False))
    return device, autocast_dtype(getattr(args, 'amp', 'off'), device)


def generator_from_flags(args: argparse.Namespace, device: torch.device) -> Generator:
    """The generator --weight names (default_weight(--upscale_factor) without it), loaded for
    --upscale_factor (None: the file's scale). CheckpointError / CheckpointPathError."""
    weight = args.weight.path if args.weight else default_weight(
        args.upscale_factor or DEFAULT_SCALE)
    return load_generator(weight, args.upscale_factor, device)


def number(kind: type, low: float, high: float = math.inf, low_open: bool = False,
           high_open: bool = False):
    """An argparse type for a finite `kind` (int or float) in [low, high], an end excluded
    when *_open; NaN and infinities are refused too."""
    bounds = (f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
              if high != math.inf else f'{">" if low_open else ">="} {low:g}')

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f'expected {"an integer" if kind is int else "a number"}, got {text!r}') from None
        inside = ((value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
        if not (inside and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'must be {bounds}, got {text}')
        return value
    return parse


# =============================================================================================
# 10. One photo
# What test_image.py and demo.py do to one file: read it, super-resolve it through
# super_resolve, and write sr_ / bicubic_ / lr_ (/ hr_) beside each other under out_dir/stem/.
# =============================================================================================

BT601_LUMA = (0.299, 0.587, 0.114)  # the weights of Y in utils.rgb_to_ycbcr, normalised



@dataclass
class PhotoOptions:
    scale: int
    out_dir: str = 'results'
    downsample: bool = False
    tile: int = None          # None: pick from the image size and device; 0: whole image
    overlap: int = TILE_OVERLAP
    dtype: torch.dtype = None  # autocast dtype, None for fp32
    max_megapixels: float = MAX_MEGAPIXELS
    ensemble: bool = False     # the 8-transform self-ensemble (ensemble_resolve)
    outscale: float = None     # final scale (imresize after the network), None: the network's;
                               # not with downsample (the metrics compare at the network's)
    alpha: str = 'bicubic'     # how alpha is upscaled: bicubic, or network (replicated to RGB)
    ext: str = 'auto'          # output format: auto (the input's), png, jpg, webp, tif
    quality: int = None        # JPEG / WebP quality, None: 95


def is_grayscale(rgb: torch.Tensor) -> bool:
    return torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], rgb[2])


def to_grayscale(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 luma in all three channels: the Y that utils' metrics see is unchanged."""
    luma = sum(wt * ch for wt, ch in zip(BT601_LUMA, rgb))
    return luma.expand(3, -1, -1).contiguous()


def output_name(prefix: str, name: str) -> str:
    """prefix + name, with a .png extension when Pillow cannot write name's format."""
    return output_format(prefix + name)[0]


# --ext values -> the extension written
EXTENSIONS = {'png': '.png', 'jpg': '.jpg', 'webp': '.webp', 'tif': '.tif'}


def photo_outputs(path: str, out_dir: str, downsample: bool = False, ext: str = 'auto',
                  bits: int = 8) -> list:
    """The files process_image writes for the image at `path`: out_dir/STEM/sr_NAME,
    bicubic_NAME, lr_NAME (and hr_NAME with downsample), named by photo_output_name; for
    utils.check_outputs."""
    name = os.path.basename(path)
    folder = os.path.join(out_dir, os.path.splitext(name)[0])
    prefixes = ['sr_', 'bicubic_', 'lr_'] + (['hr_'] if downsample else [])
    return [os.path.join(folder, photo_output_name(prefix, name, ext, bits))
            for prefix in prefixes]


def photo_output_name(prefix: str, name: str, ext: str = 'auto', bits: int = 8) -> str:
    """The file name process_image writes for input `name`: prefix + name with --ext's
    extension; auto keeps the input's where Pillow writes that format (GIF, a palette format,
    becomes PNG, and so does anything else at 16 bits). UsageError for 16-bit grey to a
    format that cannot hold it."""
    stem = os.path.splitext(name)[0]
    if ext != 'auto':
        out = prefix + stem + EXTENSIONS[ext]
    else:
        out = output_name(prefix, name)
        if output_format(out)[1] == 'GIF' or (
                bits == 16 and output_format(out)[1] not in SIXTEEN_BIT_FORMATS):
            out = prefix + stem + '.png'
    if bits == 16 and output_format(out)[1] not in SIXTEEN_BIT_FORMATS:
        raise UsageError(f'--ext {ext}: {name} is 16-bit grey, which only PNG and TIFF hold '
                         '(use --ext png or --ext tif)')
    return out


def outscale_size(h: int, w: int, outscale: float) -> tuple:
    """(height, width) of an h x w input at --outscale: round(S*h) x round(S*w), at least 1."""
    return max(1, round(outscale * h)), max(1, round(outscale * w))


def process_image(path: str, model: torch.nn.Module, opts: PhotoOptions,
                  progress: Callable = None) -> dict:
    """Super-resolve one file and write its outputs in the input's kind (load_photo /
    save_photo); returns what to report. progress(done, total), when given, is called after
    each tile (demo.py's progress bar).

    Raises ImageError (one line naming the file) for input that cannot be used, UsageError
    for an --ext that cannot hold it."""
    s = opts.scale
    hr = hr_alpha = None
    if opts.downsample:  # the ground truth and its LR, as evaluate.py makes them
        check_pixels(path, opts.max_megapixels)
        photo = load_photo(path)
        both = photo.rgb if photo.alpha is None else torch.cat([photo.rgb, photo.alpha])
        hr, lr = crop_and_downscale(both, s, path)
        hr, hr_alpha = hr[:3], (hr[3:] if len(hr) > 3 else None)
        lr, lr_alpha = lr[:3], (lr[3:] if len(lr) > 3 else None)
    else:
        photo = load_photo(path)
        lr, lr_alpha = photo.rgb, photo.alpha
    files = photo_outputs(path, opts.out_dir, opts.downsample, opts.ext, photo.bits)
    h, w = lr.shape[-2:]
    device = next(model.parameters()).device
    tile = plan_tile(h, w, s, device, opts.dtype, opts.overlap, opts.tile)

    def network(x: torch.Tensor) -> torch.Tensor:
        return resolve(model, x, s, tile, opts.overlap, opts.dtype, progress,
                       ensemble=opts.ensemble, name=path)

    start = time.perf_counter()
    sr = network(lr)
    seconds = time.perf_counter() - start
    if photo.gray:  # the network tints grey input slightly; its luma is written back
        sr = to_grayscale(sr)
    sr_alpha = None
    if lr_alpha is not None:
        sr_alpha = (to_grayscale(network(lr_alpha.expand(3, -1, -1)))[:1]
                    if opts.alpha == 'network'
                    else imresize(lr_alpha, s)).clamp(0, 1)
    size = (h * s, w * s) if opts.outscale is None else outscale_size(h, w, opts.outscale)
    if opts.outscale is not None:  # the network's scale first, then bicubic to the final size
        sr = imresize(sr, size=size)
        sr_alpha = None if sr_alpha is None else imresize(sr_alpha, size=size).clamp(0, 1)
    bicubic = imresize(lr, size=size)

    images = [(sr, sr_alpha), (bicubic, sr_alpha), (lr, lr_alpha), (hr, hr_alpha)]
    written = []
    for (image, a), out in zip(images, files):  # sr_, bicubic_, lr_ (, hr_ with downsample)
        try:
            out = save_photo(image, out, photo, alpha=a, quality=opts.quality)
        except OSError as e:
            raise ImageError(f'{path}: cannot write {out} ({e})') from None
        written.append(out)

    metrics = None
    if hr is not None:
        metrics = {'bicubic': image_metrics(bicubic, hr, s), 'sr': image_metrics(sr, hr, s)}
    return {'path': path, 'in_size': (w, h), 'net_size': (w * s, h * s),
            'out_size': (size[1], size[0]), 'tile': tile, 'seconds': seconds,
            'metrics': metrics, 'outputs': written, 'mode': photo.mode, 'bits': photo.bits,
            'notes': list(photo.notes)}


# =============================================================================================
# 11. Crop comparisons
# The same boxes cut out of several versions of an image and put side by side, enlarged with
# nearest neighbour so pixels stay visible (get_img_crop.py, demo.py). Boxes are (x, y, w, h)
# in pixels.
# =============================================================================================

# Distinct colours for boxes 0, 1, 2, ... (repeats after the last).
PALETTE = ('#e6194b', '#3cb44b', '#4363d8', '#ffe119', '#f032e6', '#42d4f4', '#f58231',
           '#911eb4', '#bfef45', '#fabed4')
GAP = 8             # pixels between and around the patches of a comparison picture
LABEL_HEIGHT = 28   # the caption strip under each patch
MIN_DISPLAY = 160   # patches smaller than this are enlarged (nearest neighbour) in comparisons
CROP_BORDER = 2     # width of the coloured frame around each saved patch


class CropError(SRError):
    """A coordinates file that cannot be used, or a cancelled selection; str() is the one-line
    message. Bad flags raise utils.UsageError."""


def parse_box(text: str) -> tuple:
    """'X,Y,W,H' -> (x, y, w, h) integers, w and h positive."""
    try:
        box = tuple(int(v) for v in text.split(','))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise UsageError(f'--box {text}: expected X,Y,W,H (integers, W and H positive)')
    return box


def check_box(box: tuple, size: tuple, where: str) -> None:
    """Raise CropError unless `box` lies inside an image of `size` (w, h)."""
    x, y, w, h = box
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > size[0] or y + h > size[1]:
        raise CropError(f'{where}: box {x},{y},{w},{h} is not inside the '
                        f'{size[0]}x{size[1]} image')


def scale_box(box: tuple, src_size: tuple, dst_size: tuple) -> tuple:
    """A box in an image of src_size (w, h) mapped to the same region of one of dst_size."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    x0, y0 = round(box[0] * sx), round(box[1] * sy)
    x1, y1 = round((box[0] + box[2]) * sx), round((box[1] + box[3]) * sy)
    x0, y0 = min(max(x0, 0), dst_size[0] - 1), min(max(y0, 0), dst_size[1] - 1)
    x1, y1 = min(max(x1, x0 + 1), dst_size[0]), min(max(y1, y0 + 1), dst_size[1])
    return x0, y0, x1 - x0, y1 - y0


def default_colors(n: int) -> list:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]



def read_rgb(path: str) -> Image.Image:
    """An RGB PIL image of any input utils.load_image reads (16-bit, EXIF orientation ...);
    transparency is shown over white. Raises ImageError."""
    rgb, alpha = load_image(path)
    if alpha is not None:
        rgb = rgb * alpha + (1 - alpha)
    return Image.fromarray(to_uint8(rgb))


def line_width(size: tuple) -> int:
    return max(1, round(min(size) / 200))


def annotate(img: Image.Image, boxes: list, colors: list) -> Image.Image:
    """A copy of `img` with every box outlined in its colour."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = line_width(img.size)
    for (x, y, w, h), color in zip(boxes, colors):
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=color, width=width)
    return out


def framed_patch(img: Image.Image, box: tuple, color: str) -> Image.Image:
    """The patch under `box` with a CROP_BORDER frame of `color` around it."""
    x, y, w, h = box
    patch = img.crop((x, y, x + w, y + h))
    framed = Image.new('RGB', (w + 2 * CROP_BORDER, h + 2 * CROP_BORDER), color)
    framed.paste(patch, (CROP_BORDER, CROP_BORDER))
    return framed


def display_size(patch_sizes: list) -> tuple:
    """The common size of the patches in a comparison picture: the largest patch, enlarged by
    a whole factor when it is narrower than MIN_DISPLAY."""
    w = max(s[0] for s in patch_sizes)
    h = max(s[1] for s in patch_sizes)
    factor = max(1, math.ceil(MIN_DISPLAY / w))
    return w * factor, h * factor


def label_font(size: int = 16):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def comparison(patches: list, labels: list) -> Image.Image:
    """Patches side by side at one display size (nearest neighbour), each captioned."""
    dw, dh = display_size([p.size for p in patches])
    n = len(patches)
    out = Image.new('RGB', (n * dw + (n + 1) * GAP, dh + LABEL_HEIGHT + 2 * GAP), 'white')
    draw = ImageDraw.Draw(out)
    font = label_font()
    for k, (patch, label) in enumerate(zip(patches, labels)):
        left = GAP + k * (dw + GAP)
        out.paste(patch.resize((dw, dh), Image.Resampling.NEAREST), (left, GAP))
        text = label
        while text and draw.textlength(text, font=font) > dw:  # shorten to fit the column
            text = text[:-1]
        tw = draw.textlength(text, font=font)
        draw.text((left + (dw - tw) / 2, GAP + dh + 4), text, fill='black', font=font)
    return out


if __name__ == '__main__':
    sys.exit(main())
