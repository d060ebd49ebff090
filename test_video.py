"""Super-resolve a video with a trained SRResNet/SRGAN generator, keeping its audio.

    python test_video.py --video clip.mp4 --weight weights/srgan_x4.pth
    python test_video.py --video clip.mkv --frames 100:200 --compare

Writes {out_dir}/sr_{name}.mp4 (H.264) with the source's frame rate, time base and frame
timestamps, and every audio stream of the source copied packet for packet (not re-encoded).
--compare also writes {out_dir}/compare_{name}.mp4: bicubic (utils.imresize) | SR side by side,
captioned "Bicubic" and "SR" in their top-left corners, without audio.

--outscale S resizes the network's output (MATLAB bicubic) to S times the frame size; --ensemble
averages the network over the 8 flips and rotations of each frame (8x the time).

--frames A:B super-resolves frames A to B-1 (counted from 0 in display order; A: or :B leave
one end open). The part starts at time 0 in the output, and its audio is the source's audio
packets that start within the part's time span, shifted by the same amount, so picture and
sound stay in sync; the cut falls on packet boundaries, so the audio may start and end up to
one packet (about 21 ms for AAC at 48 kHz) inside the part.

Frames go through test_image.py's inference path (utils.inference_model, tiles, bf16 where
the hardware has it), several frames per forward pass when they fit the tile budget. Memory
is bounded by one such batch plus the encoder's look-ahead, whatever the length of the video.
The output is written under a temporary name in the same folder and renamed at the end, so an
interrupted run never leaves a half-written file under the final name.
"""
import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction

if __name__ == '__main__':  # Ctrl-C while torch loads: one line and 130, as run_main gives later
    signal.signal(signal.SIGINT, lambda *_: os._exit(
        print('error: interrupted', file=sys.stderr, flush=True) or 130))

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from utils import (PRECISION_NAMES, TILE_OVERLAP, Default, InferenceError, Interrupted, SRError,
                   UsageError, add_flags, atomic_write, check_input, check_output_dir,
                   frames_per_pass,
                   generator_from_flags, imresize, inference_model, inference_setup,
                   outscale_size, plan_tile, require, resolve, script, to_uint8)

try:
    import av
except ImportError:  # optional (requirements-dev.txt): main() says what to install
    av = None

# FFmpeg demuxers that read still images: av.open accepts a PNG as a one-frame "video".
IMAGE_DEMUXERS = ('image2', 'image2pipe')


class VideoError(SRError):
    """A video that cannot be read or an output that cannot be written; str() names the file."""


def ffmpeg_message(e: Exception) -> str:
    return getattr(e, 'strerror', None) or (str(e).strip().splitlines() or [''])[0]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

@dataclass
class Source:
    container: av.container.InputContainer
    video: av.video.stream.VideoStream
    audio: list
    rate: Fraction


def open_video(path: str) -> Source:
    """Open `path` and check it has a decodable video stream. Raises VideoError."""
    if not os.path.isfile(path):
        raise VideoError(f'{path}: file not found')
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise VideoError(f'{path}: not a video FFmpeg can read ({ffmpeg_message(e)})') from None
    try:
        if container.format.name in IMAGE_DEMUXERS or container.format.name.endswith('_pipe'):
            raise VideoError(f'{path}: an image, not a video (use test_image.py)')
        if not container.streams.video:
            raise VideoError(f'{path}: no video stream')
        video = container.streams.video[0]
        if video.codec_context is None:
            raise VideoError(f'{path}: unknown video codec (FFmpeg has no decoder for it)')
        rate = video.average_rate or video.guessed_rate or video.base_rate
        if not rate:
            raise VideoError(f'{path}: the video stream has no frame rate')
    except BaseException:
        container.close()
        raise
    return Source(container, video, list(container.streams.audio), Fraction(rate))


def demuxed(packets, result: dict):
    """The packets of `packets`, ending (instead of raising) at a read error, which is kept
    in result['decode_error']: a cut or damaged file gives the frames before the damage."""
    try:
        yield from packets
    except av.FFmpegError as e:
        result['decode_error'] = ffmpeg_message(e)


def decoded(packet: av.Packet, result: dict) -> list:
    """The frames of `packet`; [] at a decode error, kept in result['decode_error'] (the
    caller then stops: what decoded before the damage is the output)."""
    try:
        return packet.decode()
    except av.FFmpegError as e:
        result['decode_error'] = ffmpeg_message(e)
        return []


