"""Load test of the app on 127.0.0.1: concurrent players, many short sessions, and attacks.

    python -m benchmarks.app_load                      # 8 clients x 10 steps, 100 cycles
    python -m benchmarks.app_load --clients 4 --steps 3 --cycles 20
    python -m benchmarks.app_load --part attacks       # only the attacks (about a minute)
    python -m benchmarks.app_load --part flood         # a victim's step while another floods

Starts ``python app.py`` (the embedded model, a bounded cache) as a child process and drives
it with ``gradio_client`` (one Client is one browser session):

1. ``--clients`` clients at once, each with its own start frame and control, step
   ``--steps`` times; every reply must report that client's own frame count, and every frame
   must be the one an offline replay of that client's actions gives (``--no-verify`` skips
   the replay), so a frame from another session would be caught. None may error.
2. ``--cycles`` open/close cycles (connect, reset, one step, close): the server's RSS after
   them must be within 10 % of where it was before (after a few warm-up cycles), because a
   closed tab's play is freed by the unload handler.
3. The attacks of issue 21, through the API (``--part attacks`` alone): each must be refused
   or bounded as the README's limits table says; the server's RSS is sampled every 10 ms
   while each runs (``ATTACK_RSS_MB`` at most), and the memory of one session holding the
   largest scene is measured, then freed when it closes.
4. A flood (``--part flood`` alone): a victim's single step, timed ``--steps`` times idle and
   ``--steps`` times while another client floods, in 3 alternate rounds; two floods, each a
   repeat of ``MAX_REPEAT`` again and again: joins with a fresh session each time (sessions
   are free to invent) as fast as the server answers, never reading the frames; and one
   session looping, reading its frames. The victim's median and p95 under each flood are
   printed against its idle ones (goal: a median at most ``FLOOD_GOAL`` times), with the
   flood's requests taken and refused (429: its address has ``app.MAX_EVENTS_PER_CLIENT``
   events in the queue).

Each client comes from its own address (``X-Forwarded-For``, which uvicorn trusts from
127.0.0.1, as from a reverse proxy): the app bounds the events of one address.

Prints the figures; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client

from benchmarks.common import percentile, print_machine
from mineworld.actions import make_action
from mineworld.play import MAX_SUPERSAMPLE, MAX_WORLD_SCALE
from mineworld.world import Game

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


def visitor(url: str, number: int) -> Client:
    """A client (one session) from its own address, 10.0.0.``number``."""
    return Client(url, verbose=False, headers={"X-Forwarded-For": visitor_address(number)})


def visitor_address(number: int) -> str:
    return f"10.0.{number // 250}.{number % 250 + 1}"


def concurrent_players(url: str, clients: int, steps: int) -> dict[int, tuple]:
    """{client: (start, control, frames seen)}; raises if a reply reports another count."""
    from app import screen_images

    connected = [visitor(url, index) for index in range(clients)]  # one by one: API info

    def play(index: int):
        client, control, start = connected[index], CONTROLS[index % len(CONTROLS)], 3 + index
        client.predict(start, index, api_name="/reset")
        frames = []
        for step in range(1, steps + 1):
            status, screen = client.predict(1, 0, 0, api_name=f"/play_{control}")[:2]
            if f"from frame {start} · {step} frames played" not in status:
                raise AssertionError(f"client {index} step {step} got: {status}")
            frames.append(screen_images(screen)["frame-play"])
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


# The most one attack may raise the server's RSS by: decoding frames of 4096 x 4096, the
# largest taken, costs about 125 MB while they are decoded.
ATTACK_RSS_MB = 150.0
WRONG_TYPED_REQUESTS = 200
SCENE_SESSIONS = 4


def sampled(pid: int, action) -> tuple[object, float, float]:
    """(what ``action()`` returned or raised, the server's RSS growth at its sampled peak in
    MB, seconds it took); the RSS is read every 10 ms while it runs."""
    before = rss_mb(pid)
    peak, done = before, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        outcome = action()
    except Exception as error:  # an attack is meant to be refused: the refusal is its outcome
        outcome = error
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return outcome, peak - before, seconds


def raw_upload(url: str, length: int) -> str:
    """The status line of a POST to the upload route that announces ``length`` bytes and
    sends none (the server must answer before the body)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Type:"
                           f" multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n"
                           "\r\n".encode())
        return connection.recv(4096).decode().split("\r\n")[0]


