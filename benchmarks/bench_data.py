"""Data pipeline speed, in one run: training patches/s of the loader most SRGAN repos use against
this project's, on DIV2K-sized images the script makes itself.

    python benchmarks/bench_data.py                    # ~45 s on a busy 2-core CPU
    python benchmarks/bench_data.py --train_ips 1200   # also: workers needed to feed 1200 img/s

(a) baseline: every sample opens a full 2040x1356 PNG with PIL, takes a random 96px crop and
    shrinks it to 24px with PIL bicubic (torchvision transforms, as in leftthomas/SRGAN);
(b) this project: utils.TrainSet on 480px sub-images cut by utils.py's preparation CLI
    (preparation not timed): decode a small PNG, crop and flip as uint8, MATLAB bicubic to 24px.
Both single process (DataLoader workers=0, one thread), batch 16, x4. Then (b) again with one
DataLoader worker: what one worker delivers, and so how many workers keep a training loop of a
given speed (--train_ips, or benchmarks/bench_train.py's train_images_per_second()) fed.
"""
import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from skimage import data
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402

DIV2K_SIZE = (2040, 1356)  # width, height of most DIV2K HR images


def make_images(folder: str, count: int, grain: float = 2.0, seed: int = 0) -> list:
    """`count` DIV2K-sized PNGs: skimage photos upsampled with bicubic, plus a little grain so
    that they compress like real photos (~4 MB each, DIV2K averages ~4.4 MB)."""
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        img = Image.fromarray(sources[i % len(sources)]).resize(DIV2K_SIZE, Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, grain, img.size[::-1] + (3,))
        path = os.path.join(folder, f'{i:04d}.png')
        Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


