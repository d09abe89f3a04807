"""Tests for mineworld.video: H.264 round trips, every broken-file case raising VideoFileError
naming the path, natural clip ordering, and frame/action pairing under both alignments."""

import io
import json
import re

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mineworld import video
from mineworld.actions import ActionFileError
from mineworld.video import VideoFileError, list_clips, read_clip, read_video, write_video

T, H, W = 6, 48, 64


def smooth_frames(t=T, h=H, w=W):
    """Moving colour gradients: smooth, so H.264 keeps them close."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    frames = [
        np.stack([x + 0.05 * i, y, 0.5 + 0.3 * np.sin(3 * (x + y) + i)], axis=-1) * 180 + 30
        for i in range(t)
    ]
    return np.clip(frames, 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A written clip and the frames it was written from."""
    frames = smooth_frames()
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames)
    return path, frames


def test_write_then_read_round_trip(clip):
    path, frames = clip
    assert path.is_file()
    video = read_video(path)
    assert video.dtype == np.uint8 and video.shape == (T, H, W, 3)
    assert psnr(video, frames) > 30


def test_resize_on_read(clip):
    path, frames = clip
    video = read_video(path, size=(32, 20))
    assert video.shape == (T, 20, 32, 3)
    assert np.abs(video.mean(axis=(1, 2)) - frames.mean(axis=(1, 2))).max() < 4


def test_max_frames_and_start(clip):
    path, _ = clip
    video = read_video(path)
    assert np.array_equal(read_video(path, max_frames=3), video[:3])
    assert np.array_equal(read_video(path, max_frames=2, start=3), video[3:5])
    assert np.array_equal(read_video(path, max_frames=100, start=4), video[4:])
    with pytest.raises(VideoFileError, match=f"{path}: no frames from frame 6 on"):
        read_video(path, start=T)
    for bad in ({"max_frames": 0}, {"start": -1}, {"size": (0, 10)}, {"size": (10,)}):
        with pytest.raises(ValueError):
            read_video(path, **bad)


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = smooth_frames(h=H - 1, w=W - 3)
    video = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert video.shape == (T, H, W - 2, 3)
    assert psnr(video[:, : H - 1, : W - 3], frames) > 30


def test_write_rejects_bad_frames(tmp_path):
    for bad in (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8),
                np.zeros((2, 8, 8, 3), np.float32)):  # fmt: skip
        with pytest.raises(ValueError, match="uint8"):
            write_video(tmp_path / "bad.mp4", bad)


