"""MineWorld in the browser: play the world model with keys or buttons, watch its KV cache, and
compare two cache strategies side by side.

    python app.py                      # the embedded model and scene, http://127.0.0.1:7860
    python app.py --model_ckpt m.ckpt --config 300M_16f --scene clip.mp4 --cache-strategy h2o

This file is the UI only: models load in ``mineworld.loading`` (or ``mineworld.embedded``), play
logic lives in ``mineworld.play``. Every user gets their own ``PlaySession`` in a ``gr.State``;
the model is shared and read-only, and every event that runs it waits in one queue.

Limits (a page for strangers): uploads of at most ``MAX_UPLOAD_MB`` each, of the types the
Scene panel names; the first ``mineworld.play.MAX_SCENE_FRAMES`` frames of a video; at most
``MAX_REPEAT`` repeats a click; the newest ``mineworld.play.KEPT_FRAMES`` frames (plots, video)
kept per side; no file served but Gradio's own (its cache of this app's outputs and uploads).
Each says so in the page when it applies, and play goes on.

Exit status: 2 for a usage, model or scene error (one line on stderr), else when stopped.
"""

from __future__ import annotations

import os

# Before gradio is imported, or it calls home once at start-up: the demo runs offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import dataclasses
import functools
import inspect
import json
import math
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from cache import STRATEGIES
from mineworld.actions import make_action
from mineworld.decoding import Sampling
from mineworld.embedded import SCENE, demo_scene
from mineworld.loading import USER_ERRORS, load_model, one_line, strategy_params
from mineworld.play import (
    KEPT_FRAMES,
    MAX_SCENE_FRAMES,
    PLOTS,
    QUALITY,
    Options,
    PlaySession,
    Scene,
    read_scene,
)
from mineworld.session import default_reference_frames, pick_device
from mineworld.tokenizers.base import resize_frames
from mineworld.world import read_recording

PROG = "app.py"
# What a handler turns into a message in the page (the session goes on): bad values raise
# ValueError; int() of an infinite one raises OverflowError.
PLAY_ERRORS = (ValueError, OverflowError)
DISPLAY_WIDTH = 512  # the newest frame, upscaled with nearest neighbour so pixels stay crisp
STRIP_WIDTH = 128
STRIP_FRAMES = 8
MAX_REPEAT = 32
MAX_UPLOAD_MB = 64  # per file; Gradio refuses a bigger upload before it is stored
SCENE_FILE_TYPES = [".mp4", ".jsonl", ".json"]
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
CAMERA_KEY_DEG = 15.0  # how far one arrow key turns the camera
IDLE_SECONDS = 20 * 60  # a session untouched this long is freed
QUEUE_SIZE = 64
MODEL_QUEUE = "model"  # the one concurrency id of every event that runs the model
# The parameter Session fills in itself, so users never set it.
FILLED_BY_SESSION = {"frame_tokens"}

# Controls: name -> (button label, keyboard key as KeyboardEvent.key, lower-cased when one
# character). A name is a MineWorld button, or a camera move in CAMERA_MOVES.
CAMERA_MOVES = {
    "look up": (-CAMERA_KEY_DEG, 0.0),  # MineRL pitch: positive looks down
    "look down": (CAMERA_KEY_DEG, 0.0),
    "look left": (0.0, -CAMERA_KEY_DEG),
    "look right": (0.0, CAMERA_KEY_DEG),
}
CONTROL_GROUPS = {
    "Move": {"forward": ("W forward", "w"), "back": ("S back", "s"),
             "left": ("A left", "a"), "right": ("D right", "d")},
    "Body": {"jump": ("Space jump", " "), "sneak": ("Shift sneak", "Shift"),
             "sprint": ("Ctrl sprint", "Control")},
    "Hands": {"attack": ("attack", None), "use": ("use", None), "drop": ("Q drop", "q")},
    "Hotbar": {f"hotbar.{n}": (str(n), str(n)) for n in range(1, 10)},
    "Camera": {"look up": ("↑", "ArrowUp"), "look down": ("↓", "ArrowDown"),
               "look left": ("←", "ArrowLeft"), "look right": ("→", "ArrowRight")},
}  # fmt: skip
CONTROLS = {name: spec for group in CONTROL_GROUPS.values() for name, spec in group.items()}

