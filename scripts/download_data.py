#!/usr/bin/env python3
"""Download, verify and unpack the data sets this project uses, into data/.

    python scripts/download_data.py benchmarks        # data/Set5, Set14, BSD100, Urban100 (x4 HR)
    python scripts/download_data.py div2k [--valid]   # data/DIV2K_train_HR [+ DIV2K_valid_HR]
    python scripts/download_data.py all               # all of the above

The benchmark images come from github.com/jbhuang0604/SelfExSR at a fixed commit and are checked
against the SHA256 list shipped beside this script (benchmarks_sha256.txt). DIV2K publishes no
checksum: its archives are checked by the CRC of every member, the number of images and their
size (2040 pixels on one side). A download cut off is resumed (HTTP Range), in the same run and
in the next one; a file only gets its final name once complete and verified (NAME.part, then a
rename), an archive is unpacked into a hidden folder that is renamed into place once checked,
and files that already verify are not fetched again. --selfexsr_url and --div2k_url point the
script at a mirror with the same layout.
"""
import argparse
import contextlib
import hashlib
import http.client
import os
import shutil
import struct
import sys
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Optional

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SUMS = Path(__file__).resolve().with_name('benchmarks_sha256.txt')
SELFEXSR_URL = ('https://raw.githubusercontent.com/jbhuang0604/SelfExSR/'
                '8f6dd8c1d20cb7e8792a7177b4f6fd677633f598')
DIV2K_URL = 'https://data.vision.ee.ethz.ch/cvl/DIV2K'
BENCHMARKS = ('Set5', 'Set14', 'BSD100', 'Urban100')
# SelfExSR numbers Set5 and Set14 in the alphabetical order of the names everyone uses. BSD100
# and Urban100 keep SelfExSR's numbers (img_001.png, ...): Urban100 has no other names, and the
# SelfExSR repository does not say which BSDS300 image each of its BSD100 numbers is.
NAMES = {
    'Set5': ('baby', 'bird', 'butterfly', 'head', 'woman'),
    'Set14': ('baboon', 'barbara', 'bridge', 'coastguard', 'comic', 'face', 'flowers', 'foreman',
              'lenna', 'man', 'monarch', 'pepper', 'ppt3', 'zebra'),
}
# split -> (archive and folder name, image numbers: 0001.png ... 0800.png in the training set)
DIV2K = {'train': ('DIV2K_train_HR', range(1, 801)), 'valid': ('DIV2K_valid_HR', range(801, 901))}
DIV2K_SIDE = 2040  # "2K": every DIV2K HR image has 2040 pixels on at least one axis
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
CHUNK = 1 << 16
TIMEOUT_S = 60
# What a transfer cut off mid-file raises; each retry resumes from the bytes already on disk.
CUT_OFF = (http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(Exception):
    """A failure reported on one line; nothing incomplete was left under a final name."""


def progress(**kwargs) -> tqdm:
    """A byte-counting bar (size and speed); shown on a terminal only, so logs stay readable."""
    return tqdm(unit='B', unit_scale=True, unit_divisor=1024, disable=None, **kwargs)


def fetch(url: str, part: Path, retries: int, bar: Optional[tqdm] = None) -> None:
    """Download `url` into `part`, continuing from the bytes `part` already holds (HTTP Range).
    A transfer cut off mid-file is resumed up to `retries` times in this run; after that `part`
    stays for the next run to continue. Progress goes to `bar`, or to a bar of this file's own."""
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, bar)
            return
        except CUT_OFF as e:
            held = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f'{url}: connection lost after {held} bytes '
                                    f'({type(e).__name__}); run the same command again to '
                                    'resume') from None
            tqdm.write(f'{url}: connection lost after {held} bytes, resuming', file=sys.stderr)
            time.sleep(min(2 ** attempt, 30))


def _fetch_once(url: str, part: Path, bar: Optional[tqdm]) -> None:
    held = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={held}-'} if held else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and held:  # nothing beyond what `part` holds: it is complete
            return
        raise DownloadError(f'{url}: HTTP {e.code} {e.reason}') from None
    except urllib.error.URLError as e:
        raise DownloadError(f'cannot reach {url}: {e.reason}') from None
    with response:
        if held and response.status != 206:  # the server ignored the Range: start afresh
            held = 0
        elif held and not response.headers.get('Content-Range', '').startswith(f'bytes {held}-'):
            raise DownloadError(f'{url}: the server resumed at another offset than {held} '
                                f'({response.headers.get("Content-Range")}); delete {part}')
        length = response.headers.get('Content-Length')
        total = held + int(length) if length else None
        own_bar = progress(desc=part.name.removesuffix('.part'), total=total,
                           initial=held) if bar is None else None
        shown = bar if bar is not None else own_bar  # (a tqdm without a total has no truth value)
        try:
            with open(part, 'ab' if held else 'wb') as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    shown.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
        finally:
            if own_bar is not None:
                own_bar.close()
    if total is not None and size < total:
        raise http.client.IncompleteRead(b'', total - size)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def read_sums(path: Path) -> dict:
    """{set: [(path in SelfExSR, local file name, sha256), ...]} from lines
    `<sha256>  data/<Set>/image_SRF_4/img_NNN_SRF_4_HR.png` ('#' starts a comment)."""
    sets = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        digest, remote = line.split()
        set_name, file_name = remote.split('/')[1], remote.split('/')[-1]
        number = int(file_name.split('_')[1])
        names = NAMES.get(set_name)
        local = f'{names[number - 1]}.png' if names else f'img_{number:03d}.png'
        sets.setdefault(set_name, []).append((remote, local, digest))
    return sets