def broken_files(folder, good):
    """(path, expected message) for each kind of broken video."""
    (folder / "notes.mp4").write_text("this is not a video\n" * 50)
    (folder / "empty.mp4").write_bytes(b"")
    # FFmpeg's tty demuxer would "decode" this text into frames of ANSI art
    (folder / "notes.txt").write_text("hello world\nthis is text\n" * 20)
    data = good.read_bytes()
    (folder / "half.mp4").write_bytes(data[: len(data) // 2])
    return [
        (folder / "missing.mp4", "not a file"),
        (folder, "not a file"),
        (folder / "notes.mp4", "cannot decode"),
        (folder / "empty.mp4", "cannot decode"),
        (folder / "notes.txt", "not a video"),
        (folder / "half.mp4", "cannot decode"),
    ]


def test_broken_files_raise_video_file_error_naming_the_path(tmp_path, clip):
    for path, message in broken_files(tmp_path, clip[0]):
        with pytest.raises(VideoFileError, match=message) as err:
            read_video(path)
        assert err.value.path == path and str(err.value).startswith(str(path))


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_video_file_error(tmp_path, data):
    path = tmp_path / "random.mp4"
    path.write_bytes(data)
    with pytest.raises(VideoFileError):
        read_video(path)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_corrupted_mp4_reads_or_raises_video_file_error(tmp_path, clip, data):
    blob = bytearray(clip[0].read_bytes())
    for _ in range(data.draw(st.integers(1, 20))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(blob[: data.draw(st.integers(0, len(blob)))])
    try:
        video = read_video(path)
    except VideoFileError:
        return
    assert video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3


# --- clips -----------------------------------------------------------------------------------


def write_actions(path, n):
    """n VPT lines; line i presses hotbar key i % 9 + 1, so pairings are easy to read back."""
    lines = [{"keyboard": {"keys": [f"key.keyboard.{i % 9 + 1}"]}, "mouse": {}} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def hotbars(actions):
    """The line number (0-based) each action came from, via its hotbar key."""
    return [
        next(int(k[7:]) - 1 for k, v in a.items() if k.startswith("hotbar") and v) for a in actions
    ]


def test_list_clips_natural_order(tmp_path):
    for n in (10, 2, 1, 9, 11):
        (tmp_path / f"clip_{n}.mp4").write_bytes(b"")
        (tmp_path / f"clip_{n}.jsonl").write_text("")
    (tmp_path / "clip_3.mp4").write_bytes(b"")  # no actions: not a clip
    (tmp_path / "clip_4.jsonl").write_text("")  # no video: not a clip
    (tmp_path / "notes.txt").write_text("")
    assert list_clips(tmp_path) == [tmp_path / f"clip_{n}" for n in (1, 2, 9, 10, 11)]


@pytest.fixture
def stem(tmp_path, clip):
    (tmp_path / "clip_0.mp4").write_bytes(clip[0].read_bytes())
    return tmp_path / "clip_0"


def test_read_clip_same_alignment(stem):
    write_actions(stem.with_suffix(".jsonl"), T)
    frames, actions = read_clip(stem)
    assert np.array_equal(frames, read_video(stem.with_suffix(".mp4")))
    assert hotbars(actions) == [0, 1, 2, 3, 4, 5]  # frame i pairs with line i
    frames, actions = read_clip(stem.with_suffix(".mp4"), size=(32, 24), start=2, max_frames=3)
    assert frames.shape == (3, 24, 32, 3) and hotbars(actions) == [2, 3, 4]


def test_read_clip_next_alignment(stem):
    video = read_video(stem.with_suffix(".mp4"))
    write_actions(stem.with_suffix(".jsonl"), T)
    frames, actions = read_clip(stem, alignment="next")
    # frame i pairs with line i + 1; the last frame has no following line and is dropped
    assert np.array_equal(frames, video[:-1]) and hotbars(actions) == [1, 2, 3, 4, 5]
    write_actions(stem.with_suffix(".jsonl"), T + 1)
    frames, actions = read_clip(stem, alignment="next")
    assert np.array_equal(frames, video) and hotbars(actions) == [1, 2, 3, 4, 5, 6]
    frames, actions = read_clip(stem, alignment="next", start=1, max_frames=2)
    assert np.array_equal(frames, video[1:3]) and hotbars(actions) == [2, 3]


def test_read_clip_needs_a_line_per_frame(stem):
    jsonl = stem.with_suffix(".jsonl")
    write_actions(jsonl, T - 1)
    for alignment in ("same", "next"):
        with pytest.raises(ActionFileError, match=f"{jsonl}: 5 action lines for 6 video frames"):
            read_clip(stem, alignment=alignment)
    frames, actions = read_clip(stem, max_frames=T - 1)  # reading fewer frames is fine
    assert len(frames) == len(actions) == T - 1
    write_actions(jsonl, T + 3)  # extra lines are ignored
    assert hotbars(read_clip(stem)[1]) == [0, 1, 2, 3, 4, 5]
    jsonl.unlink()
    with pytest.raises(ActionFileError, match="cannot read"):
        read_clip(stem)


def raw_h264(path, sizes, frames_each=3):
    """A raw H.264 stream named .mp4 whose frames change size: one run of black frames per
    (width, height), each run a stream of its own, concatenated."""
    with open(path, "wb") as out:
        for width, height in sizes:
            run = io.BytesIO()
            with av.open(run, "w", format="h264") as container:
                stream = container.add_stream("h264", rate=6)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                black = np.zeros((height, width, 3), np.uint8)
                for _ in range(frames_each):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(black,
                                                                           format="rgb24")))
                container.mux(stream.encode(None))
            out.write(run.getvalue())
    return path


@pytest.mark.parametrize("later, message", [
    ((128, 128), "cannot decode"),  # more pixels than 64 x 64: the decoder refuses the frame
    ((256, 8), "frames of 256x8 are too large (at most 64 a side)"),  # fewer, but too wide
])
def test_every_decoded_frame_is_checked_not_just_the_header(tmp_path, monkeypatch, later,
                                                            message):
    monkeypatch.setattr(video, "MAX_SIDE", 64)
    path = raw_h264(tmp_path / "grows.mp4", [(32, 32), later], frames_each=12)
    assert read_video(path, max_frames=3).shape == (3, 32, 32, 3)  # the small frames alone
    with pytest.raises(VideoFileError, match=re.escape(message)):
        read_video(path, size=(16, 16))


def test_decoding_is_bounded_in_pixels_and_time(clip, monkeypatch):
    path, frames = clip
    monkeypatch.setattr(video, "MAX_DECODED_PIXELS", 3 * H * W)
    assert len(read_video(path, max_frames=3)) == 3
    with pytest.raises(VideoFileError, match=f"over {3 * H * W:,} pixels to decode"):
        read_video(path, max_frames=4)
    with pytest.raises(VideoFileError, match="pixels to decode"):  # skipped frames count too
        read_video(path, start=3, max_frames=1)
    monkeypatch.setattr(video, "MAX_DECODE_SECONDS", 0.0)
    with pytest.raises(VideoFileError, match="took over 0 s to decode"):
        read_video(path)