# One document listener clicks the visible button of the pressed key (the other tab's buttons
# are hidden), so keys drive whichever tab is open.
KEYBOARD_JS = """
if (!window.mineworldKeys) {
  window.mineworldKeys = true;
  const classes = %s;
  document.addEventListener('keydown', (e) => {
    const target = e.target;
    const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName)
      || target.isContentEditable;
    if (typing || e.repeat || e.altKey || e.metaKey) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const name = classes[key];
    if (!name) return;
    if (key === ' ' || key.startsWith('Arrow')) e.preventDefault();
    for (const found of document.querySelectorAll('.' + name)) {
      const button = found.tagName === 'BUTTON' ? found : found.querySelector('button');
      if (button && button.offsetParent !== null) { button.click(); break; }
    }
  });
}
"""


LIMITS_TEXT = (
    f"Limits: uploads up to {MAX_UPLOAD_MB} MB a file ({', '.join(SCENE_FILE_TYPES)}); the "
    f"first {MAX_SCENE_FRAMES} frames of a video are read; a click repeats at most "
    f"{MAX_REPEAT} times; each side keeps its newest {KEPT_FRAMES} frames for the strip, plots "
    "and video. A tab's session is freed when it closes or after "
    f"{IDLE_SECONDS // 60} idle minutes."
)


def control_class(name: str) -> str:
    return "control-" + name.replace(".", "-").replace(" ", "-")


def control_action(name: str, pitch: float, yaw: float) -> dict:
    """The action of a control: its button, or its camera move; "look" turns by the sliders."""
    if name == "look":
        return make_action((), pitch, yaw)
    if name in CAMERA_MOVES:
        return make_action((), *CAMERA_MOVES[name])
    return make_action([name])


def strategy_parameters() -> dict[str, dict[str, object]]:
    """Each registered strategy's user-settable parameters and their defaults."""
    return {
        name: {
            param.name: param.default
            for param in inspect.signature(cls).parameters.values()
            if param.name not in FILLED_BY_SESSION
        }
        for name, cls in sorted(STRATEGIES.items())
    }


# -- command line and resources --------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (exit status 2), like every other error of the app."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=PROG,
        description="Play a MineWorld model in the browser; by default the embedded model and "
        "scene, offline, at http://127.0.0.1:7860.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_ckpt", help="checkpoint (.ckpt/.pt or .safetensors); "
                       "default: the embedded model")
    model.add_argument("--config", help="model YAML, or a shipped preset name such as 300M_16f")
    model.add_argument("--vae_config", help="VQGAN config.json (default: the model config's)")
    model.add_argument("--vae_ckpt", help="VQGAN weights (default: in --model_ckpt or the "
                       "model config's)")
    model.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    play = parser.add_argument_group("play")
    play.add_argument("--scene", help="mp4 with its .jsonl beside it (a .json world sidecar "
                      "enables true-frame scores); default: the embedded scene")
    play.add_argument("--reference_frame", type=int,
                      help="frames prefilled (default: half the context, at most 8)")
    play.add_argument("--diagd", action=argparse.BooleanOptionalAction, default=True,
                      help="diagonal decoding, several tokens a forward pass (default; "
                      "--no-diagd: one token a pass, in raster order)")
    play.add_argument("--window_size", type=int,
                      help="diagonal decoding: tokens a row runs ahead (default: the model's, "
                      "1 for the embedded model, 2 for the published configs)")
    play.add_argument("--temperature", type=float, default=0.0,
                      help="sampling temperature (default: 0, greedy)")
    play.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    cache = parser.add_argument_group("KV cache", "the default strategy; users may change it")
    cache.add_argument("--cache-strategy", choices=sorted(STRATEGIES), default="none")
    cache.add_argument("--hh-ratio", type=float, help="h2o, hybrid: heavy hitters per token")
    cache.add_argument("--start-size", type=int, help="streaming, hybrid: sink tokens")
    cache.add_argument("--recent-size", type=int, help="streaming, h2o, hybrid: recent tokens")
    cache.add_argument("--sink-frames", type=int, help="frames: sink frames")
    cache.add_argument("--recent-frames", type=int, help="frames: recent frames")
    server = parser.add_argument_group("server")
    on_spaces = os.environ.get("SYSTEM") == "spaces"  # Spaces serves from a container
    server.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1")
    server.add_argument("--port", type=int, default=7860)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Resources:
    """What every user shares, read-only: the model, its tokenizer, the defaults."""

    model: object
    tokenizer: object
    scene: Scene
    strategy: str
    params: dict
    options: Options

    def comparison(self) -> tuple[str, dict]:
        """Strategy B of the Compare tab at first: the full context when A manages the cache,
        else a window of frames that fits the model's context."""
        if self.strategy != "none":
            return "none", {}
        recent = max(1, self.model.config.context_frames - 2)  # + 1 sink + the frame being made
        return "frames", {"sink_frames": 1, "recent_frames": recent}

    def default_start(self, scene: Scene) -> int:
        """The frame play starts after: enough frames before it to fill the reference."""
        return min(self.options.reference_frames, len(scene.frames)) - 1


