"""test_video.py: frame count, size, frame rate and timestamps; audio copied and in sync;
every frame equal to test_image.py's result on that frame (up to the codec's own error, which
the tests measure); --compare, --frames, bad input, an interrupted run. Tiny videos made with
PyAV, a tiny generator (2 blocks)."""
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

import test_image
import test_video
import utils
from conftest import natural, sane_generator

SCALE = 4
W, H = 32, 24
N = 6
RATE = Fraction(30000, 1001)  # NTSC: a frame rate that is not a whole number
AUDIO_RATE = 48000
AAC_FRAME = Fraction(1024, AUDIO_RATE)  # one AAC packet: how finely audio can be cut


def make_video(path, n: int = N, audio: bool = True) -> None:
    """n frames of W x H cut from a photo, moving 3 px down and 2 px right per frame (so every
    frame differs), lossless H.264; with `audio`, a 440 Hz AAC tone exactly as long."""
    c = av.open(str(path), 'w')
    v = c.add_stream('libx264', rate=RATE)
    v.width, v.height, v.pix_fmt = W, H, 'yuv444p'
    v.options = {'crf': '0'}
    if audio:  # every stream must exist before the first packet is written
        a = c.add_stream('aac', rate=AUDIO_RATE)
        a.layout = 'mono'
    photo = natural(H + 3 * n, W + 2 * n)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(
            photo[3 * i:3 * i + H, 2 * i:2 * i + W]), format='rgb24')
        frame.pts = i
        c.mux(v.encode(frame))
    c.mux(v.encode())
    if audio:
        samples = round(n / RATE * AUDIO_RATE)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / AUDIO_RATE))
        for s in range(0, samples, 1024):
            chunk = tone[None, s:s + 1024].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format='fltp', layout='mono')
            frame.sample_rate, frame.pts = AUDIO_RATE, s
            c.mux(a.encode(frame))
        c.mux(a.encode())
    c.close()


def decode(path) -> list:
    """The video's frames as HxWx3 uint8 RGB, in display order."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]


def video_info(path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {'size': (v.codec_context.width, v.codec_context.height),
                'rate': v.average_rate, 'time_base': v.time_base,
                'pts': sorted(f.pts for f in c.decode(v))}
    with av.open(str(path)) as c:
        info['audio'] = [(s.codec_context.name, s.rate) for s in c.streams.audio]
        info['audio_packets'] = [(p.pts, bytes(p)) for p in c.demux(audio=0) if p.size] \
            if c.streams.audio else []
        info['audio_seconds'] = [s.duration * s.time_base for s in c.streams.audio]
        info['video_seconds'] = c.streams.video[0].duration * c.streams.video[0].time_base
    return info


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The tiny generator's weights, a clip with audio, one without, and test_image.py's
    result on every decoded frame of the clip (the reference for the video's frames)."""
    folder = tmp_path_factory.mktemp('video')
    weight = folder / 'tiny_x4.pth'
    utils.save_weights(sane_generator(SCALE, num_blocks=2), str(weight))
    clip, silent = folder / 'clip.mp4', folder / 'silent.mp4'
    make_video(clip)
    make_video(silent, audio=False)
    expected = []
    for i, frame in enumerate(decode(clip)):
        png = folder / f'frame{i}.png'
        Image.fromarray(frame).save(png)
        assert test_image.main(['--image', str(png), '--weight', str(weight),
                                '--out_dir', str(folder / 'ti')]) == 0
        with Image.open(folder / 'ti' / f'frame{i}' / f'sr_frame{i}.png') as img:
            expected.append(np.asarray(img.convert('RGB')))
    return {'weight': weight, 'clip': clip, 'silent': silent, 'expected': expected,
            'frames': decode(clip)}


