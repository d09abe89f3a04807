"""Video files: read and write RGB clips, and pair a clip's frames with its recorded actions.

A clip is ``<stem>.mp4`` plus ``<stem>.jsonl`` (one action line per video frame, see
``mineworld.actions``). Decoding goes through PyAV (FFmpeg) so that any container works and
corrupt input surfaces as an exception we can wrap: every problem with a file's content raises
``VideoFileError`` naming the path, never a raw FFmpeg error. Frames are decoded from the start
and counted, rather than seeked to, because seeking in H.264 lands on keyframes, not on frame N.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

from mineworld.actions import ActionFileError, read_actions

# FFmpeg demuxers that render text files as video (ANSI art and friends); a text file is not
# a clip, so these are refused instead of "decoding" a notes.txt into frames.
_TEXT_DEMUXERS = {"tty", "bin", "xbin", "adf", "idf"}
_CRF = 18  # libx264 quality: visually lossless, so recorded clips stay faithful
# Largest frame side decoded: a tiny file can announce huge frames (each is decoded in full
# before any resize), so a bigger header is refused before the first frame is decoded, and
# the decoder itself refuses a later frame of more than MAX_SIDE x MAX_SIDE pixels (a raw
# H.264 stream may change size mid-way; one of 8192 x 8192 took 30 s and +416 MB).
MAX_SIDE = 4096
# What one read may decode in all, frames skipped before ``start`` included: 256 frames of
# 1280 x 720 (about 3 s on a 2-core host), and a time bound for whatever decodes slowly
# (256 frames of 4096 x 4096 took 31-67 s).
MAX_DECODED_PIXELS = 256 * 1280 * 720
MAX_DECODE_SECONDS = 10.0


class VideoFileError(ValueError):
    """A video file that cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, reason: str, path: str | Path):
        self.reason, self.path = reason, path
        super().__init__(f"{path}: {reason}")


def read_video(
    path: str | Path,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    start: int = 0,
) -> np.ndarray:
    """Frames ``start`` .. ``start + max_frames - 1`` of a video as uint8 RGB [T, H, W, 3].

    ``size=(width, height)`` resizes every frame with INTER_AREA. ``max_frames`` truncates: a
    longer video is fine. Raises VideoFileError if the path is not a file, is not a video, has
    frames over ``MAX_SIDE`` pixels a side, has no frames from ``start`` on, fails to decode,
    holds fewer frames than its header announces (truncated), or changes frame size mid-stream
    without ``size``, or needs more than ``MAX_DECODED_PIXELS`` decoded or
    ``MAX_DECODE_SECONDS`` to reach its last frame.
    """
    if size is not None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (width, height) in pixels, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if (max_frames is not None and max_frames < 1) or start < 0:
        raise ValueError(f"need max_frames >= 1 and start >= 0, got {max_frames!r}, {start!r}")
    if not Path(path).is_file():
        raise VideoFileError("not a file", path)
    stop = None if max_frames is None else start + max_frames
    frames, seen = [], 0
    try:
        # The limit applies while FFmpeg probes the streams too: probing decodes frames.
        decoder_limits = {"max_pixels": str(MAX_SIDE * MAX_SIDE)}
        with av.open(str(path), options=decoder_limits) as container:
            if container.format.name in _TEXT_DEMUXERS:
                raise VideoFileError(f"not a video (text, as {container.format.name})", path)
            if not container.streams.video:
                raise VideoFileError("not a video (no video stream)", path)
            stream = container.streams.video[0]
            if stream.codec_context is None:  # a damaged header names no decodable codec
                raise VideoFileError("not a video (no decodable video stream)", path)
            _check_side(stream.codec_context.width, stream.codec_context.height, path)
            stream.codec_context.options = decoder_limits
            started, pixels = time.monotonic(), 0
            for frame in container.decode(stream):
                _check_side(frame.width, frame.height, path)
                pixels += frame.width * frame.height
                if pixels > MAX_DECODED_PIXELS:
                    raise VideoFileError(
                        f"over {MAX_DECODED_PIXELS:,} pixels to decode: use a shorter or "
                        "smaller video", path)
                if time.monotonic() - started > MAX_DECODE_SECONDS:
                    raise VideoFileError(f"took over {MAX_DECODE_SECONDS:g} s to decode", path)
                seen += 1
                if seen <= start:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                if size is not None:
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                elif frames and rgb.shape != frames[0].shape:
                    raise VideoFileError(
                        "frame size changes mid-stream (pass size to resize)", path
                    )
                frames.append(rgb)
                if seen == stop:
                    break
            # The container index (mp4) counts the frames written; decoding fewer means the
            # data stops early. Formats without an index report 0 and skip the check.
            if seen != stop and seen < stream.frames:
                raise VideoFileError(f"truncated: {seen} of {stream.frames} frames decode", path)
    except (av.FFmpegError, UnicodeDecodeError) as e:  # bad metadata text is a UnicodeError
        reason = getattr(e, "strerror", None) or e
        raise VideoFileError(f"cannot decode (damaged, or frames over {MAX_SIDE}x{MAX_SIDE}): "
                             f"{reason}", path) from None
    if not frames:
        raise VideoFileError(f"no frames from frame {start} on ({seen} in the file)", path)
    return np.stack(frames)