def embedded_scene(frame_size: tuple[int, int]) -> Scene:
    """The shipped scene, its frames rendered exactly by the world (not decoded from the mp4)."""
    if not SCENE.with_name(SCENE.name + ".json").is_file():
        raise FileNotFoundError(f"no embedded scene in {SCENE.parent}; pass --scene")
    frames, actions = demo_scene(SCENE)
    return Scene(SCENE.name, resize_frames(frames, frame_size), actions, read_recording(SCENE))


def load_resources(args: argparse.Namespace) -> Resources:
    """Load the model and scene of the flags and check the defaults by prefilling once."""
    params = strategy_params(args)
    device, dtype = pick_device(args.device)
    model, tokenizer, _files = load_model(args, params, device, dtype)
    if args.scene:
        scene = read_scene(args.scene, tokenizer.frame_size)
    else:
        scene = embedded_scene(tokenizer.frame_size)
    reference = args.reference_frame
    if reference is None:
        reference = default_reference_frames(model.config)
    window = model.config.diagonal_window if args.window_size is None else args.window_size
    options = Options(
        reference, "diagonal" if args.diagd else "naive", window,
        Sampling(temperature=args.temperature), args.seed,
    )
    resources = Resources(model, tokenizer, scene, args.cache_strategy, params, options)
    PlaySession(  # bad settings fail here, before the server starts
        model, tokenizer, scene, resources.default_start(scene), [(args.cache_strategy, params)],
        options,
    ).close()
    return resources


# -- UI ----------------------------------------------------------------------------------------


def enlarge(frame: np.ndarray, width: int) -> np.ndarray:
    """Nearest-neighbour upscale to ``width`` pixels (never down): model pixels stay sharp."""
    if frame.shape[1] >= width:
        return frame
    height = round(frame.shape[0] * width / frame.shape[1])
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_NEAREST)


@dataclass
class StrategyPicker:
    """A strategy dropdown and an input per parameter; only the chosen one's are visible."""

    dropdown: gr.Dropdown
    inputs: dict[str, gr.components.Component]

    @classmethod
    def build(cls, label: str, strategy: str, params: dict) -> StrategyPicker:
        choices = strategy_parameters()
        defaults = {p: v for taken in choices.values() for p, v in taken.items()}
        inputs = {}
        with gr.Column(), gr.Row():
            dropdown = gr.Dropdown(sorted(choices), value=strategy, label=label)
            for param, default in defaults.items():
                value, visible = params.get(param, default), param in choices[strategy]
                if isinstance(default, bool):
                    inputs[param] = gr.Checkbox(value=value, label=param, visible=visible)
                else:
                    precision = 0 if isinstance(default, int) else None
                    inputs[param] = gr.Number(value=value, label=param, precision=precision,
                                              visible=visible, min_width=100)
        picker = cls(dropdown, inputs)
        dropdown.change(picker.show_parameters, dropdown, list(inputs.values()),
                        api_visibility="private")
        return picker

    @property
    def components(self) -> list:
        return [self.dropdown, *self.inputs.values()]

    def show_parameters(self, strategy: str) -> list:
        taken = strategy_parameters()[strategy]
        return [gr.update(visible=param in taken) for param in self.inputs]

    def chosen(self, strategy: str, *values) -> tuple[str, dict]:
        """(strategy, its parameters) from the picker's component values; ValueError for a
        strategy that does not exist or a value that is not a finite number (the strategy
        itself checks ranges)."""
        choices = strategy_parameters()
        if strategy not in choices:
            raise ValueError(f"strategy must be one of {', '.join(choices)}, got {strategy!r}")
        given = dict(zip(self.inputs, values, strict=True))
        params = {param: given[param] for param in choices[strategy] if given[param] is not None}
        for param, value in params.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{param} must be a finite number, got {value!r}")
        return strategy, params