def run(files, tmp_path, capsys, *extra, video=None) -> tuple:
    """test_video.main in-process: (exit code, stdout, stderr)."""
    rc = test_video.main(['--video', str(video or files['clip']), '--weight',
                          str(files['weight']), '--out_dir', str(tmp_path)]
                         + [str(a) for a in extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def codec_roundtrip(frames: list, tmp_path, crf: int, pix_fmt: str, source) -> list:
    """`frames` through test_video's own encoder settings and back: what the codec alone
    does to them."""
    src = test_video.open_video(str(source))
    try:
        path = str(tmp_path / f'roundtrip_{crf}_{pix_fmt}.mp4')
        writer = test_video.VideoWriter(path, frames[0].shape[1], frames[0].shape[0], src,
                                        crf, pix_fmt, audio=False)
        step = round(1 / (RATE * src.video.time_base))
        for i, frame in enumerate(frames):
            writer.write_frame(frame, i * step, src.video.time_base)
        writer.close()
    finally:
        src.container.close()
    return decode(path)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# ---------------------------------------------------------------------------------------------
# What comes out
# ---------------------------------------------------------------------------------------------

def test_frames_size_rate_timestamps_and_audio(files, tmp_path, capsys):
    rc, out, err = run(files, tmp_path, capsys)
    assert rc == 0, err
    assert '6 frames' in out and '1 audio stream(s) copied' in out
    src, sr = video_info(files['clip']), video_info(tmp_path / 'sr_clip.mp4')
    assert sr['size'] == (W * SCALE, H * SCALE)
    assert len(sr['pts']) == N
    assert sr['rate'] == src['rate'] == RATE
    assert sr['time_base'] == src['time_base']
    assert sr['pts'] == src['pts']  # each frame shown when the source shows it
    # the audio: the same codec, the same packets byte for byte, as long as the video
    assert sr['audio'] == src['audio'] == [('aac', AUDIO_RATE)]
    assert sr['audio_packets'] == src['audio_packets']
    assert abs(sr['audio_seconds'][0] - sr['video_seconds']) <= AAC_FRAME
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sr_clip.mp4']  # no temporaries


def test_frames_match_test_image_within_codec_error(files, tmp_path, capsys):
    """Lossless H.264 (crf 0, 4:4:4): the only codec error left is RGB -> 8-bit YUV -> RGB
    rounding, measured here by sending test_image.py's own results through the encoder."""
    rc, _, err = run(files, tmp_path, capsys, '--crf', 0, '--pix_fmt', 'yuv444p')
    assert rc == 0, err
    got, expected = decode(tmp_path / 'sr_clip.mp4'), files['expected']
    assert len(got) == len(expected) == N
    roundtrip = codec_roundtrip(expected, tmp_path, 0, 'yuv444p', files['clip'])
    codec = max(max_diff(r, e) for r, e in zip(roundtrip, expected))
    # BT.709 limited range has 219 luma and 224 chroma steps for 256 RGB levels: a round trip
    # moves a value by 2 at most (measured: 2)
    assert codec <= 2
    for i, (g, e, r) in enumerate(zip(got, expected, roundtrip)):
        # + 1: test_image runs one frame, test_video a batch of them; the float results may
        # then round to 8 bits differently (by one level)
        assert max_diff(g, e) <= codec + 1, i
        assert mean_diff(g, e) <= mean_diff(r, e) + 0.01, i
        # and it is this frame, not a neighbour (they differ by a 3 px shift)
        for j in (i - 1, i + 1):
            if 0 <= j < N:
                assert mean_diff(g, expected[j]) > 10 * (mean_diff(r, e) + 0.01)


def test_default_quality_is_the_codecs_error_only(files, tmp_path, capsys):
    """The default encoding (crf 18, 4:2:0) loses more, but no more than the encoder loses on
    test_image.py's results themselves (PSNR within 0.1 dB)."""
    rc, _, err = run(files, tmp_path, capsys)
    assert rc == 0, err
    got, expected = decode(tmp_path / 'sr_clip.mp4'), files['expected']
    roundtrip = codec_roundtrip(expected, tmp_path, 18, 'yuv420p', files['clip'])
    for g, e, r in zip(got, expected, roundtrip):
        codec_psnr = utils.psnr(r, e, y_channel=False)
        assert codec_psnr > 25  # 4:2:0 halves the colour resolution of a busy 128x96 picture
        assert utils.psnr(g, e, y_channel=False) >= codec_psnr - 0.1


def test_compare_is_bicubic_beside_sr(files, tmp_path, capsys):
    rc, out, err = run(files, tmp_path, capsys, '--compare', '--crf', 0, '--pix_fmt', 'yuv444p')
    assert rc == 0, err
    cmp_info = video_info(tmp_path / 'compare_clip.mp4')
    assert cmp_info['size'] == (2 * W * SCALE, H * SCALE)
    assert cmp_info['rate'] == RATE and cmp_info['audio'] == []
    sr, side = decode(tmp_path / 'sr_clip.mp4'), decode(tmp_path / 'compare_clip.mp4')
    assert len(side) == N
    labels = test_video.compare_labels(W * SCALE, H * SCALE)
    assert [left for left, _, _ in labels] == [labels[0][0], W * SCALE + labels[0][0]]
    for frame, s, c in zip(files['frames'], sr, side):
        lr = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
        expected = np.concatenate([utils.to_uint8(utils.imresize(lr, SCALE)), s], axis=1)
        caption = np.zeros(c.shape[:2], bool)
        for left, top, patch in labels:  # white text on black, top left of each half
            ph, pw = patch.shape[:2]
            caption[top:top + ph, left:left + pw] = True
            assert max_diff(c[top:top + ph, left:left + pw], patch) <= 2
        # elsewhere: bicubic | SR themselves (lossless 4:4:4, the codec's rounding only)
        assert np.abs(c.astype(int) - expected.astype(int))[~caption].max() <= 2
        keep = ~caption[:, W * SCALE:]
        assert np.array_equal(c[:, W * SCALE:][keep], s[keep])  # SR: the same pixels exactly
    # the captions: "Bicubic" on the left half, the shorter "SR" on the right
    (_, _, bicubic_patch), (_, _, sr_patch) = labels
    assert bicubic_patch.shape[1] > sr_patch.shape[1] and bicubic_patch.shape[1] < W * SCALE
    assert bicubic_patch.max() >= 200 and bicubic_patch.min() == 0  # antialiased white text


def test_a_part_of_the_video(files, tmp_path, capsys):
    rc, out, err = run(files, tmp_path, capsys, '--frames', '2:5', '--crf', 0,
                       '--pix_fmt', 'yuv444p')
    assert rc == 0, err
    src, part = video_info(files['clip']), video_info(tmp_path / 'sr_clip.mp4')
    got = decode(tmp_path / 'sr_clip.mp4')
    assert len(got) == 3
    for g, e in zip(got, files['expected'][2:5]):
        assert max_diff(g, e) <= 3  # the codec's 2, plus 1 for batching (as above)
    # the part starts at 0, frames keep their spacing
    assert part['pts'] == [p - src['pts'][2] for p in src['pts'][2:5]]
    assert part['rate'] == RATE
    # its audio: a run of the source's packets, as long as the part to within a packet
    payloads = [b for _, b in src['audio_packets']]
    cut = [b for _, b in part['audio_packets']]
    start = payloads.index(cut[0])
    assert cut == payloads[start:start + len(cut)]
    assert abs(part['audio_seconds'][0] - part['video_seconds']) <= AAC_FRAME
    # and in sync: the first packet kept is the first that starts at or after frame 2
    first_t = part['audio_packets'][0][0] * Fraction(1, AUDIO_RATE)
    assert 0 <= first_t < AAC_FRAME + Fraction(1, 1000)


@pytest.mark.parametrize('spec, frames', [(':2', 2), ('4:', 2), ('0:100', N)])
def test_open_ended_parts(files, tmp_path, capsys, spec, frames):
    rc, _, err = run(files, tmp_path, capsys, '--frames', spec)
    assert rc == 0, err
    info = video_info(tmp_path / 'sr_clip.mp4')
    assert len(info['pts']) == frames and info['pts'][0] == 0
    assert abs(info['audio_seconds'][0] - info['video_seconds']) <= AAC_FRAME


def test_video_without_audio(files, tmp_path, capsys):
    rc, out, err = run(files, tmp_path, capsys, video=files['silent'])
    assert rc == 0, err
    assert 'no audio' in out
    info = video_info(tmp_path / 'sr_silent.mp4')
    assert info['audio'] == [] and len(info['pts']) == N


def test_frames_per_pass_is_bounded():
    cpu = torch.device('cpu')
    assert utils.max_tile(4, cpu) == 272
    assert utils.frames_per_pass(24, 32, 4, cpu, tile=0) == utils.MAX_BATCH
    assert utils.frames_per_pass(480, 854, 4, cpu, tile=250) == 1
    assert utils.frames_per_pass(100, 100, 4, cpu, tile=0) == 7  # 272^2 // 100^2


# ---------------------------------------------------------------------------------------------
# Bad input, interruption
# ---------------------------------------------------------------------------------------------

def unknown_codec_avi(path) -> None:
    """An AVI whose video codec tag FFmpeg does not know."""
    c = av.open(str(path), 'w')
    v = c.add_stream('mpeg4', rate=25)
    v.width, v.height, v.pix_fmt = W, H, 'yuv420p'
    for i in range(2):
        frame = av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format='rgb24')
        frame.pts = i
        c.mux(v.encode(frame))
    c.mux(v.encode())
    c.close()
    data = path.read_bytes()
    assert data.count(b'FMP4') == 2  # the stream header and the bitmap header
    path.write_bytes(data.replace(b'FMP4', b'QQQQ'))


def audio_only(path) -> None:
    c = av.open(str(path), 'w')
    a = c.add_stream('aac', rate=AUDIO_RATE)
    a.layout = 'mono'
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format='fltp',
                                       layout='mono')
    frame.sample_rate, frame.pts = AUDIO_RATE, 0
    c.mux(a.encode(frame))
    c.mux(a.encode())
    c.close()


