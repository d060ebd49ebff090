"""NIQE speed, in one run: utils.niqe (every block at once) against a straightforward
implementation that handles one 96x96 block at a time, as MATLAB's niqe and most ports do.

    python benchmarks/bench_niqe.py                      # skimage's astronaut and Hubble photos
    python benchmarks/bench_niqe.py --image photo.png --repeat 5

(a) baseline: `niqe_per_block` below: numpy and scipy, a Python loop over the blocks, each
    block's five AGGD fits by an argmin over the whole 9,801-entry shape table;
(b) this project: utils.niqe.
Both start from the same RGB image and share its conversion to the rounded Y channel
(utils.niqe_luma, inside both timings); the run checks that they agree to 1e-9 and exits
non-zero if not. (a) and (b) alternate, best of --repeat each, in one intra-op thread,
so both see the same load on a shared machine. tests/test_niqe.py also uses `niqe_per_block`
as the independent reference for utils.niqe.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from scipy.ndimage import correlate1d
from scipy.special import gamma

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402

SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def aggd_fit(values: np.ndarray) -> tuple:
    """(shape, left scale, right scale) of an asymmetric generalised Gaussian, by moment
    matching against the table of shapes 0.2:0.001:10 (MATLAB's estimateaggdparam)."""
    v = values.ravel()
    shapes = np.arange(0.2, 10.0005, 0.001)
    ratio = gamma(2 / shapes) ** 2 / (gamma(1 / shapes) * gamma(3 / shapes))
    left = np.sqrt(np.mean(v[v < 0] ** 2)) if (v < 0).any() else np.nan
    right = np.sqrt(np.mean(v[v > 0] ** 2)) if (v > 0).any() else np.nan
    g = left / right
    rhat = np.mean(np.abs(v)) ** 2 / np.mean(v ** 2)
    target = rhat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    shape = shapes[np.argmin((ratio - target) ** 2)]  # all NaN -> the first entry, as MATLAB
    scale = np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    return shape, left * scale, right * scale


def block_features(block: np.ndarray) -> list:
    """The 18 NIQE features of one block of MSCN coefficients."""
    shape, left, right = aggd_fit(block)
    features = [shape, (left + right) / 2]
    for shift in SHIFTS:
        shape, left, right = aggd_fit(block * np.roll(block, shift, axis=(0, 1)))
        mean = (right - left) * gamma(2 / shape) / gamma(1 / shape)
        features += [shape, mean, left, right]
    return features


def mscn(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """(I - mu) / (sigma + 1) with the separable 7x7 Gaussian, edges replicated."""
    def blur(x):
        return correlate1d(correlate1d(x, taps, axis=1, mode='nearest'), taps, axis=0,
                           mode='nearest')
    mu = blur(img)
    diff = img - mu
    diff[np.abs(diff) < utils._MSCN_ZERO] = 0  # zero in exact arithmetic (see utils._mscn)
    return diff / (np.sqrt(np.abs(blur(img * img) - mu * mu)) + 1)


def niqe_per_block(y: np.ndarray) -> float:
    """NIQE of an (H, W) float64 luma image, one block at a time."""
    with np.load(utils.NIQE_PARAMS, allow_pickle=False) as f:
        mu_p, cov_p = f['mu_pris_param'][0], f['cov_pris_param']
        taps = f['gaussian_window'].sum(axis=1)
    b = utils.NIQE_BLOCK
    rows, cols = y.shape[0] // b, y.shape[1] // b
    img = y[:rows * b, :cols * b]
    scales = []
    for size in (b, b // 2):
        m = mscn(img, taps)
        scales.append([block_features(m[r * size:(r + 1) * size, c * size:(c + 1) * size])
                       for r in range(rows) for c in range(cols)])
        img = utils.imresize(torch.from_numpy(img), 0.5).numpy()
    feats = np.concatenate([np.array(s) for s in scales], axis=1)
    complete = feats[~np.isnan(feats).any(axis=1)]
    d = mu_p - np.nanmean(feats, axis=0)
    return float(np.sqrt(d @ np.linalg.pinv((cov_p + np.cov(complete, rowvar=False)) / 2) @ d))


def sample_images() -> dict:
    from skimage import data
    return {'astronaut (512x512)': data.astronaut(),
            'hubble_deep_field (872x1000)': data.hubble_deep_field()}


def timed(fn, *args) -> tuple:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--image', nargs='+', help='image files (default: two skimage photos)')
    parser.add_argument('--repeat', type=int, default=3, help='runs of each, best taken')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        images = ({p: utils.load_image(p)[0] for p in args.image} if args.image
                  else sample_images())
    except utils.ImageError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    ok = True
    for name, img in images.items():
        try:
            utils.niqe(img)
        except ValueError as e:
            print(f'error: {name}: {e}', file=sys.stderr)
            return 2
        loop, vec = [], []
        for _ in range(args.repeat):
            t, ref = timed(lambda im: niqe_per_block(utils.niqe_luma(im).numpy()), img)
            loop.append(t)
            t, value = timed(utils.niqe, img)
            vec.append(t)
        same = abs(value - ref) <= 1e-9
        ok &= same
        print(f'{name}: per-block {min(loop) * 1000:.0f} ms, utils.niqe {min(vec) * 1000:.0f} ms, '
              f'ratio {min(loop) / min(vec):.1f}x; NIQE {value:.6f} vs {ref:.6f} '
              f'({"equal" if same else "DIFFERENT"} to 1e-9)')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
