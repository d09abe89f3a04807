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
the painted rate is read against.

``--stand-in-ms MS`` serves app.py with each frame a sleep of MS ms instead of the model's work
(the first frame is made by the model, then shifted by a pixel a frame): the model's time
without its CPU, so that what the page itself costs shows apart from a busy host's slower
model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.app_load import APP_ARGS, ROOT, STRATEGY, free_port, start_server
from benchmarks.common import percentile, print_machine

CHROMIUM = "/usr/bin/chromium"
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


def held_rate(page, seconds: float) -> tuple[float, int]:
    """(frames painted per second, frames painted) while W is held for ``seconds``."""
    wait_idle(page)
    page.evaluate("() => { window.mineworldTabs.play.log = []; }")
    page.keyboard.down("w")
    page.wait_for_timeout(seconds * 1000)
    up = page.evaluate("() => performance.now()")
    page.keyboard.up("w")
    times = [when for when, _number in page.evaluate("() => window.mineworldTabs.play.log")
             if when <= up]
    if len(times) < 2:
        return 0.0, len(times)
    return (len(times) - 1) / ((times[-1] - times[0]) / 1000), len(times)


def measure(url: str, taps: int, hold: float, hide_truth: bool) -> dict:
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
        fps, painted = held_rate(page, hold)
        wait_idle(page)
        status = page.locator("#status-play textarea").input_value()
        browser.close()
    return {"latencies": latencies, "fps": fps, "painted": painted, "status": status}


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
            result = measure(url, args.taps, args.hold, args.hide_truth)
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
    if alone:
        print(f"the model alone in this process (1 thread, W held), before / after: "
              f"{alone[0]:.1f} / {alone[1]:.1f} fps; painted {result['fps'] / np.mean(alone):.2f}x "
              "their mean (a host whose speed drifts shows as before and after differing)")
    print(f"page status after: {result['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
