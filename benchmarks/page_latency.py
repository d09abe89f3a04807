"""How the demo page feels in a browser: a tap -> its first new frame painted, and the frames
painted per second while a key is held.

    python -m benchmarks.page_latency                     # 20 taps, a 5 s hold
    python -m benchmarks.page_latency --taps 10 --hold 3 --url http://127.0.0.1:7860/
    python -m benchmarks.page_latency --stand-in-ms 26     # the page's own cost, see below
    python -m benchmarks.page_latency --hide-truth         # without the true world beside
    python -m benchmarks.page_latency -- --prepare-next 0  # app.py's own flags after "--"

Starts ``python app.py`` (the embedded model, a bounded cache; or drives ``--url``) and opens it
in Debian's Chromium (Playwright, headless). A frame counts as painted at the animation frame
after its caption shows its number and its image has loaded (the page's own counter, the one it
shows as "painted N fps"). Taps, each once the page is idle: ``--taps`` of the right arrow,
as many of the left and right arrows in turn, of six movement and camera keys in turn (app.py
makes ahead the frames of a waiting player's newest different keys and then of the usual ones,
six by default, see ``--prepare-next``), and of ten keys in turn that are never made ahead
(the hotbar's 1-9 and Q: the key pressed was pressed ten keys ago, so it is not among them);
the hold is of W. Prints the machine, the percentiles, the painted rate and the model's own
rate in the app; and, serving the model, its rate alone in this process (one thread, as app.py
plays, W held) before and after the page's measure: what this host's phase allows, the baseline
the painted rate is read against. And where the cores went while W was held (Linux ``/proc``):
app.py's share, that of its busiest thread (all model work runs on one thread, so at a whole
core the page waits on nothing but the model), its child processes' (the true world) and
Chromium's, and the whole machine's (more than these: something else ran).

``--stand-in-ms MS`` serves app.py with each frame a sleep of MS ms instead of the model's work
(the first frame is made by the model, then shifted by a pixel a frame): the model's time
without its CPU, so that what the page itself costs shows apart from a busy host's slower
model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.app_load import APP_ARGS, ROOT, STRATEGY, free_port, start_server
from benchmarks.common import percentile, print_machine

CHROMIUM = "/usr/bin/chromium"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times
# Usual keys, each pressed again after five others.
SIX_KEYS = ["ArrowUp", "ArrowDown", "a", "d", "ArrowLeft", "ArrowRight"]
# Each pressed again after nine others: never among a player's likely next keys (six by default).
TEN_KEYS = [*"123456789", "q"]
# The keydown time in the page's clock, taken before the page's own listener sees the key.
MARK_KEYS = """() => {
  window.benchKeyDown = 0;
  document.addEventListener('keydown', () => { window.benchKeyDown = performance.now(); }, true);
  window.mineworldTabs.play.log = [];
}"""


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, and ``app_flags``: those after ``--``, passed on to the app.py it starts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    app_flags = []
    if "--" in argv:
        cut = argv.index("--")
        argv, app_flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=20, help="taps timed (default: 20)")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds W is held (default: 5)")
    parser.add_argument("--url", help="a page already served (default: start app.py)")
    parser.add_argument("--hide-truth", action="store_true",
                        help="untick 'Show the true world' first (it is shown by default)")
    parser.add_argument("--stand-in-ms", type=float,
                        help="frames made by a sleep of this many ms instead of the model")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.url and app_flags:
        parser.error(f"app.py flags after -- ({' '.join(app_flags)}) need the app.py this "
                     "command starts, not --url")
    args.app_flags = app_flags
    return args


def serve_stand_in(ms: float, app_flags: list[str]) -> int:
    """app.py (``APP_ARGS``, then ``app_flags``, the port among them) with every frame a sleep
    of ``ms`` ms instead of the model's work."""
    import numpy as np

    import app
    from mineworld.session import Session

    model_passes = Session.step_passes

    def step_passes(self, action):
        if not hasattr(self, "stand_in"):
            self.stand_in = yield from model_passes(self, action)
        time.sleep(ms / 1000)
        frame, stats = self.stand_in
        self.frames_generated += 1
        return np.roll(frame, self.frames_generated, axis=1), {**stats, "ms_per_frame": ms,
                                                                "ms_own": ms}

    Session.step_passes = step_passes
    return app.main([*APP_ARGS, *app_flags])


