"""MineWorld in the browser: play the world model with keys or buttons, watch its KV cache, and
compare two cache strategies side by side.

    python app.py                      # the embedded model and scene, http://127.0.0.1:7860
    python app.py --model_ckpt m.ckpt --config 300M_16f --scene clip.mp4 --cache-strategy h2o

This file is the UI only: models load in ``mineworld.loading`` (or ``mineworld.embedded``), play
logic lives in ``mineworld.play`` and real-time play in ``mineworld.stream``. Every tab of every
user has its own ``Seat`` (its play and its controls) in a ``gr.State``; the model is shared and
read-only, and one ``FrameScheduler`` thread runs all model work, the frames of every player
waiting made together.

Frames stream to the page from a generator handler: holding a key plays until it is released,
each yield is the screen (the new frame and the true world's, small PNGs as data, drawn large
with crisp pixels), with the key queue when it changed and the status every
``KEY_STATUS_SECONDS`` while a key is held: the fewest outputs a frame, because the browser's
cost per frame is what the model shares two cores with (see docs/serving.md). Keys come, and
their frames go, through each tab's own WebSocket (``Demo.key_socket``) once it is open, with no
Gradio event a key nor Gradio update a frame; buttons and API calls go through Gradio. The strip and
the charts (one picture, drawn here) follow off the frame's path: the page asks for them when it
has painted new frames, at most every ``PLOT_SECONDS`` (``PLOT_PLAYING_SECONDS`` while frames
stream), so that an idle tab costs the server nothing.

Limits (a page for strangers): uploads of at most ``MAX_UPLOAD_MB`` each and
``MAX_REQUEST_MB`` a request, ``MAX_STORED_MB`` of Gradio's files in all, of the types the Scene
panel names, deleted once read; ``MAX_EVENTS_PER_CLIENT`` events waiting or running per client
address (all in ``RequestLimits``); ``MAX_SOCKETS_PER_CLIENT`` key sockets per client address,
messages of ``MAX_SOCKET_MESSAGE`` bytes; the first ``mineworld.play.MAX_SCENE_FRAMES``
frames of a video; at most ``MAX_REPEAT`` repeats a click; the newest
``mineworld.play.KEPT_FRAMES`` frames (plots, video) kept per side; a session freed when its tab
closes or after ``IDLE_SECONDS`` without a request; no file served but Gradio's own (its cache
of this app's outputs and uploads), of the page's own types. Each says so in the page (a
wrongly typed API value too, in one line naming the input) when it applies, and play goes on.
docs/serving.md has the whole table.

Exit status: 2 for a usage, model or scene error (one line on stderr), else when stopped.
"""

from __future__ import annotations

import os

# Before gradio is imported, or it calls home once at start-up: the demo runs offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import functools
import io
import json
import math
import re
import reprlib
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mineworld.cache_flags import add_cache_flags  # no torch: it loads after the flags
from mineworld.cli import (
    MAX_SEED,
    add_guidance_flag,
    add_sampling_flags,
    number_in,
    positive_int,
)
from mineworld.schedules import SCHEDULES
from mineworld.stream import MAX_PREPARED_ACTIONS, PREPARED_ACTIONS, PREPARED_CACHE_MB