@pytest.mark.parametrize('name, make, message', [
    ('notes.mp4', lambda p: p.write_text('not a video'), 'not a video FFmpeg can read'),
    ('sound.m4a', audio_only, 'no video stream'),
    ('odd.avi', unknown_codec_avi, 'unknown video codec'),
    ('still.png', lambda p: Image.new('RGB', (W, H)).save(p), 'an image, not a video'),
    ('missing.mp4', lambda p: None, 'file not found'),
])
def test_bad_input_is_one_line(files, tmp_path, capsys, name, make, message):
    path = tmp_path / 'in' / name
    path.parent.mkdir()
    make(path)
    out_dir = tmp_path / 'out'
    rc, _, err = run(files, out_dir, capsys, video=path)
    assert rc == (2 if name == 'missing.mp4' else 1)  # a missing path: the command cannot run
    assert err.count('\n') == 1 and err.startswith(f'error: {path}: {message}'), err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_unwritable_output_is_one_line(files, tmp_path, capsys):
    blocker = tmp_path / 'results'
    blocker.write_text('a file where the output folder should be')
    rc, _, err = run(files, blocker, capsys)
    assert rc == 2  # checked before the model is built: the command cannot run as given
    assert err == f'error: --out_dir {blocker}: is a file, not a folder\n', err
    assert blocker.read_text().startswith('a file')


def test_bad_frames_flag(files, tmp_path, capsys):
    for spec in ('3', '5:2', 'a:b', '-1:4'):
        rc, _, err = run(files, tmp_path, capsys, f'--frames={spec}')
        assert rc == 2 and err.count('\n') == 1 and '--frames' in err, (spec, err)
    rc, _, err = run(files, tmp_path, capsys, '--frames', '7:')
    assert rc == 1 and 'no frames to process' in err and err.count('\n') == 1
    assert not any(tmp_path.iterdir())


def test_interrupted_run_leaves_nothing(files, tmp_path, capsys, monkeypatch):
    """A Ctrl-C in the middle (after the first batch was encoded): no file under the final
    names, no temporary file left behind."""
    long_clip = tmp_path / 'long.mp4'
    make_video(long_clip, n=utils.MAX_BATCH + 4)
    real, calls = test_video.super_resolve_frames, []

    def interrupt_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(test_video, 'super_resolve_frames', interrupt_second_batch)
    out_dir = tmp_path / 'out'
    rc, _, err = run(files, out_dir, capsys, '--compare', video=long_clip)
    assert rc == 130 and len(calls) == 2
    assert 'interrupted' in err and err.count('\n') == 1
    assert list(out_dir.iterdir()) == []
