"""scripts/download_data.py against a real HTTP server on 127.0.0.1 serving archives and images
made here: fresh download, resume after a cut connection, corrupt files and archives, re-runs
that do nothing, an unreachable server, and the README's path from download to evaluate.py."""
import hashlib
import importlib.util
import io
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'download_data.py'
_spec = importlib.util.spec_from_file_location('download_data', SCRIPT)
download_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(download_data)

SET5 = ['baby.png', 'bird.png', 'butterfly.png', 'head.png', 'woman.png']


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """GET with `Range: bytes=N-`; a path in server.cuts gets its next transfer dropped after
    that many bytes of the file (the client saw the full Content-Length)."""

    def do_GET(self):
        srv = self.server
        byte_range = self.headers.get('Range')
        srv.requests.append((self.path, byte_range))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(byte_range.removeprefix('bytes=').rstrip('-')) if byte_range else 0
        if start >= len(body):
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(body)}')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(206 if byte_range else 200)
        if byte_range:
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        cut = srv.cuts.pop(self.path, None)
        self.wfile.write(body[start:cut])
        if cut is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.files, httpd.cuts, httpd.requests = {}, {}, []
    httpd.url = f'http://127.0.0.1:{httpd.server_port}'
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def one_error_line(err: str) -> str:
    """The run's error message, checked to be a single line and not a traceback."""
    assert 'Traceback' not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith('error: ')
    return lines[0]


def png(width: int, height: int, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, 'PNG')
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def benchmarks(server, tmp_path, monkeypatch):
    """Small PNGs in SelfExSR's layout on the server (Set5 and Set14 complete, two images each of
    BSD100 and Urban100) and a checksum list for them in place of the shipped one."""
    counts = {'Set5': 5, 'Set14': 14, 'BSD100': 2, 'Urban100': 2}
    served, lines = {}, []
    for set_name, count in counts.items():
        for i in range(1, count + 1):
            remote = f'data/{set_name}/image_SRF_4/img_{i:03d}_SRF_4_HR.png'
            served[remote] = png(48, 40, seed=len(served))
            lines.append(f'{hashlib.sha256(served[remote]).hexdigest()}  {remote}')
    sums = tmp_path / 'sums.txt'
    sums.write_text('# test list\n' + '\n'.join(lines) + '\n')
    monkeypatch.setattr(download_data, 'SUMS', sums)
    for remote, body in served.items():
        server.files[f'/selfexsr/{remote}'] = body
    return served


def get_benchmarks(server, data) -> int:
    return download_data.main(['benchmarks', '--data_dir', str(data),
                               '--selfexsr_url', f'{server.url}/selfexsr'])


def test_shipped_list_covers_the_four_sets_with_their_usual_names():
    sets = download_data.read_sums(download_data.SUMS)
    assert {name: len(files) for name, files in sets.items()} == \
        {'Set5': 5, 'Set14': 14, 'BSD100': 100, 'Urban100': 100}
    for name, files in sets.items():
        assert [remote for remote, _, _ in files] == \
            [f'data/{name}/image_SRF_4/img_{i:03d}_SRF_4_HR.png' for i in range(1, len(files) + 1)]
        assert all(len(digest) == 64 and int(digest, 16) >= 0 for _, _, digest in files)
    assert [local for _, local, _ in sets['Set5']] == SET5
    set14 = [local for _, local, _ in sets['Set14']]
    assert (set14[0], set14[2], set14[-1], len(set(set14))) == ('baboon.png', 'bridge.png',
                                                               'zebra.png', 14)
    assert [local for _, local, _ in sets['BSD100'][:2]] == ['img_001.png', 'img_002.png']


def test_benchmarks_fresh_download_then_rerun_does_nothing(server, benchmarks, tmp_path, capsys):
    data = tmp_path / 'data'
    assert get_benchmarks(server, data) == 0
    assert sorted(p.name for p in (data / 'Set5').iterdir()) == SET5
    assert (data / 'Set5' / 'bird.png').read_bytes() == \
        benchmarks['data/Set5/image_SRF_4/img_002_SRF_4_HR.png']
    assert (data / 'Set14' / 'zebra.png').read_bytes() == \
        benchmarks['data/Set14/image_SRF_4/img_014_SRF_4_HR.png']
    assert (data / 'Urban100' / 'img_002.png').read_bytes() == \
        benchmarks['data/Urban100/image_SRF_4/img_002_SRF_4_HR.png']
    assert len(list(data.rglob('*.png'))) == 23 and not list(data.rglob('*.part'))
    assert len(server.requests) == 23

    server.requests.clear()
    capsys.readouterr()
    assert get_benchmarks(server, data) == 0
    assert server.requests == []
    assert capsys.readouterr().out.count('already verified') == 4

    # a file damaged on disk is fetched again, and only that one
    (data / 'Set5' / 'bird.png').write_bytes(b'not the image')
    assert get_benchmarks(server, data) == 0
    assert server.requests == [('/selfexsr/data/Set5/image_SRF_4/img_002_SRF_4_HR.png', None)]
    assert (data / 'Set5' / 'bird.png').read_bytes() == \
        benchmarks['data/Set5/image_SRF_4/img_002_SRF_4_HR.png']