class BaselineTrainSet(torch.utils.data.Dataset):
    """The usual SRGAN loader: whole-image PIL decode per sample, PIL bicubic for LR."""

    def __init__(self, paths: list, crop_size: int = 96, upscale_factor: int = 4):
        self.paths = paths
        self.hr_transform = transforms.Compose([transforms.RandomCrop(crop_size),
                                                transforms.ToTensor()])
        self.lr_transform = transforms.Compose([
            transforms.ToPILImage(),
            transforms.Resize(crop_size // upscale_factor,
                              interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple:
        hr = self.hr_transform(Image.open(self.paths[i]).convert('RGB'))
        return self.lr_transform(hr), hr


def random_loader(dataset, batch_size: int, workers: int):
    """utils.make_loader drawing images at random, with replacement, for as long as timed
    (a handful of images would otherwise make epochs shorter than a batch)."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10 ** 7)
    return utils.make_loader(dataset, batch_size, workers, sampler=sampler, seed=0)


def patches_per_second(loaders: list, seconds: float, rounds: int = 3) -> list:
    """Samples/s of each loader over about `seconds`, after one warm-up batch each (worker
    start-up, imports). Single-process loaders take turns in `rounds` slices, so that a load
    change on a shared machine hits them alike."""
    batches = [iter(loader) for loader in loaders]
    for b in batches:
        next(b)
    counts, spent = [0] * len(loaders), [0.0] * len(loaders)
    for _ in range(rounds):
        for k, b in enumerate(batches):
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                counts[k] += len(next(b)[0])
            spent[k] += time.perf_counter() - start
    return [c / s for c, s in zip(counts, spent)]


def decode_ms(paths: list, decoders: list, repeats: int = 15) -> list:
    """Milliseconds per decode of each decoder over `paths`: passes alternate between the
    decoders and the fastest pass counts (the least disturbed by other load)."""
    best = [float('inf')] * len(decoders)
    for _ in range(repeats):
        for k, decode in enumerate(decoders):
            start = time.perf_counter()
            for p in paths:
                decode(p)
            best[k] = min(best[k], (time.perf_counter() - start) / len(paths) * 1e3)
    return best


def compare_decoders(sub_dir: str, count: int = 12) -> None:
    """PIL against torchvision (utils.read_uint8) on 480px PNG sub-images and JPEG copies."""
    pngs = utils.list_images(sub_dir)[:count]
    jpegs = []
    for p in pngs:
        jpegs.append(p[:-4] + '.jpg')
        Image.open(p).save(jpegs[-1], quality=95)
    pil = lambda p: utils.image_to_uint8(utils.open_image(p))  # noqa: E731
    for name, paths in (('PNG', pngs), ('JPEG q95', jpegs)):
        pil_ms, tv_ms = decode_ms(paths, [pil, utils.read_uint8])
        print(f'decode 480x480 {name:8s}: PIL {pil_ms:5.2f} ms, torchvision {tv_ms:5.2f} ms '
              f'(same pixels: tests/test_data.py)')
    for p in jpegs:
        os.remove(p)


def train_images_per_second(flag: float):
    """The training speed to feed: the flag, else benchmarks/bench_train.py's measurement."""
    if flag:
        return flag, '--train_ips'
    try:
        import bench_train
    except Exception as e:  # absent, or train.py not importable here
        return None, f'benchmarks/bench_train.py not usable ({type(e).__name__}: {e})'
    measure = getattr(bench_train, 'train_images_per_second', None)
    if measure is None:
        return None, 'benchmarks/bench_train.py has no train_images_per_second()'
    return measure(), 'benchmarks/bench_train.py'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=4, help='DIV2K-sized images to make')
    parser.add_argument('--seconds', type=float, default=6.0, help='time per measurement')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--compress_level', type=int, default=6,
                        help="sub-images' PNG level (utils.py --compress_level)")
    parser.add_argument('--train_ips', type=float, default=None,
                        help='training images/s to feed (default: from bench_train.py, if any)')
    args = parser.parse_args(argv)
    # One intra-op thread, as in a DataLoader worker: per-sample tensors are tiny, and on a
    # busy machine threads waiting for each other made the single-process figures swing 6x.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        hr_dir, sub_dir = os.path.join(tmp, 'hr'), os.path.join(tmp, 'sub')
        os.makedirs(hr_dir)
        paths = make_images(hr_dir, args.images)
        size_mb = np.mean([os.path.getsize(p) for p in paths]) / 2 ** 20
        totals = utils.prepare_subimages(hr_dir, sub_dir, compress_level=args.compress_level,
                                         progress=False)
        print(f'{args.images} images {DIV2K_SIZE[0]}x{DIV2K_SIZE[1]} ({size_mb:.1f} MB PNG each) '
              f'-> {totals["written"]} sub-images 480x480 (PNG level {args.compress_level}); '
              f'batch {args.batch_size}, x4, 96px crops')

        compare_decoders(sub_dir)
        dataset = utils.TrainSet(sub_dir, upscale_factor=4, crop_size=96)
        baseline, ours = patches_per_second(
            [random_loader(BaselineTrainSet(paths), args.batch_size, 0),
             random_loader(dataset, args.batch_size, 0)], args.seconds)
        # alone: a worker keeps prefetching while it is not being timed
        one_worker, = patches_per_second([random_loader(dataset, args.batch_size, 1)],
                                         args.seconds, rounds=1)
    print(f'(a) baseline, PIL decode of the 2K PNG per sample: {baseline:8.1f} patches/s')
    print(f'(b) TrainSet on 480px sub-images:                  {ours:8.1f} patches/s')
    print(f'ratio (b)/(a): {ours / baseline:.1f}x   (single process, workers=0)')
    print(f'one DataLoader worker delivers {one_worker:.1f} patches/s')
    ips, source = train_images_per_second(args.train_ips)
    if ips:
        print(f'to feed {ips:.0f} training images/s ({source}): '
              f'{math.ceil(ips / one_worker)} workers')
    else:
        print('workers needed: pass --train_ips N (training images/s, as train.py or '
              'benchmarks/bench_train.py --cuda reports it)')
        print(f'  ({source})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