def missing_folders(folder: Path) -> list:
    """`folder` and its parents that do not exist yet, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


@contextlib.contextmanager
def made_folder(folder: Path, created: list = None):
    """Create `folder` (and missing parents) for the block; when the block fails, the folders
    it created (or `created`, those made earlier by the caller) that are still empty go again,
    so a failed download leaves no empty folder."""
    if created is None:
        created = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in created:
            try:
                p.rmdir()  # only if empty: a .part file kept to resume keeps its folder
            except OSError:
                break
        raise


def get_benchmark_set(name: str, entries: list, folder: Path, base_url: str,
                      retries: int) -> None:
    """Fetch the files of one benchmark set that are not already in `folder` with the listed
    checksum; each one is checked before it gets its final name."""
    with made_folder(folder):
        _get_benchmark_set(name, entries, folder, base_url, retries)


def _get_benchmark_set(name: str, entries: list, folder: Path, base_url: str,
                       retries: int) -> None:
    todo = [(remote, local, digest) for remote, local, digest in entries
            if not ((folder / local).is_file() and sha256(folder / local) == digest)]
    if not todo:
        print(f'{name}: all {len(entries)} images already verified in {folder}, nothing to do')
        return
    with progress(desc=name) as bar:
        for i, (remote, local, digest) in enumerate(todo, 1):
            bar.set_postfix_str(f'{local} ({i}/{len(todo)})')
            dest = folder / local
            part = dest.with_name(dest.name + '.part')
            fetch(f'{base_url}/{remote}', part, retries, bar)
            got = sha256(part)
            if got != digest:
                part.unlink()
                raise DownloadError(f'{dest}: checksum mismatch (sha256 {got[:16]}..., listed '
                                    f'{digest[:16]}...) for {base_url}/{remote}; not kept')
            os.replace(part, dest)
    print(f'{name}: {len(todo)} downloaded, {len(entries) - len(todo)} already there; '
          f'all {len(entries)} verified in {folder}')


def png_size(path: Path) -> Optional[tuple]:
    """(width, height) from a PNG's IHDR chunk, or None when the file is not a PNG."""
    with open(path, 'rb') as f:
        head = f.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b'IHDR':
        return None
    return struct.unpack('>II', head[16:24])


def div2k_problem(folder: Path, numbers: range) -> Optional[str]:
    """What is wrong with a DIV2K folder, or None when every image is there and 2K-sized."""
    if not folder.is_dir():
        return 'not there yet'
    missing = [f'{n:04d}.png' for n in numbers if not (folder / f'{n:04d}.png').is_file()]
    if missing:
        return f'{len(missing)} of {len(numbers)} images missing (first: {missing[0]})'
    for n in numbers:
        size = png_size(folder / f'{n:04d}.png')
        if size is None:
            return f'{n:04d}.png is not a PNG image'
        if DIV2K_SIDE not in size:
            return f'{n:04d}.png is {size[0]}x{size[1]}, not 2K ({DIV2K_SIDE} pixels on one side)'
    return None


def replace_folder(new: Path, final: Path) -> None:
    """Put folder `new` in the place of `final` by renames, so `final` is never half there."""
    if not final.exists():
        os.replace(new, final)
        return
    old = final.with_name(f'.{final.name}.old')
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old)