def test_benchmark_checksum_mismatch_is_one_line_and_keeps_nothing(server, benchmarks, tmp_path,
                                                                   capsys):
    data = tmp_path / 'data'
    path = '/selfexsr/data/Set14/image_SRF_4/img_003_SRF_4_HR.png'
    good = server.files[path]
    server.files[path] = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    assert get_benchmarks(server, data) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(data / 'Set14' / 'bridge.png') in line and 'checksum mismatch' in line
    assert not (data / 'Set14' / 'bridge.png').exists() and not list(data.rglob('*.part'))
    assert sorted(p.name for p in (data / 'Set5').iterdir()) == SET5  # verified before, kept

    server.files[path] = good
    server.requests.clear()
    assert get_benchmarks(server, data) == 0
    assert (data / 'Set14' / 'bridge.png').read_bytes() == good
    assert not any('/Set5/' in p for p, _ in server.requests)


def test_failed_download_leaves_no_empty_folder(server, benchmarks, tmp_path, capsys):
    del server.files['/selfexsr/data/Set5/image_SRF_4/img_001_SRF_4_HR.png']  # 404
    data = tmp_path / 'new' / 'data'
    assert get_benchmarks(server, data) == 1
    assert 'HTTP 404' in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / 'new').exists()  # the folders this run made, gone again
    kept = tmp_path / 'kept'
    kept.mkdir()
    assert get_benchmarks(server, kept) == 1
    assert kept.is_dir() and not list(kept.iterdir())  # no empty Set5/, the user's folder kept


def test_readme_path_download_then_evaluate(server, benchmarks, tmp_path):
    # README: `python scripts/download_data.py benchmarks`, then, from the repository's root,
    # `python evaluate.py --data data/Set5 data/Set14 ...` with the shipped weights.
    assert get_benchmarks(server, tmp_path / 'data') == 0
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'evaluate.py'), '--data', 'data/Set5', 'data/Set14',
         '--upscale_factor', '4', '--weight', f'SRResNet={ROOT}/weights/srresnet_x4.pth',
         '--weight', f'SRGAN-MSE={ROOT}/weights/srgan_x4.pth'],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith('| Set')]
    assert len(rows) == 6, proc.stdout
    assert sum(' 5 |' in r for r in rows) == 3 and sum(' 14 |' in r for r in rows) == 3


# ---------------------------------------------------------------------------------------------
# DIV2K
# ---------------------------------------------------------------------------------------------

TWO_K = png(2040, 4, seed=0)  # DIV2K's real images are 2040 px wide or tall


