"""Load test of the app on 127.0.0.1: concurrent players, then many short sessions.

    python -m benchmarks.app_load                      # 8 clients x 10 steps, 100 cycles
    python -m benchmarks.app_load --clients 4 --steps 3 --cycles 20

Starts ``python app.py`` (the embedded model, a bounded cache) as a child process and drives
it with ``gradio_client`` (one Client is one browser session):

1. ``--clients`` clients at once, each with its own start frame and control, step
   ``--steps`` times; every reply must report that client's own frame count, and every frame
   must be the one an offline replay of that client's actions gives (``--no-verify`` skips
   the replay), so a frame from another session would be caught. None may error.
2. ``--cycles`` open/close cycles (connect, reset, one step, close): the server's RSS after
   them must be within 10 % of where it was before (after a few warm-up cycles), because a
   closed tab's play is freed by the unload handler.

Prints the figures; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client
from PIL import Image

from benchmarks.common import print_machine

ROOT = Path(__file__).resolve().parent.parent
CONTROLS = ["forward", "back", "left", "right", "jump", "look_left", "look_right", "sneak"]
RSS_GOAL = 10.0  # per cent
WARMUP_CYCLES = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


STRATEGY = "frames"  # served with its defaults for the model, and replayed so
APP_ARGS = ["--cache-strategy", STRATEGY]


def start_server(port: int, temp: str, log: Path, command: list[str] | None = None,
                 ) -> subprocess.Popen:
    """app.py with the embedded model and a frames cache (or ``command``, which takes
    ``--port`` and prints "serving on" like app.py); returns once it serves."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": temp,
           "NO_PROXY": "127.0.0.1,localhost", "OMP_WAIT_POLICY": "PASSIVE"}
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(
            [*(command or [sys.executable, str(ROOT / "app.py"), *APP_ARGS]), "--port",
             str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    while "serving on" not in log.read_text():
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited with status {server.returncode} before serving:"
                               f" {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return server


def frame_of(path: str, width: int, height: int) -> np.ndarray:
    """The model frame inside a displayed image (undo the nearest-neighbour upscale)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    scale = image.shape[1] // width
    return image[scale // 2 :: scale, scale // 2 :: scale][:height, :width]


def concurrent_players(url: str, clients: int, steps: int, size) -> dict[int, tuple]:
    """{client: (start, control, frames seen)}; raises if a reply reports another count."""
    connected = [Client(url, verbose=False) for _ in range(clients)]  # one by one: API info

    def play(index: int):
        client, control, start = connected[index], CONTROLS[index % len(CONTROLS)], 3 + index
        client.predict(start, index, api_name="/reset")
        frames = []
        for step in range(1, steps + 1):
            status, image = client.predict(1, 0, 0, api_name=f"/play_{control}")[:2]
            image = image["value"] if isinstance(image, dict) else image  # an update
            if f"from frame {start} · {step} frames played" not in status:
                raise AssertionError(f"client {index} step {step} got: {status}")
            frames.append(frame_of(image, *size))
        return start, control, frames

    try:
        with ThreadPoolExecutor(clients) as pool:
            return dict(enumerate(pool.map(play, range(clients))))
    finally:
        for client in connected:
            client.close()


def replay(results: dict[int, tuple]) -> int:
    """Frames that differ from an offline replay of each client's actions (0 expected)."""
    from app import CAMERA_MOVES, embedded_scene
    from mineworld.actions import make_action
    from mineworld.decoding import Sampling
    from mineworld.embedded import load_embedded
    from mineworld.play import Options, PlaySession
    from mineworld.session import default_reference_frames

    model, tokenizer = load_embedded()
    scene = embedded_scene(tokenizer.frame_size)
    reference = default_reference_frames(model.config)
    # The app's defaults: the model's own sampling, diagonal decoding with its own window.
    options = {"schedule": "diagonal", "window": model.config.diagonal_window,
               "sampling": Sampling.model_default(model.config)}
    wrong = 0
    for index, (start, control, frames) in results.items():
        name = control.replace("_", " ")
        action = make_action((), *CAMERA_MOVES[name]) if name in CAMERA_MOVES else make_action(
            [name])
        play = PlaySession(model, tokenizer, scene, start, [(STRATEGY, {})],
                           Options(reference, seed=index, **options))
        for frame in frames:
            play.step(action)
            wrong += not np.array_equal(frame, play.sides[0].frames[-1])
        play.close()
    return wrong


def cycles(url: str, count: int) -> None:
    for _ in range(count):
        client = Client(url, verbose=False)
        client.predict(3, api_name="/reset")
        client.predict(1, 0, 0, api_name="/play_jump")
        client.close()


def settle(pid: int, seconds: float) -> float:
    """RSS after the unload handlers of closed clients have run (the server notices a closed
    heartbeat within seconds): the lowest of the readings over ``seconds``."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append(rss_mb(pid))
        time.sleep(1)
    return min(readings)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait for closed sessions' unload (default: 30)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the offline replay of every client's frames")
    args = parser.parse_args(argv)
    print_machine("app load test: python app.py on 127.0.0.1, driven by gradio_client")
    ok = True
    with tempfile.TemporaryDirectory(prefix="mineworld-load-") as temp:
        port = free_port()
        started = time.perf_counter()
        log = Path(temp) / "app.log"
        server = start_server(port, temp, log)
        url = f"http://127.0.0.1:{port}/"
        print(f"app.py served in {time.perf_counter() - started:.1f} s; RSS "
              f"{rss_mb(server.pid):.1f} MB")
        try:
            from mineworld.embedded import MODEL_DIR
            from mineworld.tokenizers.embedded import EmbeddedTokenizer

            size = EmbeddedTokenizer.load(MODEL_DIR, "cpu").frame_size
            started = time.perf_counter()
            results = concurrent_players(url, args.clients, args.steps, size)
            seconds = time.perf_counter() - started
            frames = args.clients * args.steps
            finals = {frames[-1].tobytes() for _, _, frames in results.values()}
            print(f"{args.clients} clients x {args.steps} steps at once: {frames} frames in "
                  f"{seconds:.1f} s ({frames / seconds:.2f} frames/s served), no errors, every "
                  f"reply with its own client's count; {len(finals)} distinct final frames")
            if not args.no_verify:
                wrong = replay(results)
                print(f"offline replay of each client's actions: {wrong} of {frames} frames "
                      "differ (0: no frame came from another session)")
                ok &= wrong == 0
            cycles(url, WARMUP_CYCLES)
            before = settle(server.pid, args.settle)
            started = time.perf_counter()
            cycles(url, args.cycles)
            seconds = time.perf_counter() - started
            after = settle(server.pid, args.settle)
            growth = 100 * (after / before - 1)
            print(f"{args.cycles} open/close cycles in {seconds:.0f} s: server RSS "
                  f"{before:.1f} MB before, {after:.1f} MB after ({growth:+.1f} %, goal "
                  f"within {RSS_GOAL:g} %)")
            ok &= abs(growth) <= RSS_GOAL
        finally:
            server.terminate()
            server.wait(timeout=30)
        errors = re.findall(r"Traceback|Error", log.read_text())
        print(f"server log: {len(errors)} tracebacks or errors")
        ok &= not errors
    print("all checks passed" if ok else "a check failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