def black_video(path: Path, sizes: list[tuple[int, int]], frames_each: int) -> Path:
    """A raw H.264 stream of black frames named .mp4, one run per (width, height): a later run
    of another size is what a header check alone misses."""
    import av

    with path.open("wb") as out:
        for width, height in sizes:
            run = io.BytesIO()
            with av.open(run, "w", format="h264") as container:
                stream = container.add_stream("h264", rate=6)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"preset": "ultrafast"}
                black = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8),
                                                   format="rgb24")
                for _ in range(frames_each):
                    container.mux(stream.encode(black))
                container.mux(stream.encode(None))
            out.write(run.getvalue())
    return path


def true_frame_ms(sidecar: dict, size: list[int], frames: int = 20) -> float:
    """Milliseconds the world of ``sidecar`` takes to render a frame of ``size`` walking, at
    the largest supersampling a sidecar may ask for."""
    game = Game(sidecar["seed"], tuple(size), MAX_SUPERSAMPLE, sidecar["start"])
    walk = make_action(["forward"], yaw=5.0)
    game.step(walk)
    started = time.perf_counter()
    for _ in range(frames):
        game.step(walk)
    return (time.perf_counter() - started) / frames * 1000


def attacks(url: str, pid: int, log: Path, folder: Path) -> bool:
    """The attacks of issue 21 through the API; True when each is refused or bounded."""
    from gradio_client import handle_file

    from mineworld.embedded import SCENE

    scene = {suffix: Path(f"{SCENE}{suffix}") for suffix in (".mp4", ".jsonl", ".json")}
    client = Client(url, verbose=False)
    client.predict(3, api_name="/reset")
    ok = True

    def attack(name: str, action, expected: str) -> None:
        nonlocal ok
        outcome, growth, seconds = sampled(pid, action)
        passed = expected in str(outcome) and growth <= ATTACK_RSS_MB
        ok &= passed
        print(f"- {name}: {seconds:.1f} s, server RSS +{growth:.0f} MB at most; "
              f"{str(outcome)[:120]!r} [{'ok' if passed else 'FAILED'}]")

    def upload(*paths: Path):
        return lambda: client.predict([handle_file(path) for path in paths],
                                      api_name="/load_scene")

    sidecar = json.loads(scene[".json"].read_text())
    frame_size = tuple(sidecar["size"])  # the embedded model's, as the scene was recorded
    largest = [MAX_WORLD_SCALE * side for side in frame_size]
    own, limit = (true_frame_ms(sidecar, size) for size in (frame_size, largest))
    print(f"- a world sidecar at its limits ({largest[0]} x {largest[1]}, supersample "
          f"{MAX_SUPERSAMPLE}): {limit:.1f} ms a true frame ({own:.1f} at the model's own size)")
    long_line = folder / "long-line.jsonl"
    long_line.write_text("{'a': [" + "0," * 4_000_000 + "]}\n")  # 8 MB; ast took 3.9 GB
    attack("jsonl whose first line is an 8 MB Python literal", upload(scene[".mp4"], long_line),
           "a line over 16,384 bytes")
    sidecar.update(size=[1024, 1024], supersample=4)  # the old maxima: 75.6 s a step
    (folder / "huge-world.json").write_text(json.dumps(sidecar))
    attack("world sidecar of 1024 x 1024, supersample 4",
           upload(scene[".mp4"], scene[".jsonl"], folder / "huge-world.json"),
           "world sidecar ignored (no true frames): size must be")
    attack("8 x 63 MB announced in one upload request",
           lambda: raw_upload(url, 8 * 63 * 2**20), "413")
    big = black_video(folder / "big-frames.mp4", [(4096, 4096)], 64)
    attack(f"64 frames of 4096 x 4096 ({big.stat().st_size // 1024} KB)",
           upload(big, scene[".jsonl"]), "pixels to decode")
    grows = black_video(folder / "grows.mp4", [(64, 48)] * 40 + [(8192, 8192)], 3)
    attack("raw H.264 whose later frames are 8192 x 8192", upload(grows, scene[".jsonl"]),
           "frames over 4096x4096")

    lines_before = log.read_text().count("\n")
    size_before = log.stat().st_size
    refused = 0
    for _ in range(WRONG_TYPED_REQUESTS // 4):
        for args, endpoint in [(("abc", 0, 0), "/play_forward"), ((None, 0, 0), "/play_look"),
                               (([1], 0, 0), "/play_jump"), (("x",), "/reset")]:
            outcome, _growth, _seconds = sampled(pid, lambda a=args, e=endpoint:
                                                 client.predict(*a, api_name=e))
            refused += "must be a number" in str(outcome)
    time.sleep(1)  # the server's log is written as it answers
    text = log.read_text()
    lines = text.count("\n") - lines_before
    passed = refused == WRONG_TYPED_REQUESTS and lines == refused and "Traceback" not in text
    ok &= passed
    print(f"- {WRONG_TYPED_REQUESTS} wrongly typed values: {refused} refused with a message, "
          f"{lines} log lines, {(log.stat().st_size - size_before) / lines:.0f} bytes each "
          f"[{'ok' if passed else 'FAILED'}]")
    client.close()

    # Sessions one after another, each holding the largest scene (256 frames and its world)
    # and a play, then closing: what one holds, and that closed ones leave nothing behind.
    before = settle(pid, 5)
    grown = []
    for _ in range(SCENE_SESSIONS):
        holder = Client(url, verbose=False)
        holder.predict([handle_file(path) for path in scene.values()], api_name="/load_scene")
        holder.predict(3, api_name="/reset")
        holder.predict(1, 0, 0, api_name="/play_forward")
        held = rss_mb(pid) - before
        holder.close()
        grown.append(settle(pid, 10) - before)
    passed = grown[-1] <= grown[0] + max(held, 1.0) / 2
    ok &= passed
    print(f"- one session holding the largest scene (256 frames, its world) and a play: "
          f"server RSS +{held:.1f} MB; after {SCENE_SESSIONS} such sessions one by one, each "
          f"closed: {', '.join(f'{mb:+.1f}' for mb in grown)} MB [{'ok' if passed else 'FAILED'}]")
    return ok


FLOOD_GOAL = 2.0  # a victim's step under a flood, at most this many times its idle time
FLOOD_SETTLE_SECONDS = 2.0  # for the flood to fill its places, or its last plays to stop
FLOOD_ROUNDS = 3


def timed_steps(client: Client, steps: int) -> list[float]:
    """Seconds of each of ``steps`` single steps of ``client``, one after another."""
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        client.predict(1, 0, 0, api_name="/play_forward")
        seconds.append(time.perf_counter() - started)
    return seconds


def unread_joins(url: str, address: str, stop: threading.Event) -> dict[int, int]:
    """Join a repeat of ``MAX_REPEAT`` forward, a fresh session each time, from ``address``,
    until ``stop``; never read a frame. {HTTP status: joins answered so}."""
    import httpx

    from app import MAX_REPEAT

    config = httpx.get(f"{url}config").json()
    forward = next(fn["id"] for fn in config["dependencies"]
                   if fn.get("api_name") == "play_forward")
    statuses: dict[int, int] = {}
    with httpx.Client(headers={"X-Forwarded-For": address}, timeout=30) as http:
        while not stop.is_set():
            body = {"data": [None, MAX_REPEAT, 0, 0], "fn_index": forward,
                    "session_hash": os.urandom(8).hex(), "event_data": None,
                    "trigger_id": None}
            status = http.post(f"{url}gradio_api/queue/join", json=body).status_code
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                time.sleep(0.01)  # refused: at once again, nearly
    return statuses


def looped_repeats(url: str, address: str, stop: threading.Event) -> dict[int, int]:
    """One client from ``address`` playing a repeat of ``MAX_REPEAT`` forward again and
    again, reading every frame, until ``stop``. {200: repeats played}."""
    from app import MAX_REPEAT

    client = Client(url, verbose=False, headers={"X-Forwarded-For": address})
    played = 0
    while not stop.is_set():
        client.predict(MAX_REPEAT, 0, 0, api_name="/play_forward")
        played += 1
    client.close()
    return {200: played}


# How a flood is made: {name: (what it does, the function that does it)}.
FLOODS = {
    "unread": ("joins in fresh sessions, never read", unread_joins),
    "looped": ("one session looping repeats, read", looped_repeats),
}


def flood(url: str, steps: int, kind: str) -> bool:
    """A victim's single steps idle and under a flood (``FLOODS[kind]``) from another
    address, in alternate rounds (``FLOOD_ROUNDS``, ``steps`` each way a round: the host's
    other load drifts); True when its median under the flood is within ``FLOOD_GOAL`` of its
    idle median."""
    from app import UNREAD_WAIT_SECONDS

    what, flooder = FLOODS[kind]
    victim = visitor(url, 0)
    victim.predict(3, api_name="/reset")
    timed_steps(victim, 2)  # warm-up
    idle, flooded, statuses = [], [], {}
    for _round in range(FLOOD_ROUNDS):
        idle += timed_steps(victim, steps)
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            flooding = pool.submit(flooder, url, visitor_address(1), stop)
            time.sleep(FLOOD_SETTLE_SECONDS)
            try:
                flooded += timed_steps(victim, steps)
            finally:
                stop.set()
            for status, count in flooding.result().items():
                statuses[status] = statuses.get(status, 0) + count
        # The flood's last plays stop: nobody reads them, once they have waited for a reader.
        time.sleep(FLOOD_SETTLE_SECONDS + UNREAD_WAIT_SECONDS)
    victim.close()
    (idle_median, idle_p95), (median, p95) = ((percentile(seconds, 50), percentile(seconds, 95))
                                              for seconds in (idle, flooded))
    passed = median <= FLOOD_GOAL * idle_median and set(statuses) <= {200, 429}
    taken, refused = statuses.pop(200, 0), statuses.pop(429, 0)
    print(f"- flood of repeats of 32, {what}: a victim's single step ({len(idle)} timed each "
          f"way, {FLOOD_ROUNDS} alternate rounds) idle median {idle_median:.3f} s, p95 "
          f"{idle_p95:.3f} s; under the flood median {median:.3f} s, p95 {p95:.3f} s: "
          f"{median / idle_median:.2f}x and {p95 / idle_p95:.2f}x (goal: median at most "
          f"{FLOOD_GOAL:g}x); the flood's requests {taken + refused + sum(statuses.values())}, "
          f"taken {taken}, refused (429) {refused}, otherwise answered {statuses or 'none'} "
          f"[{'ok' if passed else 'FAILED'}]")
    return passed


def load(url: str, pid: int, args: argparse.Namespace) -> bool:
    """Concurrent players, then open/close cycles; True when every check passes."""
    ok = True
    started = time.perf_counter()
    results = concurrent_players(url, args.clients, args.steps)
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
    before = settle(pid, args.settle)
    started = time.perf_counter()
    cycles(url, args.cycles)
    seconds = time.perf_counter() - started
    after = settle(pid, args.settle)
    growth = 100 * (after / before - 1)
    print(f"{args.cycles} open/close cycles in {seconds:.0f} s: server RSS "
          f"{before:.1f} MB before, {after:.1f} MB after ({growth:+.1f} %, goal "
          f"within {RSS_GOAL:g} %)")
    ok &= abs(growth) <= RSS_GOAL
    return ok


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
    parser.add_argument("--part", choices=["all", "load", "attacks", "flood"], default="all",
                        help="the load test, the attacks, the flood, or all (default)")
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
            if args.part in ("all", "load"):
                ok &= load(url, server.pid, args)
            if args.part in ("all", "attacks"):
                print("attacks of issue 21 through the API:")
                ok &= attacks(url, server.pid, log, Path(temp))
            if args.part in ("all", "flood"):
                print("floods from one address against another's steps:")
                for kind in FLOODS:
                    ok &= flood(url, args.steps, kind)
        finally:
            server.terminate()
            server.wait(timeout=30)
        text = log.read_text()
        errors = re.findall(r"Traceback|Error", text)
        print(f"server log: {len(errors)} tracebacks or errors")
        if errors:
            first = text.index(errors[0])
            print(text[max(0, first - 200) : first + 3000])
        ok &= not errors
    print("all checks passed" if ok else "a check failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
