"""Interactive play, without any UI: scenes, one or more strategies driven by the same actions,
the true frames of the procedural world, per-step statistics as plot tables, and mp4 export.

``PlaySession`` runs one ``Session`` per strategy ("side") from the same prefilled scene state
with the same seed, so a comparison differs only by the cache strategy. When the scene was
recorded in ``mineworld.world`` (its ``.json`` sidecar holds the world seed and start), the world
is replayed alongside and every generated frame is scored against the true one.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from mineworld.actions import BUTTONS
from mineworld.decoding import Sampling
from mineworld.metrics import psnr
from mineworld.session import Session
from mineworld.video import read_clip, write_video
from mineworld.world import Game, read_recording

EXPORT_FPS = 6  # the rate the scenes are recorded at
PSNR_IDENTICAL_DB = 100.0  # plotted for identical frames: PSNR is infinite, plots need a number
MIB = 2**20
# Plot name -> (title, the series it draws); every series is a column of the stats rows.
PLOTS = {
    "tokens": ("Tokens in the cache", ("live tokens", "evicted this frame")),
    "kv": ("KV cache (MB)", ("KV allocated", "KV live")),
    "memory": ("Process memory (MB)", ("process RSS", "GPU allocated")),
    "ms": ("ms per frame", ("total", "re-prefill")),
    "fps": ("Frames per second", ("fps",)),
}


@dataclass
class Scene:
    """Reference frames (uint8 [N, H, W, 3]) and the N actions taken after each of them.

    ``world`` is the ``mineworld.world`` recording (its sidecar and the actions as the world
    replays them) when the true frames can be rendered, else None. It is read eagerly so that
    the scene's files may go away (uploads are temporary).
    """

    name: str
    frames: np.ndarray
    actions: list[dict]
    world: tuple[dict, list[dict]] | None = None


def read_scene(mp4: str | Path, frame_size: tuple[int, int], name: str | None = None) -> Scene:
    """The clip ``mp4`` with the ``.jsonl`` beside it, resized to the tokenizer's frame size.

    Raises VideoFileError / ActionFileError (both ValueErrors) naming the bad file.
    """
    stem = Path(mp4).with_suffix("")
    frames, actions = read_clip(stem, size=frame_size)
    return Scene(name or stem.name, frames, actions, _world_recording(stem))


def _world_recording(stem: Path) -> tuple[dict, list[dict]] | None:
    """The recording's sidecar and actions when ``stem.json`` describes a world, else None."""
    try:
        sidecar = json.loads(stem.with_name(stem.name + ".json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(sidecar, dict) and {"seed", "start", "size"} <= set(sidecar)):
        return None
    return read_recording(stem)


class TrueWorld:
    """The procedural world of a recorded scene, replayed to frame ``start`` and then driven by
    the played actions: the frame the model should have drawn."""

    def __init__(self, world: tuple[dict, list[dict]], start: int, frame_size: tuple[int, int]):
        sidecar, actions = world
        self.game = Game(
            sidecar["seed"], tuple(sidecar["size"]), sidecar.get("supersample", 1),
            sidecar["start"],
        )
        for action in actions[:start]:
            self.game.step(action)
        self.frame_size = frame_size

    def step(self, action: dict) -> np.ndarray:
        frame = self.game.step(action)
        if frame.shape[1::-1] != self.frame_size:
            frame = cv2.resize(frame, self.frame_size, interpolation=cv2.INTER_AREA)
        return frame


def describe(action: dict) -> str:
    """A short caption: the pressed buttons, then the camera move if any."""
    words = [name for name in BUTTONS if action.get(name)]
    pitch, yaw = action.get("camera", (0.0, 0.0))
    if pitch or yaw:
        words.append(f"pitch {pitch:+g}° yaw {yaw:+g}°")
    return " + ".join(words) or "no-op"


def process_memory_mb() -> float:
    """Resident set size now (Linux /proc), else the peak (other systems)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * resource.getpagesize() / MIB
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plot_table(records: list[dict]) -> pd.DataFrame | None:
    """Long-format rows (frame, value, series) for a line plot; numeric dtypes, because plots
    read the axis type from them. None when empty: Gradio's plot fixes its colour legend from
    the first table it shows, and an empty one would leave every later line uncoloured."""
    if not records:
        return None
    table = pd.DataFrame(records, columns=["frame", "value", "series"])
    return table.astype({"frame": "int64", "value": "float64", "series": "str"})


@dataclass(frozen=True)
class Options:
    """Settings shared by every side of a play session."""

    reference_frames: int = 8
    schedule: str = "naive"
    window: int = 2
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0


@dataclass
class Side:
    """One strategy's run: its session, the frames it made and a stats row per frame."""

    strategy: str
    params: dict
    session: Session
    frames: list[np.ndarray] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    evicted_so_far: int = 0  # the session's running count, to plot each frame's evictions

    def replace_session(self, session: Session, strategy: str, params: dict) -> None:
        """Go on with another session (its counters start again at zero)."""
        self.session, self.strategy, self.params = session, strategy, dict(params)
        self.evicted_so_far = 0

    def step(self, action: dict) -> np.ndarray:
        frame, stats = self.session.step(action)
        device = self.session.device
        self.rows.append({
            "frame": len(self.frames) + 1,  # not the session's count: a switch restarts it
            "live tokens": stats["live_tokens"],
            "evicted this frame": stats["evicted_tokens"] - self.evicted_so_far,
            "KV allocated": stats["bytes_allocated"] / MIB,
            "KV live": stats["bytes_live"] / MIB,
            "process RSS": process_memory_mb(),
            "GPU allocated": (
                torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else None
            ),
            "total": stats["ms_per_frame"],
            "re-prefill": stats["ms_reprefill"],
            "fps": 1000 / stats["ms_per_frame"],
            "reprefills": stats["reprefills"],
        })
        self.evicted_so_far = stats["evicted_tokens"]
        self.frames.append(frame)
        self.captions.append(describe(action))
        return frame

    def plot_tables(self) -> dict[str, pd.DataFrame | None]:
        """One long-format table (frame, value, series) per entry of ``PLOTS``."""
        tables = {}
        for name, (_title, series) in PLOTS.items():
            records = [
                {"frame": row["frame"], "value": row[column], "series": column}
                for row in self.rows for column in series if row[column] is not None
            ]
            tables[name] = plot_table(records)
        return tables

    def close(self) -> None:
        """Drop the cache and frames now rather than when the garbage collector gets to it."""
        self.session = None
        self.frames.clear()


class PlaySession:
    """Strategies (one per side) played from the same scene state with the same actions.

    Construction prefills every side, so a bad strategy parameter raises ValueError here, with
    the strategy's own message (budget checks happen at prefill).
    """

    def __init__(self, model, tokenizer, scene: Scene, start: int,
                 strategies: list[tuple[str, dict]], options: Options):
        if not 0 <= start < len(scene.frames):
            raise ValueError(f"start frame must be in [0, {len(scene.frames) - 1}], got {start}")
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.scene, self.start = scene, start
        self.context_frames = list(scene.frames[: start + 1])
        self.context_actions = list(scene.actions[:start])
        self.sides = [self._new_side(name, params) for name, params in strategies]
        self.truth = (
            TrueWorld(scene.world, start, tokenizer.frame_size) if scene.world else None
        )
        self.quality: list[dict] = []  # PSNR rows: frame, value, series
        self.actions: list[dict] = []
        self._export_dir = tempfile.mkdtemp(prefix="mineworld-play-")

    def _prefilled_session(self, strategy: str, params: dict, frames: list, actions: list):
        options = self.options
        session = Session(
            self.model, self.tokenizer, strategy=strategy, strategy_params=params,
            reference_frames=min(options.reference_frames, len(frames)),
            schedule=options.schedule, window=options.window, sampling=options.sampling,
            seed=options.seed,
        )
        session.start(np.stack(frames), actions)
        return session

    def _new_side(self, strategy: str, params: dict) -> Side:
        session = self._prefilled_session(
            strategy, params, self.context_frames, self.context_actions
        )
        return Side(strategy, dict(params), session)

    def switch_strategy(self, index: int, strategy: str, params: dict) -> None:
        """Continue side ``index`` with another strategy, prefilled from its newest frames."""
        side = self.sides[index]
        session = self._prefilled_session(
            strategy, params, self.context_frames + side.frames,
            self.context_actions + self.actions,
        )
        side.replace_session(session, strategy, params)

    @property
    def frames_played(self) -> int:
        return len(self.actions)

    def newest_frames(self) -> list[np.ndarray]:
        """The frame each side shows now (the start frame before the first step)."""
        return [side.frames[-1] if side.frames else self.context_frames[-1] for side in self.sides]

    def step(self, action: dict) -> None:
        """Every side takes ``action``; the true world too, and each frame is scored."""
        frames = [side.step(action) for side in self.sides]
        self.actions.append(action)
        number = self.frames_played
        labels = "AB" if len(frames) == 2 else [""] * len(frames)
        if len(frames) == 2:
            self._score(number, "A vs B", frames[0], frames[1])
        if self.truth is not None:
            truth = self.truth.step(action)
            for label, frame in zip(labels, frames, strict=True):
                self._score(number, f"{label} vs truth".strip(), frame, truth)

    def _score(self, number: int, series: str, a: np.ndarray, b: np.ndarray) -> None:
        self.quality.append(
            {"frame": number, "value": min(psnr(a, b), PSNR_IDENTICAL_DB), "series": series}
        )

    def quality_table(self) -> pd.DataFrame | None:
        return plot_table(self.quality)

    def export(self) -> Path:
        """An H.264 mp4 of the play so far, the start frame first; sides side by side."""
        rows = [self.context_frames[-1:] + side.frames for side in self.sides]
        video = np.concatenate([np.stack(frames) for frames in rows], axis=2)
        path = Path(self._export_dir) / f"mineworld-{self.scene.name}-{int(time.time())}.mp4"
        return write_video(path, video, EXPORT_FPS)

    def describe_sides(self) -> str:
        return " | ".join(
            f"{side.strategy} {json.dumps(side.params)}" if side.params else side.strategy
            for side in self.sides
        )

    @property
    def closed(self) -> bool:
        return self.sides[0].session is None

    def close(self) -> None:
        for side in self.sides:
            side.close()
        shutil.rmtree(self._export_dir, ignore_errors=True)