def unpack_div2k(archive: Path, name: str, numbers: range, data_dir: Path) -> None:
    """Extract data_dir/name/NNNN.png from `archive`, all or nothing: into a hidden folder,
    checked there (CRC of every member, count, 2K size), then renamed into place."""
    expected = {f'{name}/{n:04d}.png': f'{n:04d}.png' for n in numbers}
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DownloadError(f'{archive}: not a complete zip archive ({e})') from None
    staging = data_dir / f'.{name}.partial'
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with zf:
            images = {m for m in zf.namelist() if m.lower().endswith('.png')}
            if images != set(expected):
                missing, extra = sorted(set(expected) - images), sorted(images - set(expected))
                raise DownloadError(
                    f'{archive}: {len(images)} PNG images, expected {len(expected)}'
                    + (f'; missing {missing[0]}' if missing else '')
                    + (f'; unexpected {extra[0]}' if extra else ''))
            for member, file_name in tqdm(expected.items(), desc=f'unpacking {name}',
                                          unit='img', disable=None):
                try:  # reading a member to its end checks its CRC
                    with zf.open(member) as src, open(staging / file_name, 'wb') as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                    raise DownloadError(f'{archive}: {member} is damaged ({e})') from None
        problem = div2k_problem(staging, numbers)
        if problem:
            raise DownloadError(f'{archive}: {problem}')
        replace_folder(staging, data_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def get_div2k(split: str, data_dir: Path, base_url: str, retries: int) -> None:
    name, numbers = DIV2K[split]
    folder = data_dir / name
    problem = div2k_problem(folder, numbers)
    if problem is None:
        print(f'{name}: all {len(numbers)} images already verified in {folder}, nothing to do')
        return
    if folder.exists():
        print(f'{folder}: {problem}; fetching it again')
    archive = data_dir / f'{name}.zip'
    if not archive.is_file():
        part = archive.with_name(archive.name + '.part')
        fetch(f'{base_url}/{name}.zip', part, retries)
        os.replace(part, archive)
    try:
        unpack_div2k(archive, name, numbers, data_dir)
    except DownloadError:
        archive.unlink()  # a damaged archive is fetched afresh by the next run
        raise
    archive.unlink()
    print(f'{name}: {len(numbers)} images verified in {folder} (the archive was removed)')


def parse_args(argv=None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--data_dir', type=Path, default=ROOT / 'data',
                        help="where the data sets go (default: this repository's data/)")
    common.add_argument('--retries', type=int, default=3,
                        help='times a cut-off download is resumed in this run (default 3)')
    selfexsr = argparse.ArgumentParser(add_help=False)
    selfexsr.add_argument('--selfexsr_url', default=SELFEXSR_URL,
                          help='base URL of the SelfExSR files (default: GitHub at the pinned '
                               'commit); the files are data/<Set>/image_SRF_4/*_HR.png under it')
    div2k = argparse.ArgumentParser(add_help=False)
    div2k.add_argument('--div2k_url', default=DIV2K_URL,
                       help=f'base URL of DIV2K_train_HR.zip and DIV2K_valid_HR.zip '
                            f'(default {DIV2K_URL})')

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    bench = sub.add_parser('benchmarks', parents=[common, selfexsr],
                           help='Set5, Set14, BSD100, Urban100: HR images for x4 evaluation')
    bench.add_argument('--sets', nargs='+', choices=BENCHMARKS, default=list(BENCHMARKS),
                       help='only these sets (default: all four)')
    train = sub.add_parser('div2k', parents=[common, div2k],
                           help='DIV2K: the 800 HR training images')
    train.add_argument('--valid', action='store_true', help='also the 100 validation images')
    sub.add_parser('all', parents=[common, selfexsr, div2k],
                   help='the benchmarks and DIV2K training and validation images')
    args = parser.parse_args(argv)
    if args.retries < 0:
        parser.error('--retries must be 0 or more')
    return args


# Exit statuses (README.md, "Conventions"; this script keeps them without importing utils and
# torch): 2 when the command cannot run as given, 1 when a download failed, 130 for Ctrl-C.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def main(argv=None) -> int:
    args = parse_args(argv)
    created = missing_folders(args.data_dir)
    try:  # the one input this command names: a folder it can create and write in
        args.data_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(args.data_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, 'folder not writable', str(args.data_dir))
    except OSError as e:
        print(f'error: --data_dir {e.filename or args.data_dir}: {e.strerror or e}',
              file=sys.stderr)
        return EXIT_USAGE
    try:
        with made_folder(args.data_dir, created):
            if args.command in ('benchmarks', 'all'):
                listed = read_sums(SUMS)
                for name in getattr(args, 'sets', BENCHMARKS):
                    get_benchmark_set(name, listed[name], args.data_dir / name,
                                      args.selfexsr_url.rstrip('/'), args.retries)
            if args.command in ('div2k', 'all'):
                splits = ['train', 'valid'] if args.command == 'all' or args.valid else ['train']
                for split in splits:
                    get_div2k(split, args.data_dir, args.div2k_url.rstrip('/'), args.retries)
    except DownloadError as e:  # a server, a transfer or a file that failed: the work failed
        print(f'error: {e}', file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # a full disk, a file that cannot be written
        print(f'error: {e.filename or args.data_dir}: {e.strerror or e}', file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print('error: interrupted; run the same command again to resume', file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == '__main__':
    sys.exit(main())