def div2k_zip(name: str, numbers, replace=None) -> bytes:
    """The archive as DIV2K publishes it: `name/NNNN.png`; `replace` maps a number to other
    bytes, or to None to leave that image out. Members are stored, so a flipped byte is caught
    by the CRC alone."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as zf:
        zf.writestr(f'{name}/', b'')
        for n in numbers:
            body = (replace or {}).get(n, TWO_K)
            if body is not None:
                zf.writestr(f'{name}/{n:04d}.png', body)
    return buf.getvalue()


def flip_member_byte(archive: bytes, member: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(member)
    header = info.header_offset
    name_len, extra_len = (int.from_bytes(archive[header + k:header + k + 2], 'little')
                           for k in (26, 28))
    at = header + 30 + name_len + extra_len + info.compress_size // 2
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1:]


def get_div2k(server, data, *extra) -> int:
    return download_data.main(['div2k', '--data_dir', str(data),
                               '--div2k_url', f'{server.url}/div2k', *extra])


def test_div2k_with_valid_then_rerun_does_nothing(server, tmp_path, capsys):
    server.files['/div2k/DIV2K_train_HR.zip'] = div2k_zip('DIV2K_train_HR', range(1, 801))
    server.files['/div2k/DIV2K_valid_HR.zip'] = div2k_zip('DIV2K_valid_HR', range(801, 901))
    data = tmp_path / 'data'
    assert get_div2k(server, data, '--valid') == 0
    train = sorted((data / 'DIV2K_train_HR').iterdir())
    valid = sorted((data / 'DIV2K_valid_HR').iterdir())
    assert [p.name for p in train] == [f'{n:04d}.png' for n in range(1, 801)]
    assert [p.name for p in valid] == [f'{n:04d}.png' for n in range(801, 901)]
    assert train[-1].read_bytes() == TWO_K
    assert sorted(p.name for p in data.iterdir()) == ['DIV2K_train_HR', 'DIV2K_valid_HR']

    server.requests.clear()
    capsys.readouterr()
    assert get_div2k(server, data, '--valid') == 0
    assert server.requests == []
    assert capsys.readouterr().out.count('already verified') == 2


@pytest.mark.parametrize('retries', [3, 0])
def test_div2k_resumes_after_a_connection_cut_mid_file(server, tmp_path, capsys, retries):
    archive = div2k_zip('DIV2K_train_HR', range(1, 801))
    url_path = '/div2k/DIV2K_train_HR.zip'
    server.files[url_path] = archive
    cut = len(archive) * 2 // 5
    server.cuts[url_path] = cut
    data = tmp_path / 'data'
    if retries == 0:  # the run gives up; the next run continues from the bytes on disk
        assert get_div2k(server, data, '--retries', '0') == 1
        line = one_error_line(capsys.readouterr().err)
        assert f'{server.url}{url_path}' in line and 'run the same command again' in line
        assert (data / 'DIV2K_train_HR.zip.part').stat().st_size == cut
        assert sorted(p.name for p in data.iterdir()) == ['DIV2K_train_HR.zip.part']
    assert get_div2k(server, data) == 0
    assert server.requests == [(url_path, None), (url_path, f'bytes={cut}-')]
    assert len(list((data / 'DIV2K_train_HR').iterdir())) == 800
    assert sorted(p.name for p in data.iterdir()) == ['DIV2K_train_HR']


@pytest.mark.parametrize('damage, expected', [
    ('crc', ['DIV2K_train_HR/0400.png', 'damaged']),
    ('missing', ['799 PNG images, expected 800', 'missing DIV2K_train_HR/0417.png']),
    ('not_2k', ['0005.png is 2000x4', 'not 2K']),
    ('truncated', ['not a complete zip archive']),
])
def test_damaged_div2k_archive_is_one_line_and_leaves_nothing(server, tmp_path, capsys, damage,
                                                              expected):
    numbers = range(1, 801)
    archive = {
        'crc': lambda: flip_member_byte(div2k_zip('DIV2K_train_HR', numbers),
                                        'DIV2K_train_HR/0400.png'),
        'missing': lambda: div2k_zip('DIV2K_train_HR', numbers, {417: None}),
        'not_2k': lambda: div2k_zip('DIV2K_train_HR', numbers, {5: png(2000, 4, seed=1)}),
        'truncated': lambda: div2k_zip('DIV2K_train_HR', numbers)[:50_000],
    }[damage]()
    server.files['/div2k/DIV2K_train_HR.zip'] = archive
    data = tmp_path / 'data'
    assert get_div2k(server, data) == 1
    line = one_error_line(capsys.readouterr().err)
    assert 'DIV2K_train_HR.zip' in line and all(e in line for e in expected), line
    assert not data.exists()  # no images, no half-unpacked folder, no archive, no empty folder


# ---------------------------------------------------------------------------------------------
# No server
# ---------------------------------------------------------------------------------------------

def test_unreachable_server_is_one_line_naming_the_url(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    url = f'http://127.0.0.1:{port}/selfexsr'
    proc = subprocess.run([sys.executable, str(SCRIPT), 'benchmarks', '--data_dir',
                           str(tmp_path / 'data'), '--selfexsr_url', url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert line.startswith(f'error: cannot reach {url}/data/Set5/image_SRF_4/img_001_SRF_4_HR.png')


def test_missing_file_on_the_server_is_one_line(server, tmp_path, capsys):
    assert get_div2k(server, tmp_path / 'data') == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f'error: {server.url}/div2k/DIV2K_train_HR.zip: HTTP 404 Not Found'