def model_alone_fps(frames: int = 40) -> float:
    """Frames per second of the embedded model alone in this process: one thread, the app's
    cache strategy, W held (a frame's tokenizer decode included, as in a play)."""
    import torch

    from benchmarks.players import new_players, timed
    from mineworld.actions import make_action
    from mineworld.embedded import load_embedded

    torch.set_num_threads(1)
    model, tokenizer = load_embedded()
    sessions, _ = new_players(model, tokenizer, 1, STRATEGY)
    held = [[make_action(["forward"])] * (frames + 1)]  # the first, a warm-up, is not timed
    seconds, _ = timed(model, sessions, held, frames, together=False)
    return frames / seconds


def read_stat(stat: str) -> tuple[str, int, float]:
    """(name, parent's pid, user + system CPU seconds) in the text of a /proc ``stat`` file (a
    process's or a thread's); its name, in parentheses, may hold spaces and parentheses itself."""
    head, _, tail = stat.rpartition(")")
    fields = tail.split()  # from the third field, the state, on
    return head.partition("(")[2], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds(stat: str) -> float:
    """CPU seconds the cores spent running (not idle, waiting on I/O or given by the host
    to other machines: steal), all of them, in the text of ``/proc/stat``."""
    _cpu, user, nice, system, _idle, _iowait, irq, softirq = stat.split()[:8]
    return sum(int(ticks) for ticks in (user, nice, system, irq, softirq)) / CLOCK_TICKS


