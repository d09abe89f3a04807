"""Interactive play, without any UI: scenes, one or more strategies driven by the same actions,
the true frames of the procedural world, per-step statistics as plot tables, and mp4 export.

``PlaySession`` runs one ``Session`` per strategy ("side") from the same prefilled scene state
with the same seed, so a comparison differs only by the cache strategy. When the scene was
recorded in ``mineworld.world`` (its ``.json`` sidecar holds the world seed and start), the world
is replayed alongside and every generated frame is scored against the true one, with PSNR and
SSIM from ``mineworld.metrics`` (the benchmarks' code), as is A against B in a comparison.

Everything a play holds is bounded, however long it runs: a scene is at most
``MAX_SCENE_FRAMES`` frames, and each side keeps its newest ``KEPT_FRAMES`` frames, captions and
stats rows (the plots, the strip and the exported video show those); the cache is the strategy's.

A step only makes the frames: the true world's frame and the scores follow while the next frame
is made (``beside_frame``, for a driven play), when the quality is next read (``score_pending``,
at the plots' pace) or once ``MAX_UNSCORED`` frames wait, so that they cost the frame nothing.
One thread steps a play (``mineworld.stream.FrameScheduler``) while others read it: readers get
snapshots taken under the play's lock.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from cache import ROLES
from mineworld.actions import BUTTONS, ActionFileError, read_actions
from mineworld.decoding import Passes, Sampling, run_together
from mineworld.metrics import frame_scores
from mineworld.session import Session
from mineworld.video import read_video, video_rate, write_video
from mineworld.world import FPS, read_recording
from mineworld.world.render import SUPERSAMPLE
from mineworld.world.truth import RemoteWorld, TrueWorld, WorldProcess, WorldProcessEnded

EXPORT_MIN_WIDTH = 512  # an exported side is scaled up by a whole factor to at least this
CAPTION_HEIGHT = 28  # pixels of the band above each exported side that names its strategy
# PSNR is drawn no higher than this: identical frames score infinity, and frames a pixel apart
# about 88 dB, either of which would squash every other line to the bottom of the plot.
PSNR_PLOT_CEILING_DB = 50.0
MIB = 2**20
# Limits that keep one user's play bounded in memory, however long it runs or whatever it loads.
MAX_SCENE_FRAMES = 256  # frames read from a scene video; a longer one is cut, and says so
KEPT_FRAMES = 256  # per side: frames, captions, plot rows and actions kept (the newest)
MAX_UNSCORED = 32  # frames whose true frame and scores may wait for the next reader
MAX_SIDECAR_BYTES = 4096  # a world sidecar holds a seed, a start state, a size and a few words
# A world sidecar's render size and supersampling, from the model's frame size: the true frame
# is resized to the model's, so more detail buys nothing but time on every step (1024 x 1024
# supersampled 4 times took 75 s a step). A side may be at most twice the model's, and the
# supersampling the world's own recordings use.
MAX_WORLD_SCALE = 2
MAX_SUPERSAMPLE = SUPERSAMPLE
PLAYER_STATE = ("x", "y", "z", "yaw", "pitch", "vx", "vy", "vz", "on_ground")
# Quality measures (mineworld.metrics.frame_scores), between the sides and against the true
# world: name -> chart title.
QUALITY = {
    "psnr": f"PSNR ({PSNR_PLOT_CEILING_DB:.0f}: identical or nearly)",
    "ssim": "SSIM",
}
# The hit rate's share held by each role of kept tokens (cache statistics' names) -> its series.
HIT_RATE_SERIES = {role: f"kept by {role.replace('_', ' ')}" for role in ROLES}
# Chart name -> (title, the series it draws); every series is a column of the stats rows.
PLOTS = {
    "tokens": ("Tokens in the cache", ("live tokens", "evicted this frame")),
    "kv": ("KV cache", ("KV allocated", "KV live")),
    "memory": ("Process memory", ("process RSS", "GPU allocated")),
    "ms": ("Time per frame (its own)", ("total", "re-prefill")),
    "fps": ("Frames per second", ("fps",)),
    # The seed's "cache hit rate" (h2o and hybrid track attention; the others draw nothing),
    # and its split by the role of the kept tokens.
    "hit": ("Attention kept (h2o, hybrid)", ("attention hit rate", *HIT_RATE_SERIES.values())),
}


@dataclass
class Scene:
    """Reference frames (uint8 [N, H, W, 3]) and the N actions taken after each of them.

    ``world`` is the ``mineworld.world`` recording (its sidecar and the actions as the world
    replays them) when the true frames can be rendered, else None. It is read eagerly so that
    the scene's files may go away (uploads are temporary). ``notes`` say what was cut or
    ignored (a long video, an unusable world sidecar). ``fps``: the rate it was recorded at,
    which exports keep.
    """

    name: str
    frames: np.ndarray
    actions: list[dict]
    world: tuple[dict, list[dict]] | None = None
    notes: tuple[str, ...] = ()
    fps: float = FPS

    def free(self) -> None:
        """Drop the frames, actions and world now, for every holder of this scene (a closed
        or idle session's State lingers in Gradio); a play made from it then refuses to
        start, saying so."""
        self.frames = np.zeros((0, *self.frames.shape[1:]), np.uint8)  # not a view
        self.actions, self.world = [], None


def read_scene(mp4: str | Path, frame_size: tuple[int, int], name: str | None = None,
               max_frames: int = MAX_SCENE_FRAMES) -> Scene:
    """The clip ``mp4`` with the ``.jsonl`` beside it, resized to the tokenizer's frame size;
    at most ``max_frames`` frames are read (a note says when the video is longer).

    Raises VideoFileError / ActionFileError (both ValueErrors) naming the bad file. A ``.json``
    world sidecar that cannot be used is ignored, with a note, rather than refused: it only adds
    the true frames.
    """
    stem = Path(mp4).with_suffix("")
    jsonl, video = stem.with_name(stem.name + ".jsonl"), stem.with_name(stem.name + ".mp4")
    frames = read_video(video, size=frame_size, max_frames=max_frames + 1)
    notes = []
    if len(frames) > max_frames:
        frames = frames[:max_frames]
        notes.append(f"only the first {max_frames} frames are read")
    actions = read_actions(jsonl, max_lines=len(frames))
    if len(actions) < len(frames):
        raise ActionFileError(f"{len(actions)} action lines for {len(frames)} video frames", jsonl)
    world, note = _world_recording(stem, frame_size, len(frames))
    return Scene(name or stem.name, frames, actions, world, (*notes, *filter(None, [note])),
                 float(video_rate(video) or FPS))


def _world_recording(stem: Path, frame_size: tuple[int, int], frames: int,
                     ) -> tuple[tuple[dict, list[dict]] | None, str]:
    """(the recording's sidecar and the actions of its first ``frames`` frames, "") when
    ``stem.json`` describes a world that can be rendered, else (None, why not; "" when there is
    no sidecar)."""
    path = stem.with_name(stem.name + ".json")
    if not path.is_file():
        return None, ""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"over {MAX_SIDECAR_BYTES:,} bytes; a world sidecar is a few lines")
        _check_sidecar(json.loads(path.read_text()), frame_size)
        sidecar, actions = read_recording(stem, max_actions=frames)
        TrueWorld((sidecar, actions), 0, frame_size)  # the start state is usable
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, RecursionError) as error:
        reason = str(error) or type(error).__name__
        return None, f"world sidecar ignored (no true frames): {reason}"
    return (sidecar, actions), ""


def _check_sidecar(sidecar, frame_size: tuple[int, int]) -> None:
    """ValueError unless ``sidecar`` is a world recording's metadata with sane values, and a
    render size and supersampling within ``MAX_WORLD_SCALE`` and ``MAX_SUPERSAMPLE`` of the
    model's frame size (width, height)."""
    if not isinstance(sidecar, dict) or not {"seed", "start", "size"} <= set(sidecar):
        raise ValueError("not a world recording (needs seed, start and size)")
    seed, size, start = sidecar["seed"], sidecar["size"], sidecar["start"]
    supersample = sidecar.get("supersample", 1)

    def whole(value, low, high):
        return type(value) is int and low <= value <= high

    if not whole(seed, 0, 2**63 - 1):
        raise ValueError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
    largest = [MAX_WORLD_SCALE * side for side in frame_size]
    if not (isinstance(size, list) and len(size) == 2
            and all(whole(side, 8, most) for side, most in zip(size, largest, strict=True))):
        raise ValueError(f"size must be [width, height] from 8 to {largest[0]} x {largest[1]} "
                         f"({MAX_WORLD_SCALE} times the model's frame), got {size!r}")
    if not whole(supersample, 1, MAX_SUPERSAMPLE):
        raise ValueError(f"supersample must be in [1, {MAX_SUPERSAMPLE}], got {supersample!r}")
    if not (isinstance(start, dict) and set(start) == set(PLAYER_STATE)):
        raise ValueError(f"start must hold exactly {', '.join(PLAYER_STATE)}")
    for name, value in start.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and abs(value) < 1e6):
            raise ValueError(f"start.{name} must be a finite number, got {value!r}")


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


# A chart's lines: name -> (frame numbers, values), in the order the lines first appear.
Series = dict[str, tuple[list[int], list[float]]]


def series_of(points) -> Series:
    """The lines through ``points``, each (series name, frame, value)."""
    lines: Series = {}
    for name, frame, value in points:
        frames, values = lines.setdefault(name, ([], []))
        frames.append(int(frame))
        values.append(float(value))
    return lines


@dataclass(frozen=True)
class Options:
    """Settings shared by every side of a play session."""

    reference_frames: int = 8
    schedule: str = "naive"
    window: int | None = None  # the model's
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    world_process: WorldProcess | None = None  # steps the true worlds; None: this process


def upscaled(frames: np.ndarray, min_width: int) -> np.ndarray:
    """Frames [T, H, W, 3] repeated pixel by pixel, by the smallest whole factor that makes
    them at least ``min_width`` wide (nearest neighbour: the model's pixels stay sharp)."""
    factor = max(1, math.ceil(min_width / frames.shape[2]))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def captioned(frames: np.ndarray, label: str) -> np.ndarray:
    """Frames [T, H, W, 3] under a dark band with ``label`` in white, shrunk to fit."""
    width = frames.shape[2]
    band = np.full((CAPTION_HEIGHT, width, 3), 24, np.uint8)
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1
    text_width = cv2.getTextSize(label, font, scale, thickness)[0][0]
    scale *= min(1.0, (width - 12) / max(text_width, 1))
    cv2.putText(band, label, (6, CAPTION_HEIGHT - 9), font, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    bands = np.broadcast_to(band, (len(frames), *band.shape))
    return np.concatenate([bands, frames], axis=1)


def _kept() -> deque:
    return deque(maxlen=KEPT_FRAMES)


def _scores(number: int, series: str, a: np.ndarray, b: np.ndarray) -> dict:
    """PSNR (infinite for identical frames) and SSIM (mineworld.metrics, as the benchmarks) of
    frame ``a`` against ``b``."""
    return {"frame": number, "series": series, **frame_scores(a, b)}


@dataclass
class Side:
    """One strategy's run: its session, the newest ``KEPT_FRAMES`` frames it made (with their
    captions) and a stats row for each of them; ``made`` counts every frame."""

    strategy: str
    params: dict
    session: Session
    frames: deque[np.ndarray] = field(default_factory=_kept)
    captions: deque[str] = field(default_factory=_kept)
    rows: deque[dict] = field(default_factory=_kept)
    made: int = 0
    evicted_so_far: int = 0  # the session's running count, to plot each frame's evictions
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the play's

    def replace_session(self, session: Session, strategy: str, params: dict) -> None:
        """Go on with another session (its counters start again at zero)."""
        self.session, self.strategy, self.params = session, strategy, dict(params)
        self.evicted_so_far = 0

    def record(self, action: dict, frame: np.ndarray, stats: dict) -> None:
        """Keep a frame this side's session made, its caption and its stats row (under the
        play's lock)."""
        device = self.session.device
        self.made += 1
        self.rows.append({
            "frame": self.made,  # not the session's count: a switch restarts it
            "live tokens": stats["live_tokens"],
            "evicted this frame": stats["evicted_tokens"] - self.evicted_so_far,
            "KV allocated": stats["bytes_allocated"] / MIB,
            "KV live": stats["bytes_live"] / MIB,
            "process RSS": process_memory_mb(),
            "GPU allocated": (
                torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else None
            ),
            # Its own cost: sides (and players) stepping together share forward passes, and a
            # side's wall time would show its neighbour's re-prefills.
            "total": stats["ms_own"],
            "re-prefill": stats["ms_reprefill"],
            "fps": 1000 / stats["ms_own"],
            "attention hit rate": stats["attention_hit_rate"],
            **{series: (stats["attention_hit_rate_by_role"] or {}).get(role)
               for role, series in HIT_RATE_SERIES.items()},
            "reprefills": stats["reprefills"],
        })
        self.evicted_so_far = stats["evicted_tokens"]
        self.frames.append(frame)
        self.captions.append(describe(action))

    def newest(self, count: int) -> list[tuple[np.ndarray, str]]:
        """The newest ``count`` frames with their captions, oldest first."""
        with self.lock:
            first = max(0, len(self.frames) - count)
            return [(self.frames[i], self.captions[i]) for i in range(first, len(self.frames))]

    def plot_series(self) -> dict[str, Series]:
        """The lines of each entry of ``PLOTS``."""
        with self.lock:
            rows = list(self.rows)
        return {name: series_of((column, row["frame"], row[column]) for column in columns
                                for row in rows if row[column] is not None)
                for name, (_title, columns) in PLOTS.items()}

    def close(self) -> None:
        """Drop the cache, frames and rows now rather than when the garbage collector gets to
        them (a closed tab's State lingers in Gradio for an hour)."""
        self.session = None
        for kept in (self.frames, self.captions, self.rows):
            kept.clear()


@dataclass
class Prepared:
    """Frames made ahead (``PlaySession.prepare``): the action, the frames played before it,
    the sessions it went on from, their forks that made it, what each made, and its share of
    the time their making took (frames made together share their passes)."""

    action: dict
    played: int
    sessions: list[Session]
    forks: list[Session]
    made: list
    share_ms: float

    def fits(self, play: PlaySession, action: dict) -> bool:
        """Whether these are the frames ``play`` would make now with ``action``."""
        return (action == self.action and play.frames_played == self.played
                and all(side.session is session
                        for side, session in zip(play.sides, self.sessions, strict=True)))


class PreparedTruth(NamedTuple):
    """The true world's frame made ahead: its number and action, the world it went on from,
    that world's fork which rendered it, and the frame."""

    number: int
    action: dict
    world: TrueWorld | RemoteWorld
    fork: TrueWorld | RemoteWorld
    frame: np.ndarray


def _made(made):
    """Passes that give ``made`` without asking for a forward pass."""
    yield from ()
    return made


class PlaySession:
    """Strategies (one per side) played from the same scene state with the same actions.

    Construction prefills every side, so a bad strategy parameter raises ValueError here, with
    the strategy's own message (budget checks happen at prefill).
    """

    def __init__(self, model, tokenizer, scene: Scene, start: int,
                 strategies: list[tuple[str, dict]], options: Options):
        self.sides: list[Side] = []  # none until every one has prefilled: closed till then
        if not len(scene.frames):
            raise ValueError("the uploaded scene was freed (its tab closed or was idle): "
                             "upload it again")
        if not 0 <= start < len(scene.frames):
            raise ValueError(f"start frame must be in [0, {len(scene.frames) - 1}], got {start}")
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.scene, self.start = scene, start
        self._lock = threading.Lock()  # the kept frames, rows and scores
        self._truth_lock = threading.Lock()  # the true world, stepped in the played order
        self._score_lock = threading.Lock()  # the scores, added in the played order
        self.context_frames = list(scene.frames[: start + 1])
        self.context_actions = list(scene.actions[:start])
        self.sides = [self._new_side(name, params) for name, params in strategies]
        opened = options.world_process.open if options.world_process else TrueWorld
        self.truth = opened(scene.world, start, tokenizer.frame_size) if scene.world else None
        # The true world's newest frame scored and its number (0: the start frame, as
        # rendered); the frames rendered since, by number; the newest frame rendered.
        self.newest_truth = (0, self.context_frames[-1]) if self.truth is not None else None
        self._truths: dict[int, np.ndarray] = {}
        self._truth_at = 0
        # Per frame and pair compared: frame, series, and a value per QUALITY measure.
        self.quality: deque[dict] = deque(maxlen=3 * KEPT_FRAMES)
        self.actions: deque[dict] = _kept()  # the newest, as the sides' frames
        self._unscored: list[tuple[int, dict, list[np.ndarray]]] = []
        self.frames_played = 0
        self._prepared: list[Prepared] = []  # likely next frames, made ahead
        self._prepared_truths: list[PreparedTruth] = []  # and the true world's
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
        return Side(strategy, dict(params), session, lock=self._lock)

    def switch_strategy(self, index: int, strategy: str, params: dict) -> None:
        """Continue side ``index`` with another strategy, prefilled from its newest frames."""
        side = self.sides[index]
        frames, actions = self._newest(side, self.options.reference_frames)
        session = self._prefilled_session(strategy, params, frames, actions)
        side.replace_session(session, strategy, params)

    def _newest(self, side: Side, count: int) -> tuple[list[np.ndarray], list[dict]]:
        """Side's newest ``count`` frames (scene frames first when it has made fewer) and the
        actions between them. ``count`` <= KEPT_FRAMES, so the kept frames hold them."""
        frames = (self.context_frames + list(side.frames))[-count:]
        between = len(frames) - 1
        actions = (self.context_actions + list(self.actions))[-between:] if between else []
        return frames, actions

    def newest_frames(self) -> list[np.ndarray]:
        """The frame each side shows now (the start frame before the first step)."""
        return [side.frames[-1] if side.frames else self.context_frames[-1] for side in self.sides]

    def step(self, action: dict) -> list[np.ndarray]:
        """Every side takes ``action`` (their forward passes run together); returns their new
        frames. The true world and the scores wait for ``score_pending``."""
        return self.record(action, run_together(self.model, self.side_steps(action)))

    def side_steps(self, action: dict) -> list[Passes]:
        """Each side's step as its forward passes, for ``run_together`` with other plays'; then
        ``record`` what they made. Frames made ahead for ``action`` (``prepare``) ask for none."""
        prepared, self._prepared = self._prepared, []
        for frames in prepared:
            if frames.fits(self, action):
                for side, fork in zip(self.sides, frames.forks, strict=True):
                    side.session = fork
                return [_made((frame, {**stats, "made_ahead_ms": frames.share_ms}))
                        for frame, stats in frames.made]
        return [side.session.step_passes(action) for side in self.sides]

    def prepare(self, actions: list[dict], stop: Callable[[dict], bool] | None = None) -> None:
        """Make the frames each of ``actions`` would make next, on forks of the sides'
        sessions, their forward passes together, and keep them, beside those made for other
        actions from here, for the next step if it takes one of them: likely next frames,
        ready before they are asked for. An action's frames are given up when
        ``stop(action)`` turns true between passes. The true world's frames are rendered
        meanwhile, in its own process. On the model's thread, as steps are; the sides stay
        as they are."""
        if self.closed or not actions:
            return
        sessions = [side.session for side in self.sides]
        self._prepared = [frames for frames in self._prepared if frames.action not in actions
                          and frames.fits(self, frames.action)]  # none from an older state
        truths = threading.Thread(target=self._prepare_truths, args=(actions, stop),
                                  name="true world ahead")
        truths.start()
        started = time.perf_counter()
        forks = [[session.fork() for session in sessions] for _action in actions]
        made = run_together(
            self.model, [fork.step_passes(action)
                         for action, row in zip(actions, forks, strict=True) for fork in row],
            stop and (lambda index: stop(actions[index // len(sessions)])))
        share = 1000 * (time.perf_counter() - started) / len(actions)
        for number, (action, row) in enumerate(zip(actions, forks, strict=True)):
            own = made[number * len(sessions):(number + 1) * len(sessions)]
            if all(result is not None for result in own):  # not given up
                self._prepared.append(
                    Prepared(action, self.frames_played, sessions, row, own, share))
        truths.join()

    def _prepare_truths(self, actions: list[dict], stop: Callable[[dict], bool] | None) -> None:
        """The true world's next frame for each of ``actions`` (not stopped), on forks of it,
        once it has caught up with the play: for ``render_truth`` to take."""
        for action in actions:
            with self._truth_lock:
                if self.truth is None or self._truth_at != self.frames_played:
                    return
                if stop is not None and stop(action):
                    continue
                self._prepared_truths = [truth for truth in self._prepared_truths
                                         if truth.number == self._truth_at + 1
                                         and truth.action != action]
                try:
                    fork = self.truth.fork()
                    self._prepared_truths.append(PreparedTruth(
                        self.frames_played + 1, action, self.truth, fork, fork.step(action)))
                except WorldProcessEnded as error:
                    self._lose_truth(error)
                    return

    def record(self, action: dict, made: list[tuple[np.ndarray, dict]]) -> list[np.ndarray]:
        """Keep each side's new frame and stats (``made``, in the sides' order); returns the
        frames."""
        with self._lock:
            for side, (frame, stats) in zip(self.sides, made, strict=True):
                side.record(action, frame, stats)
            self.actions.append(action)
            self.frames_played += 1
            frames = [frame for frame, _stats in made]
            self._unscored.append((self.frames_played, action, frames))
            waiting = len(self._unscored)
        if waiting >= MAX_UNSCORED:
            self.score_pending()
        return frames

    def render_truth(self, number: int, action: dict) -> None:
        """Render the true world's frame ``number`` ahead, ``action`` being its action: off the
        model's thread while the model makes that frame, to be shown beside it (see
        ``truth_frame``). Frames played before it and not rendered yet are rendered first, in
        order; a frame already rendered is not again."""
        with self._truth_lock:
            if self.truth is None or number <= self._truth_at:
                return
            with self._lock:  # the actions of the frames played since the last one rendered
                behind = self.frames_played - self._truth_at
                played = list(self.actions)[len(self.actions) - behind :]
            for ahead in [*played[: number - 1 - self._truth_at], action]:
                prepared, self._prepared_truths = self._prepared_truths, []
                ready = [truth for truth in prepared
                         if truth[:3] == (self._truth_at + 1, ahead, self.truth)]
                if ready:
                    self.truth, frame = ready[0].fork, ready[0].frame
                else:
                    try:
                        frame = self.truth.step(ahead)
                    except WorldProcessEnded as error:
                        self._lose_truth(error)
                        return
                with self._lock:
                    self._truth_at += 1
                    self._truths[self._truth_at] = frame

    def beside_frame(self, number: int, action: dict, show_truth: bool) -> None:
        """A driven play's work off the model's thread while the model makes frame ``number``
        (``action`` its action): its true frame rendered ahead when ``show_truth``, and the
        frames before it scored, so that ``record`` never scores ``MAX_UNSCORED`` frames at
        once on the model's thread (with their true frames rendered then: the picture froze
        for up to 0.9 s every 32 frames of a held key on Compare, docs/serving.md)."""
        if show_truth:
            self.render_truth(number, action)
        self.score_pending(through=number - 1)

    def _lose_truth(self, error: WorldProcessEnded) -> None:
        """Play on without the true world (its frames so far stay), saying why in the log."""
        print(f"play: the true world is no longer shown: {error}", file=sys.stderr, flush=True)
        self.truth, self._prepared_truths = None, []

    def truth_frame(self, number: int) -> tuple[int, np.ndarray] | None:
        """The true world's frame ``number`` (or the newest before it) with its number, once
        rendered; None without a true world."""
        with self._lock:
            newest = max((n for n in self._truths if n <= number), default=None)
            return self.newest_truth if newest is None else (newest, self._truths[newest])

    def score_pending(self, through: int | None = None) -> None:
        """Score each frame played since the last call (up to frame ``through``; by default
        all): A against B, and each side against the true world's frame, rendered now if it
        was not ahead."""
        with self._score_lock:
            with self._lock:
                ready = len(self._unscored) if through is None else sum(
                    number <= through for number, _action, _frames in self._unscored)
                pending, self._unscored = self._unscored[:ready], self._unscored[ready:]
            if self.truth is not None and pending:
                self.render_truth(*pending[-1][:2])
            rows, truth = [], None
            for number, _action, frames in pending:
                labels = "AB" if len(frames) == 2 else [""] * len(frames)
                if len(frames) == 2:
                    rows.append(_scores(number, "A vs B", frames[0], frames[1]))
                with self._lock:
                    truth = (number, self._truths.pop(number)) if number in self._truths else None
                if truth is not None:
                    rows.extend(_scores(number, f"{label} vs truth".strip(), frame, truth[1])
                                for label, frame in zip(labels, frames, strict=True))
            with self._lock:
                self.quality.extend(rows)
                self.newest_truth = truth or self.newest_truth

    def quality_series(self, measure: str = "psnr") -> Series:
        """The lines of one QUALITY measure (every frame scored; PSNR drawn no higher than
        PSNR_PLOT_CEILING_DB)."""
        self.score_pending()
        with self._lock:
            rows = list(self.quality)
        ceiling = PSNR_PLOT_CEILING_DB if measure == "psnr" else math.inf
        return series_of((row["series"], row["frame"], min(row[measure], ceiling))
                         for row in rows)

    def latest_quality(self) -> str:
        """The newest scored frame's scores, e.g. "A vs B 31.2 dB / SSIM 0.912", its number
        first when newer frames wait to be scored."""
        with self._lock:
            if not self.quality:
                return ""
            number = self.quality[-1]["frame"]
            newest = [row for row in self.quality if row["frame"] == number]
            lagging = number != self.frames_played
        scores = ", ".join(
            f"{row['series']} identical" if math.isinf(row["psnr"])
            else f"{row['series']} {row['psnr']:.1f} dB / SSIM {row['ssim']:.3f}"
            for row in newest
        )
        return f"frame {number}: {scores}" if lagging else scores

    @property
    def truncated(self) -> bool:
        """True when the oldest frames played are no longer kept (see KEPT_FRAMES)."""
        return self.frames_played > KEPT_FRAMES

    def export(self) -> Path:
        """An H.264 mp4 of the play so far (its newest KEPT_FRAMES frames, after the start frame
        while it is kept) at the scene's frame rate: sides side by side, each scaled up by a
        whole factor (crisp pixels) to at least EXPORT_MIN_WIDTH, under a band naming its
        strategy ("A: streaming {...}" in a comparison)."""
        first = [] if self.truncated else self.context_frames[-1:]
        with self._lock:
            rows = [first + list(side.frames) for side in self.sides]
        labels = self.side_labels()
        video = np.concatenate([
            captioned(upscaled(np.stack(frames), EXPORT_MIN_WIDTH), label)
            for frames, label in zip(rows, labels, strict=True)
        ], axis=2)
        path = Path(self._export_dir) / f"mineworld-{self.scene.name}-{int(time.time())}.mp4"
        return write_video(path, video, Fraction(self.scene.fps).limit_denominator(1001))

    def side_labels(self) -> list[str]:
        """Each side's strategy and parameters, lettered A, B when there are two."""
        names = self.describe_sides().split(" | ")
        if len(names) == 1:
            return names
        return [f"{letter}: {name}" for letter, name in zip("AB", names, strict=True)]

    def describe_sides(self) -> str:
        """Each side's strategy and the parameters in use (its defaults for the model
        included; those the model's layout fixes, such as ``frame_tokens``, left out)."""
        described = []
        for side in self.sides:
            strategy = side.session.cache.strategy
            fixed = {param.name for param in strategy.params if param.from_layout}
            params = {name: value for name, value in strategy.describe().items()
                      if name not in fixed}
            # As the Python API takes them: setup_cache_manager("frames", sink_frames=1, ...)
            values = ", ".join(f"{name}={value!r}" for name, value in params.items())
            described.append(f"{side.strategy}({values})" if params else side.strategy)
        return " | ".join(described)

    @property
    def closed(self) -> bool:
        return not self.sides or self.sides[0].session is None

    def close(self) -> None:
        """Free what the play holds (Gradio keeps a closed tab's State for an hour): the sides,
        the scores, and the scene frames (views that would keep an uploaded scene alive). Not
        while a step runs: the caller runs both on one thread."""
        with self._score_lock, self._truth_lock, self._lock:
            for side in self.sides:
                side.close()
            self.quality.clear()
            self.actions.clear()
            self._unscored, self._truths = [], {}
            self.context_frames, self.context_actions, self.truth = [], [], None
            self.newest_truth, self._prepared, self._prepared_truths = None, [], []
        shutil.rmtree(self._export_dir, ignore_errors=True)