@dataclass
class PlayView:
    """One tab's display: per side a frame, a strip and plots; then a plot per quality measure
    (PSNR, SSIM), and a status."""

    state: gr.State
    status: gr.Textbox
    images: list[gr.Image]
    strips: list[gr.Gallery]
    plots: list[dict[str, gr.LinePlot]]
    quality: dict[str, gr.LinePlot]

    @classmethod
    def build(cls, name: str, labels: list[str], close_play) -> PlayView:
        """The status and each side's frame and strip; ``add_plots`` renders the plots."""
        state = gr.State(None, time_to_live=IDLE_SECONDS, delete_callback=close_play)
        status = gr.Textbox(label="Status", interactive=False, elem_id=f"status-{name}")
        images, strips = [], []
        with gr.Row():
            for label in labels:
                with gr.Column():
                    tag = side_tag(label)
                    images.append(gr.Image(label=f"{label}: newest frame", format="png",
                                           interactive=False, elem_id=f"frame-{tag}"))
                    # JPEG: eight thumbnails a step, 1 ms each instead of about 5 in PNG.
                    strips.append(gr.Gallery(label="Last frames", format="jpeg",
                                             columns=STRIP_FRAMES, rows=1, height=140,
                                             fit_columns=False, object_fit="contain",
                                             allow_preview=False, elem_id=f"strip-{tag}"))
        return cls(state, status, images, strips, [], {})

    def add_plots(self, labels: list[str]) -> None:
        """Each side's plots, two a row, then the quality plots shared by the sides."""
        with gr.Row():
            for label in labels:
                with gr.Column():
                    side_plots = {}
                    names = list(PLOTS)
                    for first in range(0, len(names), 2):
                        with gr.Row():
                            for name in names[first : first + 2]:
                                side_plots[name] = line_plot(
                                    f"{label}: {PLOTS[name][0]}",
                                    elem_id=f"plot-{name}-{side_tag(label)}",
                                )
                    self.plots.append(side_plots)
        with gr.Row():
            for measure, title in QUALITY.items():
                self.quality[measure] = line_plot(
                    title, elem_id=f"plot-{measure}-{side_tag('-'.join(labels))}"
                )

    def status_only(self, message: str) -> list:
        """Values that change nothing but the status line."""
        return [gr.skip(), message, *[gr.skip()] * (len(self.outputs) - 2)]

    @property
    def outputs(self) -> list:
        side_plots = [plot for plots in self.plots for plot in plots.values()]
        return [self.state, self.status, *self.images, *self.strips, *side_plots,
                *self.quality.values()]

    def values(self, play: PlaySession, status: str) -> list:
        """Component values for ``outputs``, in the same order."""
        newest = play.newest_frames()
        images = [enlarge(frame, DISPLAY_WIDTH) for frame in newest]
        strips = [
            [(enlarge(frame, STRIP_WIDTH), caption) for frame, caption in
             side.newest(STRIP_FRAMES)]
            for side in play.sides
        ]
        tables = [table for side in play.sides for table in side.plot_tables().values()]
        quality = [play.quality_table(measure) for measure in self.quality]
        return [play, status, *images, *strips, *tables, *quality]


def line_plot(title: str, elem_id: str | None = None) -> gr.LinePlot:
    """A plot of a long-format table (``mineworld.play.plot_table``), one line per series."""
    return gr.LinePlot(None, x="frame", y="value", color="series", title=title, height=200,
                       elem_id=elem_id)


def side_tag(label: str) -> str:
    return label.lower().replace(" ", "-")


def status_line(play: PlaySession, note: str = "") -> str:
    """Where play stands: frames, strategies, the speed of the newest frame per side, its
    quality scores, and ``note`` (a limit that applied)."""
    speeds = [f"{side.rows[-1]['fps']:.1f} fps" for side in play.sides if side.rows]
    played = f"{play.frames_played} frames played"
    if play.truncated:
        played += f" (the newest {len(play.sides[0].frames)} kept)"
    parts = [f"scene {play.scene.name}, start frame {play.start}", played,
             play.describe_sides(), *speeds, play.latest_quality(), note]
    return " · ".join(part for part in parts if part)