def shortfall(result: dict) -> str:
    """Why the output has fewer frames than the input part should have given, or ''."""
    declared, got = result.get('declared'), result['frames']
    if result.get('decode_error'):
        of = f' of the {declared} frames the container declares' if declared else ' frame(s)'
        return f"decoding stopped at an error ({result['decode_error']}) after {got}{of}"
    if declared and got < declared:
        return f'only {got} of the {declared} frames the container declares could be decoded'
    return ''


def frame_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 RGB, converted with the colour matrix the stream is tagged with (BT.601 if
    untagged); a frame whose size differs from the first one is scaled to it."""
    return frame.to_ndarray(format='rgb24', width=width, height=height)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

class VideoWriter:
    """One MP4 file: H.264 frames with the given timestamps, plus copied audio packets."""

    def __init__(self, path: str, width: int, height: int, source: Source, crf: int,
                 pix_fmt: str, audio: bool = True):
        self.container = av.open(path, 'w', format='mp4')
        self.pix_fmt = pix_fmt
        stream = self.container.add_stream('libx264', rate=source.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {'crf': str(crf)}
        # Frame timestamps are kept in the source's time base, so variable frame rates and
        # the source's exact timing survive.
        stream.time_base = source.video.time_base
        stream.codec_context.time_base = source.video.time_base
        # Players assume BT.709 for HD pictures, which an x4 output always is: convert with
        # that matrix and say so in the stream.
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
        cc.color_range = 1  # limited ("tv") range, what the conversion below produces
        self.video = stream
        self.audio = {a: self.container.add_stream_from_template(a)
                      for a in (source.audio if audio else [])}

    def write_frame(self, rgb: np.ndarray, pts: int, time_base: Fraction) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
        frame = frame.reformat(format=self.pix_fmt, dst_colorspace='ITU709')
        frame.pts, frame.time_base = pts, time_base
        self.container.mux(self.video.encode(frame))

    def write_audio(self, packet: av.Packet) -> None:
        packet.stream = self.audio[packet.stream]
        self.container.mux(packet)

    def close(self) -> None:
        self.container.mux(self.video.encode(None))  # the frames the encoder still holds
        self.container.close()


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------

def super_resolve_frames(model: torch.nn.Module, frames: list, scale: int, tile: int,
                         overlap: int, dtype=None, ensemble: bool = False) -> torch.Tensor:
    """HxWx3 uint8 frames -> (N, 3, H*scale, W*scale) float32 on the CPU, unclamped, through
    utils.super_resolve (as test_image.py runs one image); ensemble: utils.ensemble_resolve."""
    lr = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
    return resolve(model, lr, scale, tile, overlap, dtype, ensemble=ensemble)


def output_size(w: int, h: int, scale: int, outscale: float = None,
                pix_fmt: str = 'yuv420p') -> tuple:
    """(width, height) of the output video: the network's w*scale x h*scale, or with
    --outscale S round(S*w) x round(S*h), made even for yuv420p (H.264's 4:2:0 needs even
    sides)."""
    if outscale is None:
        return w * scale, h * scale
    oh, ow = outscale_size(h, w, outscale)
    if pix_fmt == 'yuv420p':
        ow, oh = max(2, ow - ow % 2), max(2, oh - oh % 2)
    return ow, oh


# ---------------------------------------------------------------------------------------------
# One video
# ---------------------------------------------------------------------------------------------

@dataclass
class Options:
    scale: int
    out_dir: str = 'results'
    tile: int = None            # None: pick from the frame size and device; 0: whole frame
    overlap: int = TILE_OVERLAP
    dtype: torch.dtype = None   # autocast dtype, None for fp32
    compare: bool = False
    start: int = 0              # --frames A:B, B None for the end
    stop: int = None
    crf: int = 18
    pix_fmt: str = 'yuv420p'
    ensemble: bool = False      # the 8-transform self-ensemble (utils.ensemble_resolve)
    outscale: float = None      # final scale (imresize after the network); None: the network's


@dataclass
class AudioGate:
    """Decides which audio packets belong to the part of the video being processed, while
    packets arrive interleaved with the video. Times are in seconds (Fractions)."""
    cut_start: bool             # --frames A:B with A > 0: drop audio before frame A
    open_end: bool              # no B: keep audio to the end
    start: Fraction = None      # time of frame A, once decoded: the part's time 0
    stop: Fraction = None       # time of frame B, once decoded
    seen: Fraction = None       # time of the latest frame decoded so far
    pending: list = field(default_factory=list)
    past_stop: set = field(default_factory=set)  # audio streams that have reached `stop`

    def offer(self, packet: av.Packet) -> list:
        """Packets now known to belong to the part (in arrival order); holds undecided ones."""
        if self.stop is not None and packet_time(packet) >= self.stop:
            self.past_stop.add(packet.stream.index)
        self.pending.append(packet)
        return self.settle()

    def settle(self, end: bool = False) -> list:
        """The pending packets that can be decided now (all of them at the end of input),
        shifted to the part's time line; drops those outside the part."""
        ready, keep = [], []
        for packet in self.pending:
            t = packet_time(packet)
            if self.stop is not None and t >= self.stop:
                continue
            if self.cut_start and self.start is None:  # before frame A: older than a frame?
                if not end and (self.seen is None or t >= self.seen):
                    keep.append(packet)
            elif self.cut_start and t < self.start:
                continue
            elif (self.open_end or end or self.stop is not None
                  or (self.seen is not None and t <= self.seen)):
                ready.append(shift(packet, self.start) if self.cut_start else packet)
            else:
                keep.append(packet)
        self.pending = keep
        return ready