PROG = "app.py"
# The page plays a bounded cache: no re-prefill stall once the context is full (`none`, MineWorld's
# own, is one pick away and is Compare's other side).
PAGE_STRATEGY = "frames"


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
    play.add_argument("--schedule", choices=list(SCHEDULES), default="diagonal",
                      help="diagonal: several tokens a forward pass (default); naive: one "
                      "token a pass, in raster order; published-diagonal: diagonal decoding "
                      "as the published code does it, token for token")
    play.add_argument("--diagd", dest="schedule", action="store_const", const="diagonal",
                      help="--schedule diagonal")
    play.add_argument("--no-diagd", dest="schedule", action="store_const", const="naive",
                      help="--schedule naive")
    play.add_argument("--window_size", type=positive_int,
                      help="diagonal decoding: tokens a row runs ahead (default: the model's, "
                      "1 for the embedded model, 2 for the published configs)")
    add_sampling_flags(play)
    add_guidance_flag(play)
    play.add_argument("--prepare-next", type=number_in(int, 0, MAX_PREPARED_ACTIONS), metavar="N",
                      help="while a player waits, make ahead the next frames of N likely keys "
                      "(their newest different keys, then W, the arrows, S, A, D, Space), each "
                      "on a copy of each side's cache: a tap of one shows its frame at once "
                      f"(default: {PREPARED_ACTIONS}, fewer when the copies would pass "
                      f"{PREPARED_CACHE_MB} MiB a side; at most {MAX_PREPARED_ACTIONS}; 0: none)")
    add_cache_flags(parser, "the page's first strategy; users may change it",
                    default_strategy=PAGE_STRATEGY)
    server = parser.add_argument_group("server")
    on_spaces = os.environ.get("SYSTEM") == "spaces"  # Spaces serves from a container
    server.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1")
    server.add_argument("--port", type=int, default=7860)
    # A browser on the same machine paints the frames: left a core, it paints sooner and more
    # of them (2-core host: tap -> painted p50 114 -> 99 ms, 12.3 -> 16.3 fps held).
    server.add_argument("--threads", type=positive_int, metavar="N",
                        default=None if on_spaces else 1,
                        help="torch threads for the model (default: 1, leaving the other cores "
                        "to the browser on the same machine; on Spaces, torch's own default)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parse_args()  # --help and bad flags answer here, before torch, gradio and the model load

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.datastructures import Address  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket, WebSocketDisconnect  # noqa: E402

from cache import STRATEGIES, declared, is_class_path, names, strategy_class  # noqa: E402
from mineworld.actions import make_action  # noqa: E402
from mineworld.cache_flags import strategy_params  # noqa: E402
from mineworld.charts import Panel, chart_image  # noqa: E402
from mineworld.decoding import Sampling  # noqa: E402
from mineworld.embedded import SCENE, demo_scene  # noqa: E402
from mineworld.loading import (  # noqa: E402
    USER_ERRORS,
    kv_budget_params,
    load_model,
    model_kv_bytes_per_token,
    one_line,
)
from mineworld.model import cache_layout  # noqa: E402
from mineworld.play import (  # noqa: E402
    KEPT_FRAMES,
    MAX_SCENE_FRAMES,
    MIB,
    PLOTS,
    QUALITY,
    Options,
    PlaySession,
    Scene,
    read_scene,
)
from mineworld.session import default_reference_frames, pick_device  # noqa: E402
from mineworld.stream import (  # noqa: E402
    MAX_QUEUED,
    Frame,
    FrameScheduler,
    Seat,
    prepared_actions_that_fit,
)
from mineworld.tokenizers.base import resize_frames  # noqa: E402
from mineworld.tuning import fit_target_fps  # noqa: E402
from mineworld.video import MAX_DECODED_PIXELS, MAX_SIDE  # noqa: E402
from mineworld.world import read_recording  # noqa: E402
from mineworld.world.truth import WorldProcess  # noqa: E402

# What a handler turns into a message in the page (the session goes on): bad values raise
# ValueError; int() of an infinite one raises OverflowError.
PLAY_ERRORS = (ValueError, OverflowError)
STRIP_FRAMES = 8
MAX_REPEAT = 32  # at most MAX_QUEUED: a repeat is that many queued presses
# How often the strip, plots and scores refresh: while frames stream, seldom, because redrawing
# the plots costs Chromium a few hundred ms of CPU, which a 2-core host takes from the frames.
# The page asks (a tick event) only when it has painted new frames: a Gradio event a tick, at
# 0.5 s, held 10 % of the server's interpreter (GIL) from the model while a key was held.
PLOT_SECONDS = 0.5
PLOT_PLAYING_SECONDS = 5.0
# How often a held key's frames carry the status line (a button's carry it with every frame).
KEY_STATUS_SECONDS = 0.5
KEEP_OPEN_SECONDS = 10.0
# A play's frames wait while this many of its session's messages wait unread, and stop once
# they have waited UNREAD_WAIT_SECONDS: nobody reads them (a join whose stream was never
# opened), so making more would only take the model from others. A page or API client reads
# each as it comes; a burst of key events may leave several unread for a moment.
MAX_UNREAD_MESSAGES = 8
UNREAD_WAIT_SECONDS = 2.0
MAX_UPLOAD_MB = 64  # per file; Gradio refuses a bigger upload before it is stored
# Per upload request, all its files together: a scene's mp4 and its jsonl and json (8 x 63 MB
# in one request stored 504 MB in 1.9 s). And for all of Gradio's files at once (uploads not
# read yet, the frames it serves, exported videos): an upload that would pass it waits.
MAX_REQUEST_MB = MAX_UPLOAD_MB + 8
MAX_STORED_MB = 1024
MAX_BODY_KB = 256  # any other request's body: an event's values are a few hundred bytes
SCENE_FILE_TYPES = [".mp4", ".jsonl", ".json"]
# What the page shows or offers as files: frames (png), videos, and the scene files a user
# uploaded. No other upload is served back (an .html or .svg one would run in the page).
SERVED_FILE_TYPES = {".png", *SCENE_FILE_TYPES}
# Gradio deletes its files older than 30 minutes, every 5 (uploads never read, frames, videos)
CACHE_SWEEP = (300, 1800)
CAMERA_KEY_DEG = 15.0  # how far one arrow key turns the camera
IDLE_SECONDS = 20 * 60  # a session that asks for nothing this long is freed (API clients too)
SWEEP_SECONDS = 30.0  # how often idle sessions are looked for
QUEUE_SIZE = 128
# How often Gradio's queue looks for new events while it has none (its own: every 1 ms, a
# thousand wake-ups a second that each take the interpreter lock from the model's thread; at
# 10 ms, W held 10 s: 132-138 frames made against 103-116, three alternate pairs). A button's
# event waits at most this much longer; keys and frames go through the tab's socket.
QUEUE_POLL_SECONDS = 0.01
# Events one client address may have waiting or running at once, so that one client cannot
# take the queue's QUEUE_SIZE places. A tab playing holds 2 (the event keeping its page's
# stream open, the key event driving its frames) and, for moments, a plots tick and key
# events: five taps in a burst are ten events, and 8 refused some of them (a refused key up
# leaves its key held). Its share of the model does not grow with its events: the scheduler
# makes one frame a client a pass.
MAX_EVENTS_PER_CLIENT = 16
MODEL_QUEUE = "model"  # the concurrency id of the events that prefill (frames do not wait)
# Each tab's keys and frames go through a WebSocket of its own once it is open (see
# Demo.key_socket): a Gradio event per key and a Gradio update per frame cost the browser, on
# the cores the model runs on, more than a frame. A page holds two (Play, Compare); a key
# event is a few dozen bytes.
KEYS_SOCKET_PATH = "/mineworld/keys"
MAX_SOCKETS_PER_CLIENT = MAX_EVENTS_PER_CLIENT
MAX_SOCKET_MESSAGE = 512
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused socket or message

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
# The controls most played, the most first: after a player's own newest keys, these are the
# ones whose next frames are made ahead (--prepare-next).
USUAL_CONTROLS = ("forward", "look left", "look right", "back", "left", "right", "jump",
                  "look up", "look down")

# Per tab: key down / key up of a control's key, or Escape (stop), sent as the tab's "control"
# event, only while the tab is shown (each tab's component is hidden with its tab); the frames
# painted in the last second are counted on the tab's first frame and shown; the strip and charts
# asked for (the tab's "tick" event) when new frames were painted.
KEYS_JS = r"""
const tab = %(tab)s, controls = %(controls)s, screenId = %(screen)s, socketPath = %(socket)s;
const plotMs = %(plot_ms)s, plotPlayingMs = %(plot_playing_ms)s;
const registry = (window.mineworldTabs = window.mineworldTabs || {});
const known = registry[tab];
registry[tab] = {element, trigger, held: known ? known.held : new Set(),
                 paints: known ? known.paints : [], painted: known ? known.painted : 0,
                 socket: known ? known.socket : null};
if (!known) {
  const me = () => registry[tab];
  const typing = (t) => ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName) || t.isContentEditable;
  const keyOf = (e) => (e.key.length === 1 ? e.key.toLowerCase() : e.key);
  let number = 0;  // orders the events: the server may receive them out of order
  // Keys and frames go through the tab's own WebSocket once it is open (app.Demo.key_socket),
  // through Gradio's events until then: the page binds the socket's token to its tab first.
  const token = Array.from(crypto.getRandomValues(new Uint8Array(16)),
                           (byte) => byte.toString(16).padStart(2, '0')).join('');
  const connect = (retry) => {
    me().trigger('control', {bind: token});
    // Gradio's root: the page's own address as its server sees it (a proxy's path included)
    const root = window.gradio_config?.root || document.baseURI.replace(/\/$/, '');
    const url = new URL(root + socketPath + '?token=' + token);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const opening = new WebSocket(url);
    opening.onopen = () => { me().socket = opening; retry = 200; };
    opening.onmessage = (e) => show(JSON.parse(e.data));
    opening.onclose = () => {
      if (me().socket === opening) me().socket = null;
      setTimeout(() => connect(Math.min(2 * retry, 5000)), retry);
    };
  };
  connect(200);
  const send = (data) => {
    const event = {...data, number: ++number};
    const socket = me().socket;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(event));
    else me().trigger('control', event);
  };
  // A socket's message: the screen, the queue and the status, as Gradio would show them.
  const show = (message) => {
    if (message.screen) draw(message.screen.frames);
    const queue = document.querySelector(`#queue-${tab} p`);
    if (message.queue !== undefined && queue) queue.textContent = message.queue;
    const status = document.querySelector(`#status-${tab} textarea`);
    if (message.status !== undefined && status) {
      status.value = message.status;
      status.dispatchEvent(new Event('input'));
    }
  };
  const draw = (frames) => {
    const root = document.querySelector(`#${screenId} .mineworld-screen`);
    if (!root) return;
    const figures = [...root.querySelectorAll('figure')];
    const same = figures.length === frames.length && frames.every((f, i) => figures[i].id === f.id);
    if (!same) {  // the true world shown or hidden: the figures as the screen's template makes them
      root.replaceChildren(...frames.map((f) => {
        const figure = document.createElement('figure');
        figure.id = f.id;
        figure.className = 'mineworld-frame';
        figure.append(document.createElement('img'), document.createElement('figcaption'));
        return figure;
      }));
    }
    frames.forEach((f, i) => {
      const figure = root.children[i], img = figure.querySelector('img');
      img.src = f.src;
      img.alt = f.caption;
      figure.querySelector('figcaption').textContent = f.caption;
    });
  };
  document.addEventListener('keydown', (e) => {
    if (typing(e.target) || e.altKey || e.metaKey || me().element.offsetParent === null) return;
    if (e.key === 'Escape') { me().held.clear(); send({stop: true}); return; }
    const key = keyOf(e), control = controls[key];
    if (!control) return;
    if (key === ' ' || key.startsWith('Arrow')) e.preventDefault();
    if (e.repeat || me().held.has(control)) return;
    me().held.add(control);
    send({control, down: true});
  });
  document.addEventListener('keyup', (e) => {
    const control = controls[keyOf(e)];
    if (!control || !me().held.delete(control)) return;
    send({control, down: false});
  });
  const releaseAll = () => {
    for (const control of me().held) send({control, down: false});
    me().held.clear();
  };
  window.addEventListener('blur', releaseAll);
  document.addEventListener('visibilitychange', () => { if (document.hidden) releaseAll(); });
  // A frame counts as painted once its number is in the screen's first caption and its image
  // has loaded, at the next animation frame.
  let shownNumber = -1;
  const painted = (number) => requestAnimationFrame(() => {
    const now = performance.now(), state = me();
    state.paints.push(now);
    state.painted++;
    if (state.log) state.log.push([now, number]);  // benchmarks.page_latency reads it
  });
  const check = (root) => {
    const first = root.querySelector('figure');
    const match = /frame (\d+)/.exec(first?.querySelector('figcaption')?.textContent || '');
    const number = match ? Number(match[1]) : -1;
    if (number === shownNumber) return;
    shownNumber = number;
    const img = first.querySelector('img');
    if (!img || img.complete) painted(number);
    else img.addEventListener('load', () => painted(number), {once: true});
  };
  const watching = new WeakSet();
  let ticked = {at: -Infinity, painted: 0};  // the last time the strip and charts were asked for
  setInterval(() => {
    const root = document.getElementById(screenId);
    if (root && !watching.has(root)) {
      watching.add(root);
      new MutationObserver(() => check(root)).observe(
        root, {subtree: true, childList: true, characterData: true, attributes: true,
               attributeFilter: ['src']});
    }
    const now = performance.now(), state = me();
    state.paints = state.paints.filter((t) => now - t < 1000);
    const shown = state.element.querySelector('.painted');
    if (shown) {
      shown.textContent = `painted ${state.paints.length} fps`;
      shown.dataset.painted = state.painted;
    }
    const streaming = now - (state.paints.at(-1) ?? -Infinity) < 300;  // seldom meanwhile
    if (state.painted !== ticked.painted && now - ticked.at >= (streaming ? plotPlayingMs : plotMs)
        && state.element.offsetParent !== null) {
      ticked = {at: now, painted: state.painted};
      state.trigger('tick');
    }
  }, 250);
}
"""
PAINTED_HTML = '<span class="painted" data-painted="0">painted 0 fps</span>'
CSS = """
.mineworld-strip-label { font-size: var(--text-sm); }
/* Every frame of the strip in view: they shrink to share the column (Compare's is half). */
.mineworld-strip-frames { display: flex; gap: 6px; }
.mineworld-strip figure { flex: 1 1 0; min-width: 0; max-width: 96px; margin: 0; }
.mineworld-strip img { display: block; width: 100%; image-rendering: pixelated; }
.mineworld-strip figcaption { font-size: var(--text-xs); overflow-wrap: anywhere; }
.painted { font-variant-numeric: tabular-nums; }
"""


LIMITS_TEXT = (
    f"Limits: uploads up to {MAX_UPLOAD_MB} MB a file ({', '.join(SCENE_FILE_TYPES)}); the "
    f"first {MAX_SCENE_FRAMES} frames of a video are read, of at most {MAX_SIDE} px a side and "
    f"{MAX_DECODED_PIXELS / 1e6:.0f} M pixels in all; a click repeats at most "
    f"{MAX_REPEAT} times; each side keeps its newest {KEPT_FRAMES} frames for the strip, plots "
    "and video. A tab's session is freed when it closes or after "
    f"{IDLE_SECONDS // 60} idle minutes."
)


def return_freed_memory() -> None:
    """Hand the memory that freed sessions leave in glibc's heaps back to the system: glibc
    keeps it for reuse, and scattered among live blocks it is rarely reused, so the server's
    RSS would grow with every session that came and went. Nothing on other C libraries."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def control_class(name: str) -> str:
    return "control-" + name.replace(".", "-").replace(" ", "-")


def control_action(name: str, pitch: float, yaw: float) -> dict:
    """The action of a control: its button, or its camera move; "look" turns by the sliders."""
    if name == "look":
        return make_action((), pitch, yaw)
    if name in CAMERA_MOVES:
        return make_action((), *CAMERA_MOVES[name])
    return make_action([name])


# -- resources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What every user shares, read-only: the model, its tokenizer, the defaults."""

    model: object
    tokenizer: object
    scene: Scene
    strategy: str
    params: dict
    options: Options
    # The pickers take any package.module:Class typed in, not only the listed strategies:
    # importing a module runs its code, so only where the page is served to this machine.
    any_class_path: bool = False
    prepare_next: int = PREPARED_ACTIONS  # FrameScheduler's: frames made ahead per player

    def comparison(self) -> tuple[str, dict]:
        """Strategy B of the Compare tab at first, with its defaults for the model: when A
        keeps a budget, the first registered strategy that keeps the whole context; else
        the last registered one that keeps a budget."""
        bounded = strategy_class(self.strategy).bounded
        others = [name for name, cls in STRATEGIES.items() if cls.bounded != bounded]
        return (others[-1] if not bounded else others[0]), {}

    @property
    def strategy_choices(self) -> list[str]:
        """The pickers' list: every registered strategy, and the command line's class."""
        return names() + ([self.strategy] if is_class_path(self.strategy) else [])

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
    if args.threads:
        torch.set_num_threads(args.threads)
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
    sampling = Sampling.from_flags(model.config, args.temperature, args.top_k,
                                  repeat_penalty=args.repeat_penalty, guidance=args.guidance,
                                  overuse_penalty=args.overuse_penalty)
    schedule = args.schedule
    if args.target_fps is not None:
        fit = fit_target_fps(model, tokenizer, args.cache_strategy, params, args.target_fps,
                             schedule, reference, window)
        print(f"{PROG}: {fit}", flush=True)
        params, schedule = fit.params, fit.schedule
    options = Options(reference, schedule, window, sampling, args.seed, WorldProcess())
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    prepare_next = args.prepare_next
    if prepare_next is None:
        prepare_next = prepared_actions_that_fit(model_kv_bytes_per_token(model.config, dtype)
                                                 * cache_layout(model.config).context_tokens)
    resources = Resources(model, tokenizer, scene, args.cache_strategy, params, options,
                          any_class_path=loopback, prepare_next=prepare_next)
    PlaySession(  # bad settings fail here, before the server starts
        model, tokenizer, scene, resources.default_start(scene), [(args.cache_strategy, params)],
        options,
    ).close()
    return resources


# -- UI ----------------------------------------------------------------------------------------


@dataclass
class StrategyPicker:
    """A strategy dropdown and, for every declared strategy, an input per parameter that has a
    default for the loaded model, holding it (a flag's value for the command line's strategy);
    only the chosen strategy's inputs are visible. A ``package.module:Class`` of the (K, V)
    protocol shows the ``custom`` adapter's, none: it keeps its own ``cache_size`` (an input
    without a value would be a required argument of the page's API)."""

    dropdown: gr.Dropdown
    inputs: dict[tuple[str, str], gr.components.Component]  # (strategy, parameter) -> input
    resources: Resources  # the loaded model, and the strategies the page takes

    @classmethod
    def build(cls, label: str, strategy: str, params: dict, resources: Resources
              ) -> StrategyPicker:
        layout = cache_layout(resources.model.config)
        shown = input_group(strategy)
        inputs = {}
        with gr.Column(), gr.Row():
            dropdown = gr.Dropdown(resources.strategy_choices, value=strategy, label=label,
                                   allow_custom_value=resources.any_class_path)
            for group, declaration in declared().items():
                defaults = declaration.defaults(layout)
                if group == shown:
                    defaults = {**defaults, **params}
                for param in declaration.settable():
                    value, visible = defaults.get(param.name), group == shown
                    if value is None:
                        continue
                    tip = f"{param.help} ({param.range_text})"
                    if param.type is bool:
                        component = gr.Checkbox(value=bool(value), label=param.name, info=tip,
                                                visible=visible)
                    else:  # no minimum / maximum: the strategy's message names the range
                        component = gr.Number(value=value, label=param.name, info=tip,
                                              precision=0 if param.type is int else None,
                                              visible=visible, min_width=100)
                    inputs[group, param.name] = component
            # A Textbox: Gradio's Number shows an empty value as 0, a budget nobody asked for.
            budget = gr.Textbox(label="KV MiB", placeholder="e.g. 1", max_length=32,
                                info="Enter: fill in the values that keep this much",
                                min_width=90)
        picker = cls(dropdown, inputs, resources)
        dropdown.change(picker.show_parameters, dropdown, list(inputs.values()),
                        api_visibility="private")
        budget.submit(picker.fit_budget, [dropdown, budget], list(inputs.values()),
                      api_visibility="private")
        return picker

    @property
    def components(self) -> list:
        return [self.dropdown, *self.inputs.values()]

    def show_parameters(self, strategy: str) -> list:
        try:
            shown = input_group(self.checked_spec(strategy))
        except ValueError:
            shown = None
        return [gr.update(visible=group == shown) for group, _param in self.inputs]

    def fit_budget(self, strategy: str, megabytes) -> list:
        """The chosen strategy's inputs set to the values that keep ``megabytes`` MiB of KV
        cache on the loaded model (as ``--kv-budget-mb``); the others unchanged."""
        model = self.resources.model
        try:
            shown = input_group(self.checked_spec(strategy))
            fitted = kv_budget_params(strategy, number(megabytes, "KV MiB"), model.config,
                                      model.lm_head.weight.dtype, "KV MiB")
        except ValueError as error:
            warn_refused(str(error))
            return [gr.skip()] * len(self.inputs)
        return [gr.update(value=fitted[param]) if group == shown and param in fitted
                else gr.skip() for group, param in self.inputs]

    def checked_spec(self, strategy: str) -> str:
        """``strategy`` if this page takes it: a registered name, or a class path the page
        was started with or (``any_class_path``) any class path; else ValueError."""
        if not isinstance(strategy, str) or not strategy:
            raise ValueError(f"strategy must be one of {', '.join(names())}, got {strategy!r}")
        if (is_class_path(strategy) and not self.resources.any_class_path
                and strategy not in self.resources.strategy_choices):
            raise ValueError(f"this page takes the strategies listed ({', '.join(names())}); a "
                             "package.module:Class only when it is served on 127.0.0.1")
        return strategy

    def chosen(self, strategy: str, *values) -> tuple[str, dict]:
        """(strategy, its parameters) from the picker's component values: the chosen
        strategy's inputs that are filled (an empty one keeps its default for the model);
        ValueError for a strategy the page does not take (the strategy checks the values)."""
        group = input_group(self.checked_spec(strategy))
        given = dict(zip(self.inputs, values, strict=True))
        return strategy, {param: value for (owner, param), value in given.items()
                          if owner == group and value is not None}


def input_group(strategy: str) -> str:
    """Whose inputs a strategy shows: its own declaration's (a class path of the (K, V)
    protocol: the custom adapter's)."""
    return strategy_class(strategy).name


@dataclass
class PlayView:
    """One tab's display: the screen (per side a frame, and the true world's); the status, the
    keys held and queued, the painted frame rate; then per side a strip, and the charts.

    ``frame_outputs`` change with every frame; ``plot_outputs`` at ``PLOT_SECONDS``."""

    name: str
    labels: list[str]
    state: gr.State
    screen: gr.HTML  # its value: see screen_value
    queue: gr.Markdown
    keys: gr.HTML
    stop: gr.Button
    truth: bool = False  # the true world's frame beside the generated ones, when there is one
    status: gr.Textbox | None = None
    strips: list[gr.HTML] = dataclasses.field(default_factory=list)
    charts: gr.Image | None = None

    @classmethod
    def build(cls, name: str, labels: list[str], close_seat, height: int,
              frame_size: tuple[int, int], truth: bool = False) -> PlayView:
        """The screen: each side's frame (of ``frame_size``, drawn ``height`` pixels high at
        most; with ``truth``, the true world's frame beside them when the scene has a world);
        the key queue and Stop; ``add_plots`` renders the status, strips and charts."""
        usual = [control_action(name, 0.0, 0.0) for name in USUAL_CONTROLS]
        state = gr.State(Seat(usual), time_to_live=IDLE_SECONDS, delete_callback=close_seat)
        screen = gr.HTML(None, html_template=SCREEN_TEMPLATE,
                         css_template=SCREEN_CSS % {
                             "width": round(height * frame_size[0] / frame_size[1])},
                         js_on_load=None,
                         elem_id=f"screen-{name}", min_height=height)
        with gr.Row(equal_height=True):
            controls = {key: name for name, (_label, key) in CONTROLS.items() if key}
            keys = gr.HTML(PAINTED_HTML, elem_id=f"keys-{name}", min_width=120, scale=0,
                           js_on_load=KEYS_JS % {
                               "tab": json.dumps(name), "controls": json.dumps(controls),
                               "screen": json.dumps(f"screen-{name}"),
                               "socket": json.dumps(KEYS_SOCKET_PATH),
                               "plot_ms": 1000 * PLOT_SECONDS,
                               "plot_playing_ms": 1000 * PLOT_PLAYING_SECONDS})
            queue = gr.Markdown(queue_text(None), elem_id=f"queue-{name}")
            stop = gr.Button("Stop (Esc)", variant="stop", size="sm", scale=0, min_width=100,
                             elem_id=f"stop-{name}")
        return cls(name, labels, state, screen, queue, keys, stop, truth)

    def add_plots(self, labels: list[str]) -> None:
        """The status, each side's strip, then the charts (see ``charts``)."""
        self.status = gr.Textbox(label="Status", interactive=False, lines=1, max_lines=3,
                                 elem_id=f"status-{self.name}")
        with gr.Row():
            for label in labels:
                self.strips.append(gr.HTML(None, html_template=STRIP_TEMPLATE,
                                           elem_id=f"strip-{side_tag(label)}"))
        self.charts = gr.Image(label="Cache, memory, speed and quality, per frame",
                               show_label=False, format="png", interactive=False, buttons=[],
                               elem_id=f"charts-{self.name}")

    @property
    def frame_outputs(self) -> list:
        return [self.state, self.status, self.screen, self.queue]

    @property
    def plot_outputs(self) -> list:
        return [*self.strips, self.charts]

    @property
    def outputs(self) -> list:
        return self.frame_outputs + self.plot_outputs

    def status_only(self, message: str, outputs: list) -> list:
        """Values for ``outputs`` (``frame_outputs`` or ``outputs``) that change nothing but
        the status line, the second of both lists."""
        return [gr.skip(), message, *[gr.skip()] * (len(outputs) - 2)]

    def unchanged(self) -> list:
        """Values for ``frame_outputs`` that change nothing."""
        return [gr.skip()] * len(self.frame_outputs)

    def socket_message(self, values: list) -> str | None:
        """``frame_outputs`` values as a key socket's message, ``{"status", "screen",
        "queue"}`` with only those not skipped (the page shows them as Gradio would); None
        when nothing changes."""
        shown = {name: value for name, value in zip(("status", "screen", "queue"), values[1:],
                                                    strict=True) if value != gr.skip()}
        return json.dumps(shown) if shown else None

    def queue_values(self, seat: Seat) -> list:
        """Values for ``frame_outputs`` that show only the keys held and queued."""
        return [seat, gr.skip(), gr.skip(), queue_text(seat)]

    def frame_values(self, seat: Seat, note: str = "", frame: Frame | None = None,
                     status: bool = True, queue: bool = True) -> list:
        """Values for ``frame_outputs``: ``frame`` (by default the newest) on the screen, the
        status and the queue (each skipped when not asked for); only the queue once the play
        has closed (its tab went)."""
        play = seat.play
        if play is None or play.closed:
            return self.queue_values(seat)
        number, frames = ((frame.number, frame.images) if frame
                          else (play.frames_played, play.newest_frames()))
        truth = play.truth_frame(number) if self.truth and seat.show_truth else None
        return [seat, status_line(play, note, number) if status else gr.skip(),
                screen_value(self.name, self.labels, number, frames, truth),
                queue_text(seat) if queue else gr.skip()]

    def plot_values(self, seat: Seat) -> list:
        """Values for ``plot_outputs``; every one skipped when nothing changed since the last
        call (how often the page asks: ``KEYS_JS``)."""
        play = seat.play
        shown = None if play is None or play.closed else (id(play), play.frames_played,
                                                          play.describe_sides())
        if shown is None or shown == seat.shown:
            return [gr.skip()] * len(self.plot_outputs)
        seat.shown = shown
        strips = [strip_value(label, side.newest(STRIP_FRAMES))
                  for label, side in zip(self.labels, play.sides, strict=True)]
        return [*strips, charts(play, self.labels)]

    def values(self, seat: Seat, note: str = "") -> list:
        """Values for every output, in ``outputs`` order."""
        seat.shown = None
        return self.frame_values(seat, note) + self.plot_values(seat)


# The y axis of each chart (PLOTS and QUALITY).
PLOT_UNITS = {"tokens": "tokens", "kv": "MB", "memory": "MB", "ms": "ms", "fps": "frames/s",
              "hit": "share", "psnr": "dB", "ssim": ""}
CHART_PANEL = (330, 210)  # pixels; four a row: a tab's eight charts in 1320 x 420


def charts(play: PlaySession, labels: list[str]) -> Image.Image | None:
    """One image of ``play``'s charts: per ``PLOTS`` entry, each side's series (named
    "<side>: <series>" when there are two sides), then the ``QUALITY`` measures. Cache and
    memory axes start at 0, so that memory that does not move is drawn flat.

    None before the first frame: that picture of empty panels is the same for every play, and
    Gradio rewrites a cached file at each save, so sessions starting together rewrote one file
    while another's client was downloading it (read short)."""
    if not play.frames_played:
        return None
    panels = []
    sides = [side.plot_series() for side in play.sides]
    for name, (title, _columns) in PLOTS.items():
        lines = {}
        for label, side in zip(labels, sides, strict=True):
            prefix = f"{label}: " if len(labels) > 1 else ""
            lines.update({prefix + line: points for line, points in side[name].items()})
        panels.append(Panel(title, PLOT_UNITS[name], lines, y_from_zero=True, whole_x=True))
    for measure, title in QUALITY.items():  # SSIM may be negative: its own range
        panels.append(Panel(title, PLOT_UNITS[measure], play.quality_series(measure),
                            whole_x=True))
    return chart_image(panels, columns=4, size=CHART_PANEL, legend="panel")


TRUTH_LABEL = "The true world: frame %d"
# A side's newest frames, each with the action that made it (strip_value).
STRIP_TEMPLATE = """<div class="mineworld-strip"><div class="mineworld-strip-label">{{value.label}}
</div><div class="mineworld-strip-frames">{{#each value.frames}}<figure><img src="{{src}}"
alt="{{caption}}"><figcaption>{{caption}}</figcaption></figure>{{/each}}</div></div>"""
# The screen: one output a frame, its value data (see screen_value); the page draws it. Images
# ride in the value as PNG data URIs: no file written, no request made, per frame.
SCREEN_TEMPLATE = """<div class="mineworld-screen">{{#each value.frames}}<figure id="{{id}}"
class="mineworld-frame"><img src="{{src}}" alt="{{caption}}"><figcaption>{{caption}}</figcaption>
</figure>{{/each}}</div>"""
# Frames are tiny (64 x 48 for the embedded model): sent as they are, drawn large with square
# pixels by the browser instead of upscaled and encoded large on the frame's path.
SCREEN_CSS = """
.mineworld-screen { display: flex; gap: 8px; justify-content: center; }
.mineworld-frame { flex: 0 1 %(width)dpx; min-width: 0; margin: 0; }
.mineworld-frame img { display: block; width: 100%%; height: auto; image-rendering: pixelated; }
.mineworld-frame figcaption { font-size: var(--text-sm); padding-top: 2px; }
"""


def png_data_uri(image: np.ndarray) -> str:
    """``image`` (uint8 ``[H, W, 3]``) as a PNG data URI (lossless; a 64 x 48 frame is ~6 KB)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def screen_value(tab: str, labels: list[str], number: int, frames: list[np.ndarray],
                 truth: tuple[int, np.ndarray] | None) -> dict:
    """The screen's value: ``{"frames": [{"id", "caption", "src"}, ...]}``, each side's
    ``frames`` at ``number`` (ids ``frame-<side>``), then the true world's (``truth``: its
    number and frame; id ``truth-<tab>``). API clients read the images with
    :func:`screen_images`."""
    shown = [(f"frame-{side_tag(label)}", frame_label(label, number), frame)
             for label, frame in zip(labels, frames, strict=True)]
    if truth is not None:
        shown.append((f"truth-{tab}", TRUTH_LABEL % truth[0], truth[1]))
    return {"frames": [{"id": id_, "caption": caption, "src": png_data_uri(frame)}
                       for id_, caption, frame in shown]}


def strip_value(label: str, newest: list[tuple[np.ndarray, str]]) -> dict:
    """A side's strip: ``{"label", "frames": [{"caption", "src"}, ...]}``, its ``newest``
    frames and their actions, oldest first (images inline, as the screen's)."""
    return {"label": f"{label}: last frames",
            "frames": [{"caption": caption, "src": png_data_uri(frame)}
                       for frame, caption in newest]}


def screen_images(value: dict) -> dict[str, np.ndarray]:
    """The images of a screen value (:func:`screen_value`), by id: uint8 ``[H, W, 3]``."""
    def decoded(src: str) -> np.ndarray:
        data = base64.b64decode(src.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    return {shown["id"]: decoded(shown["src"]) for shown in value["frames"]}


def frame_label(label: str, number: int) -> str:
    """The caption of a side's frame; the page counts painted frames by its number."""
    if number == 0:  # sharper than what follows: say why
        return f"{label}: frame 0, the scene's own (real, not generated)"
    return f"{label}: frame {number}"


def side_tag(label: str) -> str:
    return label.lower().replace(" ", "-")


def status_line(play: PlaySession, note: str = "", played: int | None = None) -> str:
    """Where play stands: frames (``played``, by default all made), strategies, the speed of
    the newest frame per side, its quality scores, and ``note`` (a limit that applied)."""
    speeds = [f"{side.rows[-1]['fps']:.1f} fps" for side in play.sides if side.rows]
    played = f"{play.frames_played if played is None else played} frames played"
    if play.truncated:
        played += f" (the newest {len(play.sides[0].frames)} kept)"
    parts = [f"{play.scene.name}.mp4 from frame {play.start}", played,
             play.describe_sides(), *speeds, play.latest_quality(), note]
    return " · ".join(part for part in parts if part)


def queue_text(seat: Seat | None) -> str:
    """The keys held and the presses waiting, e.g. "Held: W forward · Queued: ↑ ×2, Space"."""
    if seat is None:
        return "Held: none · Queued: none"
    held = " + ".join(CONTROLS[name][0] for name in seat.controls.held) or "none"
    runs: list[list] = []
    for name in seat.controls.queued:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    queued = ", ".join(CONTROLS.get(name, (name,))[0] + (f" ×{count}" if count > 1 else "")
                       for name, count in runs)
    return f"Held: {held} · Queued: {queued or 'none'}"


def client_address(request) -> str | None:
    """The address ``request`` came from (the model's time is shared out by it), if known."""
    client = getattr(request, "client", None)
    return client.host if client else None


def free_idle_sessions_forever(demo: weakref.ref) -> None:
    """Free idle sessions every ``SWEEP_SECONDS`` while the demo exists."""
    while (alive := demo()) is not None:
        alive.free_idle_sessions()
        del alive  # not held while asleep: the demo may go
        time.sleep(SWEEP_SECONDS)


class SocketCaller(NamedTuple):
    """Who a key socket plays for: what handlers read of a ``gr.Request``, taken from the page
    event that bound it."""

    session_hash: str
    client: Address | None


class KeySocket(NamedTuple):
    """What a key socket's token opens: a tab's view and seat (weakly: its State owns it)."""

    view: PlayView
    seat: weakref.ref
    sides: int
    caller: SocketCaller


@contextlib.contextmanager
def counted(counts: dict[str, int], key: str):
    """``counts[key]`` one higher while the block runs; a key back at 0 is dropped, so that only
    addresses with something open are kept."""
    counts[key] = counts.get(key, 0) + 1
    try:
        yield
    finally:
        counts[key] -= 1
        if not counts[key]:
            del counts[key]


def key_message(text) -> dict | None:
    """A key socket's message as ``Demo.key_event`` takes it (a JSON object of at most
    ``MAX_SOCKET_MESSAGE`` characters), or None when it is not one."""
    if not isinstance(text, str) or len(text) > MAX_SOCKET_MESSAGE:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class Demo:
    """The event handlers; they share the read-only resources and the model's scheduler, and
    nothing else."""

    def __init__(self, resources: Resources):
        self.resources = resources
        self.scheduler = FrameScheduler(prepare_next=resources.prepare_next)
        # Plays by (session hash, sides: 1 on the Play tab, 2 on Compare) so that closing the
        # tab frees them at once; weak, so the State stays their owner.
        self.open_plays: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # Uploaded scenes by session hash, likewise, so that a closed tab's frames go at once.
        self.open_scenes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # When each session last asked for something: API clients never close a tab, so their
        # plays and scenes are freed once idle (IDLE_SECONDS), by a thread of their own.
        self.last_active: dict[str, float] = {}
        self.blocks: gr.Blocks | None = None  # the page, once built: its queue's messages
        self.sockets: dict[str, KeySocket] = {}  # key sockets' tokens -> what each plays
        self.socket_clients: dict[str, int] = {}  # client address -> its open key sockets
        threading.Thread(target=free_idle_sessions_forever, args=(weakref.ref(self),),
                         name="idle-sessions", daemon=True).start()

    def touch(self, request) -> None:
        """Note that ``request``'s session is active now."""
        if request is not None and request.session_hash:
            self.last_active[request.session_hash] = time.monotonic()

    def free_idle_sessions(self) -> None:
        """Free every session that has asked for nothing for ``IDLE_SECONDS``."""
        now = time.monotonic()
        for session, last in list(self.last_active.items()):
            if now - last > IDLE_SECONDS:
                self.free_session(session)

    def free_session(self, session: str) -> None:
        """Free a session's plays (both tabs) and uploaded scene now."""
        self.last_active.pop(session, None)
        for token, bound in list(self.sockets.items()):
            if bound.caller.session_hash == session:
                del self.sockets[token]
        for tab in (1, 2):
            play = self.open_plays.pop((session, tab), None)
            if play is not None:
                self.scheduler.call(play.close)  # after the frame it may be making
        scene = self.open_scenes.pop(session, None)
        if scene is not None:
            scene.free()
        return_freed_memory()

    def new_play(self, scene: Scene | None, start: int | None, seed: int | None, strategies,
                 request) -> PlaySession:
        """A play of ``strategies`` (prefilled on the model's thread); None picks the shipped
        scene, its start frame, the seed."""
        resources = self.resources
        scene = scene or resources.scene
        start = resources.default_start(scene) if start is None else int(number(start, "start"))
        options = resources.options
        if seed is not None:
            if not (isinstance(seed, (int, float)) and math.isfinite(seed)
                    and 0 <= seed <= MAX_SEED):
                raise ValueError(f"seed must be a whole number in [0, 2**63), got {seed!r}")
            options = dataclasses.replace(options, seed=int(seed))
        play = self.scheduler.call(PlaySession, resources.model, resources.tokenizer, scene,
                                   start, strategies, options, client=client_address(request))
        if request is not None and request.session_hash:
            self.open_plays[(request.session_hash, len(strategies))] = play
        self.touch(request)
        return play

    def replace_play(self, seat: Seat, play: PlaySession) -> None:
        """Seat ``play``; the old play closes after the frame it may be making."""
        old, seat.play = seat.play, play
        if old is not None:
            self.scheduler.submit(old.close)
        seat.prepare_next(self.scheduler)

    def close_seat(self, seat: Seat | None) -> None:
        """A tab's State dropped: stop its keys, free its play."""
        if seat is not None:
            seat.controls.stop()
            self.replace_play(seat, None)

    def restart(self, view: PlayView, pickers: list[StrategyPicker]):
        """Handler: a new play from the scene's start frame with the pickers' strategies."""

        # gr.Request comes first: Gradio passes it by position, and *picker_values follows.
        def restart(request: gr.Request, seat: Seat, scene: Scene | None, start, seed,
                    *picker_values):
            strategies, values = [], list(picker_values)
            try:
                for picker in pickers:
                    count = len(picker.components)
                    strategies.append(picker.chosen(*values[:count]))
                    values = values[count:]
                play = self.new_play(scene, start, seed, strategies, request)
            except PLAY_ERRORS as error:
                warn_refused(str(error))
                return view.status_only(f"Not started: {error}", view.outputs)
            self.replace_play(seat, play)
            return view.values(seat)

        return restart

    def restart_if(self, view: PlayView, pickers: list[StrategyPicker], playing: bool):
        """``restart`` only when the seat has an open play (``playing``: the start frame or
        the seed changed under it) or only when it has none (``not playing``: a tab opened,
        so that it shows frames and takes keys at once); else nothing changes."""
        restart = self.restart(view, pickers)

        def restart_if(request: gr.Request, seat: Seat, *inputs):
            if (seat.play is not None and not seat.play.closed) != playing:
                return [gr.skip()] * len(view.outputs)
            return restart(request, seat, *inputs)

        return restart_if

    def switch(self, view: PlayView, picker: StrategyPicker):
        """Handler: continue from the current state with another strategy. Outputs: the
        view's, then the picker's dropdown, which a refusal sets back to the strategy that
        plays on."""

        def switch(request: gr.Request, seat: Seat, *picker_values):
            try:
                strategy, params = picker.chosen(*picker_values)
                if seat.play is None or seat.play.closed:
                    self.replace_play(
                        seat, self.new_play(None, None, None, [(strategy, params)], request))
                else:
                    self.scheduler.call(seat.play.switch_strategy, 0, strategy, params)
                    seat.prepare_next(self.scheduler)  # what was made ahead was the old one's
            except PLAY_ERRORS as error:
                warn_refused(str(error))
                playing = (self.resources.strategy if seat.play is None or seat.play.closed
                           else seat.play.sides[0].strategy)
                return [*view.status_only(f"Strategy not changed: {error}", view.outputs),
                        playing]
            return [*view.values(seat), gr.skip()]

        return switch

    async def seated(self, seat: Seat, sides: int, request) -> str:
        """"" once ``seat`` has an open play (the Play tab starts the default one), else why
        not. The seat's frames are asked for as ``request``'s client address's."""
        seat.client = client_address(request)
        if seat.play is not None and not seat.play.closed:
            return ""
        if sides > 1:
            return "No comparison yet: open the Compare tab (or call /compare) first"
        defaults = [(self.resources.strategy, self.resources.params)]
        play = await asyncio.to_thread(self.new_play, None, None, None, defaults, request)
        self.replace_play(seat, play)
        return ""

    async def drive(self, view: PlayView, seat: Seat, request, note: str = "",
                    status_seconds: float = 0.0):
        """Frame values while the seat's controls ask for frames, then the queue as it is
        left. The status goes with a frame at most every ``status_seconds`` (a held key's
        frames: the page's text fields cost the browser more than the frame), the queue when
        it changed, and both with the last values. While another event drives, nothing: its
        next frame shows this input, and a queue shown from here could reach the page after
        that driver's last values (a generator's values are sent again when it completes)
        and stay there, stale. While ``request``'s session leaves ``MAX_UNREAD_MESSAGES``
        unread, the frames wait; after ``UNREAD_WAIT_SECONDS`` the play stops."""
        made, play = False, seat.play
        ahead = None if play is None else functools.partial(
            PlaySession.beside_frame,
            show_truth=view.truth and seat.show_truth and play.truth is not None)
        status_at, queue_shown = -math.inf, None
        async for frame in seat.frames(self.scheduler, ahead):
            made = True
            if not await self.read_up(request):
                seat.controls.stop()
            now, queue = time.monotonic(), queue_text(seat)
            status = now - status_at >= status_seconds
            status_at = now if status else status_at
            yield view.frame_values(seat, note, frame, status=status, queue=queue != queue_shown)
            queue_shown = queue
        if made:
            yield view.frame_values(seat, note)
        elif seat.controls.driving:
            yield view.unchanged()
        else:
            yield view.queue_values(seat)

    def step(self, view: PlayView, control: str, sides: int):
        """Handler of a control's button: queue ``repeat`` presses, and stream every frame
        while this event drives."""

        async def step(seat: Seat, repeat, pitch, yaw, request: gr.Request):
            self.touch(request)
            try:
                action = control_action(control, number(pitch, "pitch"), number(yaw, "yaw"))
                times, note = repeat_count(repeat)
                why_not = await self.seated(seat, sides, request)
            except PLAY_ERRORS as error:
                warn_refused(str(error))
                yield view.status_only(f"Not played: {error}", view.frame_outputs)
                return
            if why_not:
                yield view.status_only(why_not, view.frame_outputs)
                return
            refused = seat.controls.press(control, action, times)
            if refused:
                note = f"{refused} presses not queued: the queue holds {MAX_QUEUED}"
            if note:
                gr.Warning(note)
            async for values in self.drive(view, seat, request, note):
                yield values

        return step

    def control(self, view: PlayView, sides: int):
        """Handler of the keyboard's events sent through Gradio (until the tab's key socket is
        open, see ``key_socket``), and of the page binding its key socket (``{"bind": token}``)."""

        async def control(seat: Seat, evt: gr.EventData, request: gr.Request):
            data = evt._data if isinstance(evt._data, dict) else {}
            if "bind" in data:
                self.bind_socket(data["bind"], view, seat, sides, request)
                yield view.unchanged()
                return
            async for values in self.key_event(view, seat, sides, data, request):
                yield values

        return control

    async def key_event(self, view: PlayView, seat: Seat, sides: int, data: dict, request):
        """A key down holds its control (and presses it once, so a tap shorter than a frame
        still plays), a key up releases it, Escape stops; then the frames it asks for
        (``drive``). ``data``: ``{"control", "down", "number"}`` or ``{"stop": true}``."""
        self.touch(request)
        name, note = data.get("control"), ""
        order = data.get("number")
        order = order if isinstance(order, int) else 0
        if data.get("stop"):
            seat.controls.stop()
        elif name in CONTROLS and not data.get("down"):
            seat.controls.release(name, order)
        elif name in CONTROLS:
            try:
                why_not = await self.seated(seat, sides, request)
            except PLAY_ERRORS as error:
                why_not = f"Not played: {error}"
            if why_not:
                yield view.status_only(why_not, view.frame_outputs)
                return
            if seat.controls.hold(name, control_action(name, 0.0, 0.0), order):
                note = f"{CONTROLS[name][0]} not queued: the queue holds {MAX_QUEUED}"
        async for values in self.drive(view, seat, request, note, KEY_STATUS_SECONDS):
            yield values

    def bind_socket(self, token, view: PlayView, seat: Seat, sides: int, request) -> None:
        """Let a key socket opened with ``token`` (32 hex digits, made by the page) play
        ``seat`` for ``request``'s session; the tab's token before goes."""
        session = getattr(request, "session_hash", None)
        if not (isinstance(token, str) and re.fullmatch("[0-9a-f]{32}", token) and session):
            return
        known = self.sockets.get(token)
        if known is not None and known.caller.session_hash != session:
            return  # another session's: not taken over
        for old, bound in list(self.sockets.items()):
            if bound.caller.session_hash == session and bound.view is view:
                del self.sockets[old]
        self.touch(request)
        self.sockets[token] = KeySocket(view, weakref.ref(seat), sides,
                                        SocketCaller(session, request.client))

    async def key_socket(self, websocket: WebSocket) -> None:
        """The page's key socket (``KEYS_SOCKET_PATH``): key events in, as ``control`` takes
        them, and the frames they play out (``PlayView.socket_message``), with no Gradio event
        per key and no Gradio update per frame. Opened with the token the page bound through
        ``control``; at most ``MAX_SOCKETS_PER_CLIENT`` per client address, messages of at
        most ``MAX_SOCKET_MESSAGE`` bytes, ``MAX_EVENTS_PER_CLIENT`` key events answered at
        once (else it closes). A frame its page does not take within ``UNREAD_WAIT_SECONDS``
        stops the play; a socket that closes stops its play."""
        bound = self.sockets.get(websocket.query_params.get("token", ""))
        seat = bound.seat() if bound is not None else None
        client = websocket.client.host if websocket.client else ""
        if seat is None or self.socket_clients.get(client, 0) >= MAX_SOCKETS_PER_CLIENT:
            await websocket.close(code=POLICY_VIOLATION)
            return
        await websocket.accept()
        sending, answering = asyncio.Lock(), set()

        async def answer(data: dict) -> None:
            async for values in self.key_event(bound.view, seat, bound.sides, data,
                                               bound.caller):
                message = bound.view.socket_message(values)
                if message is None:
                    continue
                async with sending:
                    try:
                        await asyncio.wait_for(websocket.send_text(message), UNREAD_WAIT_SECONDS)
                    except (asyncio.TimeoutError, WebSocketDisconnect, RuntimeError):
                        seat.controls.stop()  # nobody takes the frames
                        return

        with counted(self.socket_clients, client):
            try:
                while (message := await websocket.receive())["type"] != "websocket.disconnect":
                    data = key_message(message.get("text"))
                    if data is None or len(answering) >= MAX_EVENTS_PER_CLIENT:
                        log_refusal("a key socket message that is not a key event"
                                    if data is None
                                    else f"over {MAX_EVENTS_PER_CLIENT} key events at once")
                        await websocket.close(code=POLICY_VIOLATION)  # its play stops (below)
                        return
                    task = asyncio.create_task(answer(data))
                    answering.add(task)
                    task.add_done_callback(answering.discard)
            finally:
                for task in answering:  # a play driven from here stops (Seat.frames)
                    task.cancel()

    async def read_up(self, request) -> bool:
        """Whether ``request``'s session reads its messages: True at once, or once fewer than
        ``MAX_UNREAD_MESSAGES`` wait unread; False when they still wait after
        ``UNREAD_WAIT_SECONDS``."""
        deadline = time.monotonic() + UNREAD_WAIT_SECONDS
        while self.unread_messages(request) >= MAX_UNREAD_MESSAGES:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def unread_messages(self, request) -> int:
        """Messages of ``request``'s session that Gradio's queue holds, not yet read by its
        page or API client (frames, mostly)."""
        queue = getattr(self.blocks, "_queue", None)
        session = getattr(request, "session_hash", None)
        messages = (None if queue is None  # a Queue is falsy while no event waits
                    else queue.pending_messages_per_session.get(session))
        return messages.qsize() if messages is not None else 0

    def show_truth(self, view: PlayView):
        """Handler of the true-world toggle: show it (brought up to the newest frame, off the
        model's thread) or hide it."""

        async def show_truth(seat: Seat, shown: bool):
            seat.show_truth = bool(shown)
            play = seat.play
            if play is None or play.closed:
                return view.unchanged()
            if seat.show_truth:
                await asyncio.to_thread(play.score_pending)
            return view.frame_values(seat)

        return show_truth

    def stop(self, view: PlayView):
        """Handler of Stop: no new frame starts (the one being made finishes)."""

        def stop(seat: Seat):
            seat.controls.stop()
            return view.queue_values(seat)

        return stop

    async def keep_open(self, request: gr.Request):
        """Handler pending as long as its tab is open. Gradio's page keeps its event stream
        open only while one of its events is pending; with this one, a key's frame goes out
        at once instead of after a new connection (measured with 26 ms frames: tap ->
        painted p50 191 -> 150 ms, p95 263 -> 181 ms on the busy 2-core host). It ends at
        the first yield after the tab has gone, or once its session is freed (idle, or never
        started): a join whose stream is never read would otherwise hold its client's place
        in the queue (``MAX_EVENTS_PER_CLIENT``) for good."""
        while True:
            await asyncio.sleep(KEEP_OPEN_SECONDS)
            if request.session_hash not in self.last_active:
                return
            yield

    def forget(self, request: gr.Request) -> None:
        """Handler for a closed tab: free its plays and uploaded scene now, not when Gradio
        drops the tab's State (an hour later, or after ``IDLE_SECONDS`` untouched)."""
        self.free_session(request.session_hash)

    def load_scene(self, files: list[str] | None, request: gr.Request):
        """Handler: an uploaded mp4 + jsonl (and optional world sidecar json) as the scene.

        A scene that cannot be used is refused (gr.Error naming the user's file by its own
        name, never a server path): the page shows why, and the chained restart does not run,
        so the current play goes on untouched. The uploaded files are deleted once read."""
        uploads = [Path(path) for path in files or []]
        by_suffix = {path.suffix.lower(): path for path in uploads}
        try:
            if ".mp4" not in by_suffix or ".jsonl" not in by_suffix:
                raise refuse("Scene not loaded: upload an .mp4 and its .jsonl (and, optionally, "
                             "its world .json)")
            scene = self.read_upload(by_suffix)
        finally:
            for path in uploads:  # read already: not left for Gradio's cache sweep
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # Gradio's folder for this upload, if now empty
        for note in scene.notes:
            gr.Warning(f"{scene.name}: {note}")
        if request is not None and request.session_hash:
            self.open_scenes[request.session_hash] = scene
        self.touch(request)
        start = self.resources.default_start(scene)
        slider = gr.update(maximum=len(scene.frames) - 1, value=start)
        return scene, slider, describe_scene(scene)

    def read_upload(self, by_suffix: dict[str, Path]) -> Scene:
        """The scene of uploaded files by suffix, read under one stem (whatever their names);
        a refusal names the files as their user does."""
        folder = Path(tempfile.mkdtemp(prefix="mineworld-scene-"))
        own_names = {}
        try:
            for suffix, path in by_suffix.items():
                own_names[str(path)] = own_names[str(folder / f"scene{suffix}")] = path.name
                shutil.move(path, folder / f"scene{suffix}")
            scene = read_scene(folder / "scene.mp4", self.resources.tokenizer.frame_size,
                               by_suffix[".mp4"].stem)
        except (ValueError, OSError) as error:
            message = str(error)
            for server_path, name in own_names.items():
                message = message.replace(server_path, name)
            raise refuse(f"Scene not loaded: {message.replace(str(folder), '')}") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        scene.notes = tuple(note.replace(str(folder), "") for note in scene.notes)
        return scene

    @staticmethod
    def export(seat: Seat):
        """Handler: the play so far as mp4, shown as a file beside the button."""
        play = seat.play
        if play is None or play.closed or not play.frames_played:
            gr.Warning("Nothing played yet: hold a key first")
            return gr.update(value=None, visible=False)
        return gr.update(value=str(play.export()), visible=True)


def wire_export(demo: Demo, button: gr.Button, state: gr.State, file: gr.File,
                api_name: str) -> None:
    """``button`` makes the play's video, shows it in ``file`` and has the browser save it:
    one click downloads, instead of a second click on a link further down."""
    save = f"""() => {{
        const link = document.querySelector('#{file.elem_id} a[download]');
        if (link) link.click();
    }}"""
    button.click(demo.export, state, file, api_name=api_name).success(None, js=save)


def describe_decoding(options: Options, model_window: int) -> str:
    """How every frame of the page is made: the schedule and the sampling."""
    schedule = options.schedule
    if schedule != "naive":
        schedule += f", window {options.window or model_window}"
    return (f"Decoding: {schedule}; {options.sampling} (app.py's `--schedule`, `--temperature`, "
            "`--overuse_penalty` ... change it)")


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


def log_refusal(message: str) -> None:
    """One line in the server's log for a refused request, instead of a traceback (a
    stranger's bad value is not the server's fault)."""
    print(f"{PROG}: refused: {message}", file=sys.stderr, flush=True)


def refuse(message: str) -> gr.Error:
    """The error for a refused request: shown to its user, and logged in one line."""
    log_refusal(message)
    return gr.Error(message, print_exception=False)


def warn_refused(message: str) -> None:
    """A refusal the handler answers itself (in the status line): a warning in the page, and
    logged in one line."""
    log_refusal(message)
    gr.Warning(message)


# The values an API client may send each kind of input, beyond what Gradio checks: it checks
# ranges and choices, but a string or a list for a number reached its rounding (a traceback
# and a bare "Error"), and any value passed for a checkbox.
INPUT_TYPES = {gr.Number: (int, float), gr.Slider: (int, float), gr.Checkbox: (bool,)}
OPTIONAL_INPUTS = (gr.Number, gr.Checkbox)  # None means "unset" for these


def refuse_bad_inputs(blocks: gr.Blocks) -> None:
    """Every event's inputs are checked before Gradio preprocesses them: a wrongly typed value
    is refused with one line naming the input, and Gradio's own refusals (a range, a choice, a
    file type) are logged as one line too. At the Blocks, not per component: Gradio gives a
    session its own copy of a component once an update changes it."""
    preprocess_data = blocks.preprocess_data

    @functools.wraps(preprocess_data)
    async def checked(block_fn, inputs, state, explicit_call=False):
        for index, (block, value) in enumerate(zip(block_fn.inputs, inputs, strict=False)):
            if index not in block_fn.component_prop_inputs:
                check_input_type(block, value)
        try:
            return await preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error as error:
            if not error.print_exception:  # refused already
                raise
            raise refuse(error.message) from None

    blocks.preprocess_data = checked


def check_input_type(block, value) -> None:
    """gr.Error (``refuse``) unless ``value`` has the type ``block`` takes (``INPUT_TYPES``)."""
    types = INPUT_TYPES.get(type(block))
    if types is None or value is None and isinstance(block, OPTIONAL_INPUTS):
        return
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        kind = "true or false" if bool in types else "a number"
        raise refuse(f"{block.label} must be {kind}, got {reprlib.repr(value)}")


@dataclass
class ActionPad:
    """Buttons for every control, the camera sliders and "repeat"."""

    buttons: dict[str, gr.Button]
    repeat: gr.Number
    pitch: gr.Slider
    yaw: gr.Slider

    @classmethod
    def build(cls) -> ActionPad:
        buttons = {}
        with gr.Row():
            for group, controls in CONTROL_GROUPS.items():
                with gr.Column(min_width=110), gr.Group():
                    gr.Markdown(f"**{group}**")
                    with gr.Row():
                        for name, (label, _key) in controls.items():
                            buttons[name] = gr.Button(label, size="sm", min_width=40,
                                                      elem_classes=control_class(name))
                    if group == "Camera":
                        buttons["look"] = gr.Button("Look (sliders)", size="sm")
        with gr.Row():
            # A number, not a slider: a slider's box clamps 40 to its maximum without a word,
            # a number out of range is refused with a message.
            repeat = gr.Number(1, minimum=1, maximum=MAX_REPEAT, step=1, precision=0,
                               label=f"Repeat a button n times (1-{MAX_REPEAT})", min_width=120)
            pitch = gr.Slider(-90, 90, value=0, step=1, label="Look: pitch (°, + looks down)")
            yaw = gr.Slider(-90, 90, value=0, step=1, label="Look: yaw (°, + turns right)")
        return cls(buttons, repeat, pitch, yaw)

    def wire(self, demo: Demo, view: PlayView, prefix: str) -> None:
        """Every button queues presses for ``view``'s play; API names are
        ``<prefix>_<control>``. Clicks during a frame queue too ("multiple")."""
        for name, button in self.buttons.items():
            button.click(
                demo.step(view, name, len(view.labels)),
                [view.state, self.repeat, self.pitch, self.yaw], view.frame_outputs,
                api_name=f"{prefix}_{name.replace('.', '_').replace(' ', '_')}",
                concurrency_limit=None, trigger_mode="multiple", show_progress="hidden",
            )


def wire_play(demo: Demo, view: PlayView, pad: ActionPad, prefix: str) -> None:
    """The tab's buttons, keys, Stop, and its strip and charts when the page asks."""
    pad.wire(demo, view, prefix)
    sides = len(view.labels)
    view.keys.control(demo.control(view, sides), view.state, view.frame_outputs,
                      api_visibility="private", concurrency_limit=None,
                      trigger_mode="multiple", show_progress="hidden")
    view.stop.click(demo.stop(view), view.state, view.frame_outputs, api_name=f"{prefix}_stop",
                    concurrency_limit=None, trigger_mode="multiple", show_progress="hidden")
    view.keys.tick(view.plot_values, view.state, view.plot_outputs, api_visibility="private",
                   concurrency_limit=None, show_progress="hidden")


def build_demo(resources: Resources) -> gr.Blocks:
    """The whole page for ``resources``; launching it is the caller's business."""
    demo = Demo(resources)
    frame_size = resources.tokenizer.frame_size
    with gr.Blocks(title="MineWorld", delete_cache=CACHE_SWEEP) as blocks:
        gr.Markdown("## MineWorld: play the world model\nHold a key to play, release it to "
                    "stop: W A S D move, Space jump, Shift sneak, Ctrl sprint, Q drop, 1-9 "
                    "hotbar, arrows turn the camera, Esc stops.")
        scene_state = gr.State(None)  # None: the shipped scene
        with gr.Accordion("Scene", open=False):
            scene_info = gr.Markdown(describe_scene(resources.scene))
            gr.Markdown(LIMITS_TEXT)
            gr.Markdown(describe_decoding(resources.options,
                                          resources.model.config.diagonal_window))
            with gr.Row():
                files = gr.File(file_count="multiple", file_types=SCENE_FILE_TYPES,
                                label="Your scene: an mp4, its jsonl (and world json)")
                start = gr.Slider(0, len(resources.scene.frames) - 1, step=1,
                                  value=resources.default_start(resources.scene),
                                  label="Start frame (play restarts after it)",
                                  elem_id="start-frame")
                # Greedy decoding (the embedded model's default) draws nothing to seed.
                seed = gr.Number(resources.options.seed, precision=0,
                                 label="Seed (sampling; Enter restarts)", elem_id="seed",
                                 visible=resources.options.sampling.temperature > 0)

        with gr.Tab("Play"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    view = PlayView.build("play", ["Play"], demo.close_seat, height=250,
                                          frame_size=frame_size, truth=True)
                with gr.Column(scale=1):
                    picker = StrategyPicker.build("Cache strategy", resources.strategy,
                                                  resources.params, resources)
                    with gr.Row():
                        apply = gr.Button("Apply strategy (continue from here)", size="sm")
                        reset = gr.Button("Reset to the start frame", size="sm")
                        download = gr.Button("Download mp4", size="sm")
                        truth = gr.Checkbox(True, label="Show the true world",
                                            elem_id="show-truth")
                    video = gr.File(label="Session video", interactive=False, height=60,
                                    visible=False, elem_id="export-play")
                    pad = ActionPad.build()
            view.add_plots(["Play"])
            wire_play(demo, view, pad, "play")
        restart = demo.restart(view, [picker])
        restart_inputs = [view.state, scene_state, start, seed, *picker.components]
        reset.click(restart, restart_inputs, view.outputs, api_name="reset",
                    concurrency_id=MODEL_QUEUE)
        apply.click(demo.switch(view, picker), [view.state, *picker.components],
                    [*view.outputs, picker.dropdown], api_name="apply_strategy",
                    concurrency_id=MODEL_QUEUE)
        truth.change(demo.show_truth(view), [view.state, truth], view.frame_outputs,
                     api_name="show_truth", show_progress="hidden")
        wire_export(demo, download, view.state, video, "download")
        blocks.load(restart, restart_inputs, view.outputs, concurrency_id=MODEL_QUEUE,
                    api_visibility="private")
        loaded = files.upload(demo.load_scene, files, [scene_state, start, scene_info],
                              api_name="load_scene", show_progress="hidden")
        loaded.success(restart, restart_inputs, view.outputs, concurrency_id=MODEL_QUEUE)
        # A refused scene: the message says why; the files go, the scene and start stay.
        loaded.failure(lambda: None, None, files, api_visibility="private")

        with gr.Tab("Compare") as compare_tab:
            with gr.Row():
                pickers = [
                    StrategyPicker.build("Strategy A", resources.strategy, resources.params,
                                         resources),
                    StrategyPicker.build("Strategy B", *resources.comparison(), resources),
                ]
            with gr.Row():
                compare = gr.Button("Reset both to the start frame", variant="primary",
                                    size="sm")
                compare_download = gr.Button("Download both as mp4", size="sm")
            compare_video = gr.File(label="Both sessions, side by side", interactive=False,
                                    height=60, visible=False, elem_id="export-compare")
            compare_view = PlayView.build("compare", ["A", "B"], demo.close_seat,
                                          height=220, frame_size=frame_size)
            compare_pad = ActionPad.build()
            compare_view.add_plots(["A", "B"])
            wire_play(demo, compare_view, compare_pad, "compare")
        compare_inputs = [compare_view.state, scene_state, start, seed,
                          *[c for p in pickers for c in p.components]]
        compare.click(demo.restart(compare_view, pickers), compare_inputs,
                      compare_view.outputs, api_name="compare", concurrency_id=MODEL_QUEUE)
        compare_tab.select(demo.restart_if(compare_view, pickers, playing=False),
                           compare_inputs, compare_view.outputs, api_visibility="private",
                           concurrency_id=MODEL_QUEUE)
        for tab_view, tab_pickers, inputs in ((view, [picker], restart_inputs),
                                              (compare_view, pickers, compare_inputs)):
            for changed in (start.release, seed.submit):  # both tabs play from the new start
                changed(demo.restart_if(tab_view, tab_pickers, playing=True), inputs,
                        tab_view.outputs, api_visibility="private", concurrency_id=MODEL_QUEUE)
        wire_export(demo, compare_download, compare_view.state, compare_video,
                    "compare_download")
        blocks.unload(demo.forget)
        blocks.load(demo.keep_open, None, None, concurrency_limit=None,
                    show_progress="hidden", api_visibility="private")
    refuse_bad_inputs(blocks)
    demo.blocks = blocks
    blocks.key_socket = demo.key_socket  # served by launch()
    # api_open=False: no event may skip the queue, and with it the bound per client
    blocks.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE, api_open=False)
    blocks._queue.sleep_when_free = QUEUE_POLL_SECONDS  # no public setting for it
    return blocks


class RequestLimits:
    """ASGI middleware for what visitors send and fetch: an upload request is refused before its
    body is read when it is over ``MAX_REQUEST_MB`` (413), names no length (411), or would take
    Gradio's files over ``MAX_STORED_MB`` (507); any other request body over ``MAX_BODY_KB``
    is refused (413, or cut off when it names no length); a file of a type not in
    ``SERVED_FILE_TYPES`` is not served (403); a queue join is refused (429) while its client
    has ``MAX_EVENTS_PER_CLIENT`` events waiting or running (``ClientEvents``)."""

    def __init__(self, app, blocks: gr.Blocks):
        self.app = app
        self.arriving = 0  # bytes of the upload requests being received now
        self.client_events = ClientEvents(blocks)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.endswith("/gradio_api/upload") and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            refusal = self.upload_refusal(int(length) if length.isdigit() else None)
            if refusal:
                await PlainTextResponse(refusal[1], status_code=refusal[0])(scope, receive, send)
                return
            self.arriving += int(length)
            try:
                await self.app(scope, receive, send)
            finally:
                self.arriving -= int(length)
            return
        if path and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > MAX_BODY_KB * 1024:
                message = f"A request may hold at most {MAX_BODY_KB} KB"
                log_refusal(message)
                await PlainTextResponse(message, status_code=413)(scope, receive, send)
                return
            receive = bounded(receive, MAX_BODY_KB * 1024)
            if path.endswith("/gradio_api/queue/join") and scope["method"] == "POST":
                await self.client_events.join(self.app, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if "/file=" in path and Path(path).suffix.lower() not in SERVED_FILE_TYPES:
            log_refusal(f"a file of type {Path(path).suffix!r}")
            await PlainTextResponse("Not served", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def upload_refusal(self, length: int | None) -> tuple[int, str] | None:
        """(HTTP status, message) when an upload of ``length`` bytes is refused, else None."""
        if length is None:
            refusal = 411, "An upload must state its length (Content-Length)"
        elif length > MAX_REQUEST_MB * MIB:
            refusal = 413, f"An upload request may hold at most {MAX_REQUEST_MB} MB"
        elif stored_bytes(gr.utils.get_upload_folder()) + self.arriving + length > (
                MAX_STORED_MB * MIB):
            refusal = 507, "Uploads are full for now: try again in a few minutes"
        else:
            return None
        log_refusal(refusal[1])
        return refusal


class ClientEvents:
    """The events each client address has in Gradio's queue, waiting or running, at most
    ``MAX_EVENTS_PER_CLIENT``. By address, not by session: a session hash is whatever the
    client sends, so one client may invent any number of them. Behind a reverse proxy, uvicorn
    must trust it (``FORWARDED_ALLOW_IPS``) for the address to be the visitor's.

    A join counts from when it arrives; once Gradio answers with its event id, the event
    counts until Gradio forgets that id (``Queue.event_ids_to_events``, which it empties when
    an event completes, fails, is cancelled or its page goes), checked at the client's next
    join."""

    def __init__(self, blocks: gr.Blocks):
        self.blocks = blocks
        self.joining: dict[str, int] = {}  # address -> joins not answered yet
        self.events: dict[str, set[str]] = {}  # address -> ids of its events (some may end)

    def count(self, client: str) -> int:
        """Events ``client`` has waiting or running, joins not yet answered included. Every
        address's ended events are forgotten here, so that only addresses with events in the
        queue are kept."""
        live = self.blocks._queue.event_ids_to_events
        self.events = {address: running for address, events in self.events.items()
                       if (running := {event for event in events if event in live})}
        return len(self.events.get(client, ())) + self.joining.get(client, 0)

    async def join(self, app, scope, receive, send) -> None:
        """Pass a queue join on to ``app``, or refuse it (429) when its client is at its
        bound; note the event id Gradio answers with."""
        client = scope["client"][0] if scope.get("client") else ""
        if self.count(client) >= MAX_EVENTS_PER_CLIENT:
            message = (f"At most {MAX_EVENTS_PER_CLIENT} requests of one address may wait or "
                       "run at once: try again when one has finished")
            log_refusal(f"{message} ({client})")
            await PlainTextResponse(message, status_code=429)(scope, receive, send)
            return
        answer = bytearray()

        async def send_noting_event(message):
            if message["type"] == "http.response.body":
                answer.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self.note(client, bytes(answer))
            await send(message)

        with counted(self.joining, client):
            await app(scope, receive, send_noting_event)

    def note(self, client: str, answer: bytes) -> None:
        """Count the event of a join's answer (``{"event_id": ...}``; a refusal has none)."""
        with contextlib.suppress(ValueError, AttributeError):
            event = json.loads(answer).get("event_id")
            if isinstance(event, str):
                self.events.setdefault(client, set()).add(event)


def bounded(receive, limit: int):
    """``receive`` of an ASGI request whose body ends, as if the client had gone, once it has
    brought more than ``limit`` bytes (a body that names no length is counted as it comes)."""
    received = 0

    async def receive_bounded():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                return {"type": "http.disconnect"}
        return message

    return receive_bounded


def stored_bytes(folder: str) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist yet)."""
    total = 0
    for parent, _folders, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # Gradio may delete it meanwhile
                total += os.stat(os.path.join(parent, name)).st_size
    return total


def launch(blocks: gr.Blocks, host: str, port: int, block: bool = True) -> str:
    """Serve offline on ``host:port``; returns the local URL (and blocks when ``block``)."""
    _app, url, _share = blocks.launch(
        server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True,
        footer_links=[], run_history=False, prevent_thread_lock=True,
        max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=[], css=CSS,
        app_kwargs={"middleware": [Middleware(RequestLimits, blocks=blocks)],
                    "routes": [WebSocketRoute(KEYS_SOCKET_PATH, blocks.key_socket)]},
    )
    # uvicorn reads it for each new connection: a key event is small, nothing else is taken
    blocks.server.config.ws_max_size = MAX_SOCKET_MESSAGE
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