class Demo:
    """The event handlers; they share the read-only resources and nothing else."""

    def __init__(self, resources: Resources):
        self.resources = resources
        # Plays by (session hash, sides: 1 on the Play tab, 2 on Compare) so that closing the
        # tab frees them at once; weak, so the State stays their owner.
        self.open_plays: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # Uploaded scenes by session hash, likewise, so that a closed tab's frames go at once.
        self.open_scenes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def new_play(self, scene: Scene | None, start: int | None, seed: int | None, strategies,
                 request) -> PlaySession:
        """A play of ``strategies``; None picks the shipped scene, its start frame, the seed."""
        resources = self.resources
        scene = scene or resources.scene
        start = resources.default_start(scene) if start is None else int(number(start, "start"))
        options = resources.options
        if seed is not None:
            if not (isinstance(seed, (int, float)) and math.isfinite(seed)
                    and 0 <= seed <= MAX_SEED):
                raise ValueError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
            options = dataclasses.replace(options, seed=int(seed))
        play = PlaySession(resources.model, resources.tokenizer, scene, start, strategies,
                           options)
        if request is not None and request.session_hash:
            self.open_plays[(request.session_hash, len(strategies))] = play
        return play

    def restart(self, view: PlayView, pickers: list[StrategyPicker]):
        """Handler: a new play from the scene's start frame with the pickers' strategies."""

        # gr.Request comes first: Gradio passes it by position, and *picker_values follows.
        def restart(request: gr.Request, old: PlaySession | None, scene: Scene | None, start,
                    seed, *picker_values):
            strategies, values = [], list(picker_values)
            try:
                for picker in pickers:
                    count = len(picker.components)
                    strategies.append(picker.chosen(*values[:count]))
                    values = values[count:]
                play = self.new_play(scene, start, seed, strategies, request)
            except PLAY_ERRORS as error:
                gr.Warning(str(error))
                return view.status_only(f"Not started: {error}")
            if old is not None:
                old.close()
            return view.values(play, status_line(play))

        return restart

    def switch(self, view: PlayView, picker: StrategyPicker):
        """Handler: continue from the current state with another strategy."""

        def switch(request: gr.Request, play: PlaySession | None, *picker_values):
            try:
                strategy, params = picker.chosen(*picker_values)
                if play is None or play.closed:
                    play = self.new_play(None, None, None, [(strategy, params)], request)
                else:
                    play.switch_strategy(0, strategy, params)
            except PLAY_ERRORS as error:
                gr.Warning(str(error))
                return view.status_only(f"Strategy not changed: {error}")
            return view.values(play, status_line(play))

        return switch

    def step(self, view: PlayView, control: str, sides: int):
        """Handler: take the control's action ``repeat`` times, streaming every frame."""

        def step(play: PlaySession | None, repeat, pitch, yaw, request: gr.Request):
            try:
                action = control_action(control, number(pitch, "pitch"), number(yaw, "yaw"))
                times, note = repeat_count(repeat)
                if play is None or play.closed:
                    if sides > 1:
                        yield view.status_only("Press “Start comparison” first")
                        return
                    defaults = [(self.resources.strategy, self.resources.params)]
                    play = self.new_play(None, None, None, defaults, request)
            except PLAY_ERRORS as error:
                gr.Warning(str(error))
                yield view.status_only(f"Not played: {error}")
                return
            if note:
                gr.Warning(note)
            for _ in range(times):
                if play.closed:  # the tab closed meanwhile
                    return
                play.step(action)
                yield view.values(play, status_line(play, note))

        return step

    def forget(self, request: gr.Request) -> None:
        """Handler for a closed tab: free its plays and uploaded scene now, not when Gradio
        drops the tab's State (an hour later, or after ``IDLE_SECONDS`` untouched)."""
        for tab in (1, 2):
            play = self.open_plays.pop((request.session_hash, tab), None)
            if play is not None:
                play.close()
        scene = self.open_scenes.pop(request.session_hash, None)
        if scene is not None:
            scene.frames = np.zeros((0, *scene.frames.shape[1:]), np.uint8)  # not a view
            scene.actions, scene.world = [], None

    def load_scene(self, files: list[str] | None, request: gr.Request):
        """Handler: an uploaded mp4 + jsonl (and optional world sidecar json) as the scene.

        A scene that cannot be used raises gr.Error: the page shows why, and the chained
        restart does not run, so the current play goes on untouched."""
        by_suffix = {Path(path).suffix.lower(): Path(path) for path in files or []}
        if ".mp4" not in by_suffix or ".jsonl" not in by_suffix:
            raise gr.Error("Scene not loaded: upload an .mp4 and its .jsonl (and, optionally, "
                           "its world .json)")
        folder = Path(tempfile.mkdtemp(prefix="mineworld-scene-"))
        try:  # one stem for the files, whatever their uploaded names
            for suffix, path in by_suffix.items():
                shutil.copy(path, folder / f"scene{suffix}")
            name = by_suffix[".mp4"].stem
            scene = read_scene(folder / "scene.mp4", self.resources.tokenizer.frame_size, name)
        except (ValueError, OSError) as error:
            raise gr.Error(f"Scene not loaded: {error}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for note in scene.notes:
            gr.Warning(f"{scene.name}: {note}")
        if request is not None and request.session_hash:
            self.open_scenes[request.session_hash] = scene
        start = self.resources.default_start(scene)
        slider = gr.update(maximum=len(scene.frames) - 1, value=start)
        return scene, slider, describe_scene(scene)

    @staticmethod
    def export(play: PlaySession | None):
        if play is None or play.closed:
            gr.Warning("Nothing played yet")
            return None
        return str(play.export())


def describe_scene(scene: Scene) -> str:
    height, width = scene.frames.shape[1:3]
    truth = "true frames rendered by the world" if scene.world else "no true frames"
    notes = "".join(f"; {note}" for note in scene.notes)
    return f"**{scene.name}**: {len(scene.frames)} frames of {width}×{height}; {truth}{notes}"


def number(value, name: str) -> float:
    """``value`` as a finite float, else ValueError naming it."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def repeat_count(repeat) -> tuple[int, str]:
    """(times to step, a note when ``repeat`` was outside [1, MAX_REPEAT] and was clamped)."""
    wanted = number(repeat, "repeat")
    times = max(1, min(int(wanted), MAX_REPEAT))
    if times != wanted:
        return times, f"repeat is a whole number from 1 to {MAX_REPEAT}: stepped {times} times"
    return times, ""


def close_play(play: PlaySession | None) -> None:
    if play is not None:
        play.close()


@dataclass
class ActionPad:
    """Buttons for every control, the camera sliders and "repeat"."""

    buttons: dict[str, gr.Button]
    repeat: gr.Slider
    pitch: gr.Slider
    yaw: gr.Slider

    @classmethod
    def build(cls) -> ActionPad:
        with gr.Row():
            repeat = gr.Slider(1, MAX_REPEAT, value=1, step=1, label="Repeat n times")
            pitch = gr.Slider(-90, 90, value=0, step=1, label="Camera pitch (°, + looks down)")
            yaw = gr.Slider(-90, 90, value=0, step=1, label="Camera yaw (°, + turns right)")
        buttons = {}
        with gr.Row():
            for group, controls in CONTROL_GROUPS.items():
                with gr.Column(min_width=120), gr.Group():
                    gr.Markdown(f"**{group}**")
                    with gr.Row():
                        for name, (label, _key) in controls.items():
                            buttons[name] = gr.Button(label, size="sm", min_width=40,
                                                      elem_classes=control_class(name))
                    if group == "Camera":
                        buttons["look"] = gr.Button("Look (sliders)", size="sm")
        return cls(buttons, repeat, pitch, yaw)

    def wire(self, demo: Demo, view: PlayView, prefix: str) -> None:
        """Every button steps ``view``'s play; API names are ``<prefix>_<control>``."""
        for name, button in self.buttons.items():
            button.click(
                demo.step(view, name, len(view.images)),
                [view.state, self.repeat, self.pitch, self.yaw], view.outputs,
                api_name=f"{prefix}_{name.replace('.', '_').replace(' ', '_')}",
                concurrency_id=MODEL_QUEUE, show_progress="hidden",
            )


def build_demo(resources: Resources) -> gr.Blocks:
    """The whole page for ``resources``; launching it is the caller's business."""
    demo = Demo(resources)
    keys = {key: control_class(name) for name, (_label, key) in CONTROLS.items() if key}
    with gr.Blocks(title="MineWorld", delete_cache=(600, 3600)) as blocks:
        gr.HTML("", js_on_load=KEYBOARD_JS % json.dumps(keys), elem_id="keyboard")
        gr.Markdown("# MineWorld: play the world model\nKeys: W A S D move, Space jump, Shift "
                    "sneak, Ctrl sprint, Q drop, 1-9 hotbar, arrows turn the camera.")
        scene_state = gr.State(None)  # None: the shipped scene
        with gr.Accordion("Scene", open=False):
            scene_info = gr.Markdown(describe_scene(resources.scene))
            gr.Markdown(LIMITS_TEXT)
            with gr.Row():
                files = gr.File(file_count="multiple", file_types=SCENE_FILE_TYPES,
                                label="Your scene: an mp4, its jsonl (and world json)")
                start = gr.Slider(0, len(resources.scene.frames) - 1, step=1,
                                  value=resources.default_start(resources.scene),
                                  label="Start frame (play starts after it)")
                seed = gr.Number(resources.options.seed, precision=0, label="Seed (sampling)")

        with gr.Tab("Play"):
            with gr.Row():
                picker = StrategyPicker.build("Cache strategy", resources.strategy,
                                              resources.params)
            with gr.Row():
                apply = gr.Button("Apply strategy (continue from here)")
                reset = gr.Button("Reset to the start frame", variant="secondary")
                download = gr.Button("Download mp4")
            view = PlayView.build("play", ["Play"], close_play)
            pad = ActionPad.build()
            view.add_plots(["Play"])
            pad.wire(demo, view, "play")
            video = gr.File(label="Session video", interactive=False)
        restart = demo.restart(view, [picker])
        restart_inputs = [view.state, scene_state, start, seed, *picker.components]
        reset.click(restart, restart_inputs, view.outputs, api_name="reset",
                    concurrency_id=MODEL_QUEUE)
        apply.click(demo.switch(view, picker), [view.state, *picker.components], view.outputs,
                    api_name="apply_strategy", concurrency_id=MODEL_QUEUE)
        download.click(demo.export, view.state, video, api_name="download")
        blocks.load(restart, restart_inputs, view.outputs, concurrency_id=MODEL_QUEUE,
                    api_visibility="private")
        files.upload(demo.load_scene, files, [scene_state, start, scene_info],
                     api_name="load_scene").success(
            restart, restart_inputs, view.outputs, concurrency_id=MODEL_QUEUE)

        with gr.Tab("Compare"):
            with gr.Row():
                pickers = [
                    StrategyPicker.build("Strategy A", resources.strategy, resources.params),
                    StrategyPicker.build("Strategy B", *resources.comparison()),
                ]
            with gr.Row():
                compare = gr.Button("Start comparison from the start frame", variant="primary")
                compare_download = gr.Button("Download both as mp4")
            compare_view = PlayView.build("compare", ["A", "B"], close_play)
            compare_pad = ActionPad.build()
            compare_view.add_plots(["A", "B"])
            compare_pad.wire(demo, compare_view, "compare")
            compare_video = gr.File(label="Both sessions, side by side", interactive=False)
        compare.click(
            demo.restart(compare_view, pickers),
            [compare_view.state, scene_state, start, seed,
             *[c for p in pickers for c in p.components]],
            compare_view.outputs, api_name="compare", concurrency_id=MODEL_QUEUE,
        )
        compare_download.click(demo.export, compare_view.state, compare_video,
                               api_name="compare_download")
        blocks.unload(demo.forget)
    blocks.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return blocks


def launch(blocks: gr.Blocks, host: str, port: int, block: bool = True) -> str:
    """Serve offline on ``host:port``; returns the local URL (and blocks when ``block``)."""
    _app, url, _share = blocks.launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True,
        footer_links=[], run_history=False, prevent_thread_lock=True,
        max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=[],
    )
    print(f"{PROG}: serving on {url}", flush=True)
    if block:
        blocks.block_thread()
    return url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        started = time.perf_counter()
        blocks = build_demo(load_resources(args))
        print(f"{PROG}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
        launch(blocks, args.host, args.port)
    except USER_ERRORS as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


@functools.cache
def _default_demo() -> gr.Blocks:
    return build_demo(load_resources(parse_args([])))


def __getattr__(name: str):
    """``app.demo`` (what Hugging Face Spaces and ``gradio app.py`` look for), built on first
    use so that importing this module loads no model."""
    if name == "demo":
        return _default_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