def cpu_snapshot(app_pid: int) -> dict:
    """CPU seconds so far of the machine, of ``app_pid``'s process and of each of its threads,
    and of each of its descendant processes and of each Chromium process (by pid), with the
    time taken."""
    parents, seconds, chromium = {}, {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        pid = int(entry.name)
        name, parents[pid], seconds[pid] = read_stat(stat)
        if name.startswith("chrom"):
            chromium.add(pid)
    descendants, newest = set(), {app_pid}
    while newest:
        newest = {pid for pid, parent in parents.items() if parent in newest} - descendants
        descendants |= newest
    threads = {}
    for task in Path(f"/proc/{app_pid}/task").iterdir():
        try:
            threads[int(task.name)] = read_stat((task / "stat").read_text())[2]
        except OSError:
            continue
    return {"time": time.monotonic(), "machine": machine_busy_seconds(
                Path("/proc/stat").read_text()),
            "app": seconds.get(app_pid, 0.0), "threads": threads,
            "children": {pid: seconds[pid] for pid in descendants - chromium},
            "chromium": {pid: seconds[pid] for pid in chromium}}


def cores_used(before: dict, after: dict) -> dict[str, float]:
    """Cores used between two ``cpu_snapshot``s: by app.py, its busiest thread, its child
    processes, Chromium (a process that ended between them counts for nothing) and everything
    on the machine."""
    seconds = after["time"] - before["time"]

    def used(kind: str) -> float:
        return sum(now - before[kind].get(pid, 0.0) for pid, now in after[kind].items())

    busiest = max((now - before["threads"].get(tid, 0.0)
                   for tid, now in after["threads"].items()), default=0.0)
    return {"app.py": (after["app"] - before["app"]) / seconds, "busiest thread": busiest / seconds,
            "children": used("children") / seconds, "chromium": used("chromium") / seconds,
            "machine": (after["machine"] - before["machine"]) / seconds}


def newest_painted(page) -> int:
    """The highest frame number painted (an image that loads late is logged late)."""
    return page.evaluate("() => Math.max(-1, ...window.mineworldTabs.play.log.map(e => e[1]))")


def wait_idle(page, settle_ms: int = 300) -> None:
    """Until nothing is held or queued and no frame was painted for ``settle_ms``."""
    page.wait_for_function(
        "() => document.querySelector('#queue-play').innerText.trim()"
        " === 'Held: none · Queued: none'", timeout=60_000)
    while True:
        before = page.evaluate("() => window.mineworldTabs.play.painted")
        page.wait_for_timeout(settle_ms)
        if page.evaluate("() => window.mineworldTabs.play.painted") == before:
            return


def tap_latencies(page, keys: list[str]) -> list[float]:
    """Milliseconds from each key's down to the first newer frame painted, a tap of each of
    ``keys`` in turn, once the page is idle."""
    latencies = []
    for key in keys:
        wait_idle(page)
        shown = newest_painted(page)
        page.keyboard.down(key)
        page.keyboard.up(key)
        page.wait_for_function(
            "n => window.mineworldTabs.play.log.some(([, number]) => number > n)", arg=shown,
            timeout=60_000)
        latencies.append(page.evaluate(
            "n => Math.min(...window.mineworldTabs.play.log.filter(([, number]) => number > n)"
            ".map(([when]) => when)) - window.benchKeyDown", shown))
    return latencies


def held_rate(page, seconds: float, app_pid: int | None = None
              ) -> tuple[float, int, dict | None]:
    """(frames painted per second, frames painted, ``cores_used`` by ``app_pid`` and the rest,
    when given) while W is held for ``seconds``."""
    wait_idle(page)
    page.evaluate("() => { window.mineworldTabs.play.log = []; }")
    before = cpu_snapshot(app_pid) if app_pid else None
    page.keyboard.down("w")
    page.wait_for_timeout(seconds * 1000)
    up = page.evaluate("() => performance.now()")
    page.keyboard.up("w")
    cores = cores_used(before, cpu_snapshot(app_pid)) if app_pid else None
    times = [when for when, _number in page.evaluate("() => window.mineworldTabs.play.log")
             if when <= up]
    if len(times) < 2:
        return 0.0, len(times), cores
    return (len(times) - 1) / ((times[-1] - times[0]) / 1000), len(times), cores


def measure(url: str, taps: int, hold: float, hide_truth: bool,
            app_pid: int | None = None) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(url)
        page.locator("#frame-play img").wait_for(timeout=120_000)
        page.wait_for_function("() => window.mineworldTabs && window.mineworldTabs.play")
        # Keys and frames go through Gradio's events until the tab's key socket is open.
        page.wait_for_function(
            "() => window.mineworldTabs.play.socket?.readyState === WebSocket.OPEN")
        if hide_truth:
            page.get_by_label("Show the true world").uncheck()
            page.locator("#truth-play").wait_for(state="hidden")
        page.locator("h2").click()  # keys go to the page
        page.evaluate(MARK_KEYS)
        page.keyboard.press("w")  # warm-up: the first frame also starts the session's work
        wait_idle(page)
        latencies = {"the same key": tap_latencies(page, ["ArrowRight"] * taps),
                     "left and right in turn": tap_latencies(
                         page, ["ArrowLeft", "ArrowRight"] * (taps // 2)),
                     "six keys in turn": tap_latencies(page, (SIX_KEYS * taps)[:taps]),
                     "ten keys in turn (never made ahead)": tap_latencies(
                         page, (TEN_KEYS * taps)[:taps])}
        fps, painted, cores = held_rate(page, hold, app_pid)
        wait_idle(page)
        status = page.locator("#status-play textarea").input_value()
        browser.close()
    return {"latencies": latencies, "fps": fps, "painted": painted, "cores": cores,
            "status": status}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve_stand_in(args.stand_in_ms, args.app_flags)
    print_machine("demo page latency: tap -> painted, painted fps while a key is held")
    server, alone = None, []
    with tempfile.TemporaryDirectory(prefix="mineworld-page-") as temp:
        url = args.url
        if url is None:
            port = free_port()
            command = [sys.executable, str(ROOT / "app.py"), *APP_ARGS, *args.app_flags]
            if args.stand_in_ms is not None:
                # start_server adds --port at the end: after "--", for app.py too.
                command = [sys.executable, "-m", "benchmarks.page_latency", "--serve",
                           "--stand-in-ms", str(args.stand_in_ms), "--", *args.app_flags]
                print(f"frames: a {args.stand_in_ms:g} ms sleep each, not the model")
            else:
                alone.append(model_alone_fps())
            if args.app_flags:
                print(f"app.py flags: {' '.join(args.app_flags)}")
            started = time.perf_counter()
            server = start_server(port, temp, Path(temp) / "app.log", command)
            url = f"http://127.0.0.1:{port}/"
            print(f"app.py served in {time.perf_counter() - started:.1f} s")
        try:
            result = measure(url, args.taps, args.hold, args.hide_truth,
                             server.pid if server is not None else None)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
        if alone:
            alone.append(model_alone_fps())
    for taps, latencies in result["latencies"].items():
        print(f"tap -> first new frame painted, {len(latencies)} taps of {taps}: "
              f"p50 {percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
              f"min {min(latencies):.0f}, max {max(latencies):.0f}")
    print(f"the true world: {'hidden' if args.hide_truth else 'shown beside the frame'}")
    print(f"W held {args.hold:g} s: {result['painted']} frames painted, "
          f"{result['fps']:.1f} painted fps")
    if result["cores"]:
        cores = result["cores"]
        print(f"cores used while W was held: app.py {cores['app.py']:.2f} (its busiest thread "
              f"{cores['busiest thread']:.2f}), its child processes {cores['children']:.2f}, "
              f"Chromium {cores['chromium']:.2f}; the machine {cores['machine']:.2f} of "
              f"{os.cpu_count()}")
    if alone:
        print(f"the model alone in this process (1 thread, W held), before / after: "
              f"{alone[0]:.1f} / {alone[1]:.1f} fps; painted {result['fps'] / np.mean(alone):.2f}x "
              "their mean (a host whose speed drifts shows as before and after differing)")
    print(f"page status after: {result['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