def video_rate(path: str | Path) -> Fraction | None:
    """The frames per second a video's header announces, or None when it announces none."""
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            rate = streams[0].average_rate if streams else None
    except av.FFmpegError as e:
        raise VideoFileError(f"cannot decode: {getattr(e, 'strerror', None) or e}", path) from None
    return rate if rate and rate > 0 else None


def _check_side(width: int, height: int, path) -> None:
    if max(width, height) > MAX_SIDE:
        raise VideoFileError(
            f"frames of {width}x{height} are too large (at most {MAX_SIDE} a side)", path)


def write_video(
    path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: int | Fraction = 6
) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] as H.264 (yuv420p) and return the path.

    yuv420p needs even sides, so odd widths/heights are padded by repeating the last column/row;
    the file then reads back one pixel larger on that side.
    """
    video = np.asarray(frames)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or not len(video):
        raise ValueError(f"frames must be uint8 [T>=1, H, W, 3], got {video.dtype} {video.shape}")
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(_CRF)}
        for rgb in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))  # flush frames the encoder still holds
    return Path(path)


def _clip_paths(clip: str | Path) -> tuple[Path, Path]:
    base = Path(clip)
    if base.suffix == ".mp4":
        base = base.with_suffix("")
    return base.with_name(base.name + ".mp4"), base.with_name(base.name + ".jsonl")


def read_clip(
    clip: str | Path,
    size: tuple[int, int] | None = None,
    alignment: Literal["same", "next"] = "same",
    max_frames: int | None = None,
    start: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """The frames of ``<clip>.mp4`` and their actions from ``<clip>.jsonl``, paired 1:1.

    ``clip`` is the stem or the .mp4 path; ``size``, ``max_frames`` and ``start`` are as in
    ``read_video``. ``actions[i]`` is the action taken after ``frames[i]``: line ``start + i``
    with ``alignment="same"``, line ``start + i + 1`` with ``"next"`` (see ``read_actions``).

    The .jsonl must have a line for every frame read (extra lines are ignored), else
    ActionFileError gives both counts. With ``"next"`` the last frame of a file with exactly one
    line per frame has no following action, so that frame is dropped and one pair fewer returns.
    """
    mp4, jsonl = _clip_paths(clip)
    frames = read_video(mp4, size=size, max_frames=max_frames, start=start)
    actions = read_actions(jsonl, alignment, max_lines=start + len(frames))
    end = start + len(frames)
    lines = len(actions) + (alignment == "next")
    if lines < end:
        raise ActionFileError(f"{lines} action lines for {end} video frames", jsonl)
    actions = actions[start:end]
    return frames[: len(actions)], actions


def _natural_key(path: Path) -> tuple[list, str]:
    # re.split with a group alternates text and digit runs, so odd items are numbers:
    # clip_2 sorts before clip_10. The plain name breaks ties such as clip_02 / clip_2.
    parts = re.split(r"(\d+)", path.name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], path.name


def list_clips(folder: str | Path) -> list[Path]:
    """Stems (``folder/<name>``, no extension) of every ``<name>.mp4`` with a ``<name>.jsonl``
    beside it, in natural order (clip_2 before clip_10)."""
    mp4s = Path(folder).glob("*.mp4")
    return sorted(
        (p.with_suffix("") for p in mp4s if p.with_suffix(".jsonl").is_file()), key=_natural_key
    )