def packet_time(packet: av.Packet) -> Fraction:
    ts = packet.pts if packet.pts is not None else packet.dts
    return ts * packet.time_base


def shift(packet: av.Packet, offset: Fraction) -> av.Packet:
    """Move a packet `offset` seconds earlier (offset rounded to its stream's time base)."""
    delta = round(offset / packet.time_base)
    if packet.pts is not None:
        packet.pts -= delta
    packet.dts -= delta
    return packet


COMPARE_LABELS = ('Bicubic', 'SR')  # the halves of a --compare frame, left to right


def compare_labels(width: int, height: int) -> list:
    """The captions of a --compare frame whose halves are width x height: [(left, top,
    patch)], each patch an RGB uint8 array (white text on black) for the top-left corner of
    its half, sized to the picture (text about 1/20 of its height, at least 10 px)."""
    size = max(10, height // 20)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap
        font = ImageFont.load_default()
    pad = max(2, size // 4)
    labels = []
    for i, text in enumerate(COMPARE_LABELS):
        box = ImageDraw.Draw(Image.new('RGB', (1, 1))).textbbox((0, 0), text, font=font)
        patch = Image.new('RGB', (min(box[2] + 2 * pad, width), min(box[3] + 2 * pad, height)))
        ImageDraw.Draw(patch).text((pad, pad), text, fill='white', font=font)
        labels.append((i * width + pad, pad, np.asarray(patch)))
    return labels


def output_paths(video: str, opts: Options) -> list:
    stem = os.path.splitext(os.path.basename(video))[0]
    names = ['sr_'] + (['compare_'] if opts.compare else [])
    return [os.path.join(opts.out_dir, f'{prefix}{stem}.mp4') for prefix in names]


def atomic_outputs(paths: list, write) -> None:
    """utils.atomic_write for several files: write(list of temporary paths), then each is
    renamed onto its final name; on any failure every temporary file is removed."""
    def nest(i: int, tmps: list) -> None:
        if i == len(paths):
            write(tmps)
        else:
            atomic_write(paths[i], lambda tmp: nest(i + 1, tmps + [tmp]))
    nest(0, [])


def process_video(path: str, model: torch.nn.Module, opts: Options) -> dict:
    """Super-resolve one video file and write its outputs; returns what to report.

    Raises VideoError (one line naming the file) for input that cannot be used or output
    that cannot be written."""
    source = open_video(path)
    s, v = opts.scale, source.video
    w, h = v.codec_context.width, v.codec_context.height
    if not w or not h:
        source.container.close()
        raise VideoError(f'{path}: the video stream has no picture size')
    device = next(model.parameters()).device
    tile = plan_tile(h, w, s, device, opts.dtype, opts.overlap, opts.tile)
    batch = frames_per_pass(h, w, s, device, opts.dtype, opts.overlap, tile)
    total = None  # frames in the part, when the container says how many it has
    if v.frames:
        total = max(0, min(v.frames, opts.stop or v.frames) - opts.start)
    ow, oh = output_size(w, h, s, opts.outscale, opts.pix_fmt)
    result = {'path': path, 'in_size': (w, h), 'net_size': (w * s, h * s),
              'out_size': (ow, oh), 'tile': tile,
              'batch': batch, 'frames': 0, 'audio': len(source.audio), 'seconds': 0.0,
              'outputs': output_paths(path, opts), 'declared': total}

    labels = compare_labels(ow, oh) if opts.compare else []

    def encode(tmps: list) -> None:
        writers = []
        try:
            writers.append(VideoWriter(tmps[0], ow, oh, source, opts.crf, opts.pix_fmt))
            if opts.compare:
                writers.append(VideoWriter(tmps[1], 2 * ow, oh, source, opts.crf,
                                           opts.pix_fmt, audio=False))
            run(writers)
            for writer in writers:
                writer.close()
        finally:
            for writer in writers:
                writer.container.close()  # a no-op when already closed

    def flush(frames: list, times: list, writers: list, bar: tqdm) -> None:
        start = time.perf_counter()
        sr = super_resolve_frames(model, frames, s, tile, opts.overlap, opts.dtype,
                                  opts.ensemble)
        result['seconds'] += time.perf_counter() - start
        if (ow, oh) != (w * s, h * s):  # --outscale: the network's scale first, then bicubic
            sr = imresize(sr, size=(oh, ow))
        bicubic = imresize(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
                           .div(255), size=(oh, ow)) if opts.compare else None
        for i, pts in enumerate(times):
            out = to_uint8(sr[i])
            writers[0].write_frame(out, pts, v.time_base)
            if bicubic is not None:
                side = np.concatenate([to_uint8(bicubic[i]), out], axis=1)
                for left, top, patch in labels:  # "Bicubic" | "SR", top left of each half
                    side[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
                writers[1].write_frame(side, pts, v.time_base)
        result['frames'] += len(frames)
        bar.update(len(frames))
        frames.clear()
        times.clear()

    def run(writers: list) -> None:
        gate = AudioGate(cut_start=opts.start > 0, open_end=opts.stop is None)
        offset = None if gate.cut_start else 0  # pts of frame A: the part's time 0
        frames, times, index = [], [], 0
        default_pts = 1 / (source.rate * v.time_base)  # for frames without a timestamp
        bar = tqdm(total=total, unit='frame', desc=os.path.basename(path), leave=False,
                   disable=None)  # progress on a terminal only
        try:
            for packet in demuxed(source.container.demux(v, *source.audio), result):
                if 'decode_error' in result:
                    break
                if packet.stream.type == 'audio':
                    if packet.dts is not None:  # the demuxer's end-of-stream marker has none
                        for ready in gate.offer(packet):
                            writers[0].write_audio(ready)
                    if gate.stop is not None and len(gate.past_stop) == len(source.audio):
                        break
                    continue
                if gate.stop is not None:
                    continue  # past the part: only the audio that belongs to it is read on
                for frame in decoded(packet, result):
                    pts = frame.pts if frame.pts is not None else round(index * default_pts)
                    t = pts * v.time_base
                    if opts.stop is not None and index >= opts.stop:
                        gate.stop = t
                        break
                    gate.seen = t
                    if index >= opts.start:
                        if offset is None:
                            offset, gate.start = pts, t
                        frames.append(frame_rgb(frame, w, h))
                        times.append(pts - offset)
                        if len(frames) == batch:
                            flush(frames, times, writers, bar)
                    index += 1
                for ready in gate.settle():
                    writers[0].write_audio(ready)
                if gate.stop is not None and not source.audio:
                    break
            if frames:
                flush(frames, times, writers, bar)
            for ready in gate.settle(end=True):
                writers[0].write_audio(ready)
        finally:
            bar.close()
        if result['frames'] == 0:
            raise VideoError(f'{path}: no frames to process' + (
                f' (the video has {index} frames; --frames starts at {opts.start})'
                if opts.start else ''))

    start = time.perf_counter()
    try:
        atomic_outputs(result['outputs'], encode)
    except av.FFmpegError as e:
        raise VideoError(f'{path}: {ffmpeg_message(e)} while processing the video') from None
    except OSError as e:
        raise VideoError(f'{result["outputs"][0]}: cannot write ({e})') from None
    finally:
        source.container.close()
    result['wall'] = time.perf_counter() - start
    return result


def report(result: dict) -> None:
    (w, h), (nw, nh), (ow, oh) = result['in_size'], result['net_size'], result['out_size']
    n, wall, net = result['frames'], result['wall'], result['seconds']
    tiles = f", tiles of {result['tile']}" if result['tile'] else ''
    audio = f"{result['audio']} audio stream(s) copied" if result['audio'] else 'no audio'
    final = f' (network) -> {ow}x{oh} (--outscale)' if (ow, oh) != (nw, nh) else ''
    print(f"{os.path.basename(result['path'])}: {w}x{h} -> {nw}x{nh}{final}, {n} frames in "
          f"{wall:.1f} s, {n / max(wall, 1e-9):.3g} frames/s (the network alone "
          f"{n / max(net, 1e-9):.3g}; {result['batch']} frame(s) per pass{tiles}), {audio}",
          flush=True)
    print('  -> ' + ', '.join(result['outputs']), flush=True)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parse_frames(spec: str) -> tuple:
    """'A:B', 'A:' or ':B' -> (A, B or None). Raises ValueError."""
    start, sep, stop = spec.partition(':')
    try:
        if not sep:
            raise ValueError
        a = int(start) if start.strip() else 0
        b = int(stop) if stop.strip() else None
    except ValueError:
        raise ValueError(f'--frames {spec}: expected A:B (frame numbers from 0; A: or :B '
                         'leave one end open)') from None
    if a < 0 or (b is not None and b <= a):
        raise ValueError(f'--frames {spec}: needs 0 <= A < B')
    return a, b


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Super-resolve a video, keeping its audio.')
    p.add_argument('--video', required=True, help='input video (anything FFmpeg reads)')
    add_flags(p, 'upscale_factor', 'weight', 'cuda', 'out_dir', 'tile', 'amp', 'ensemble',
              'outscale', outscale=Default(None, "the network's scale; with yuv420p each side "
                                                 'rounded down to even'))
    p.add_argument('--compare', action='store_true',
                   help='also write compare_NAME.mp4: bicubic | SR side by side, labelled '
                        '(default: off)')
    p.add_argument('--frames', default=None, metavar='A:B',
                   help='only frames A to B-1 (from 0; A: or :B leave one end open) '
                        '(default: all)')
    p.add_argument('--crf', type=int, default=18, choices=range(52), metavar='0-51',
                   help='H.264 quality: 0 lossless, 18 visually near-lossless, higher = '
                        'smaller files (default: 18)')
    p.add_argument('--pix_fmt', choices=['yuv420p', 'yuv444p'], default='yuv420p',
                   help='yuv420p plays everywhere; yuv444p keeps full colour resolution, but '
                        'some players cannot play it (default: yuv420p)')
    p.add_argument('--allow_partial', action='store_true',
                   help='exit 0 when fewer frames decode than the container declares (a cut '
                        'or damaged file); the shorter output is kept either way (default: '
                        'exit 1)')
    return p.parse_args(argv)


@script
def main(argv=None) -> int:
    args = parse_args(argv)
    # everything that can be checked before the model is built (README.md, "Conventions")
    if av is None:
        require('av', 'test_video.py')
    device, dtype = inference_setup(args)
    try:
        start, stop = parse_frames(args.frames) if args.frames else (0, None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_input(args.video)
    check_output_dir(args.out_dir)
    generator = generator_from_flags(args, device)
    model = inference_model(generator, device)
    cfg = generator.config
    opts = Options(scale=cfg['upscale_factor'], out_dir=args.out_dir, tile=args.tile,
                   overlap=args.tile_overlap, dtype=dtype, compare=args.compare, start=start,
                   stop=stop, crf=args.crf, pix_fmt=args.pix_fmt, ensemble=args.ensemble,
                   outscale=args.outscale)
    print(f"x{cfg['upscale_factor']} generator ({cfg['num_blocks']} blocks) on {device}, "
          f"{PRECISION_NAMES[dtype]} -> {args.out_dir}", flush=True)
    try:
        result = process_video(args.video, model, opts)
    except torch.OutOfMemoryError:
        raise VideoError(f'{args.video}: out of memory; try a smaller --tile') from None
    except InferenceError as e:  # out of memory after a smaller tile, an output not finite
        raise VideoError(f'{args.video}: {e}') from None
    except KeyboardInterrupt:
        raise Interrupted(f'{args.video}: interrupted; no output written') from None
    report(result)
    short = shortfall(result)
    if short:  # the partial output is kept either way
        if not args.allow_partial:
            raise VideoError(f'{args.video}: {short}; the shorter output is kept (pass '
                             '--allow_partial to accept it)')
        print(f'warning: {args.video}: {short}; the output is shorter', file=sys.stderr,
              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
