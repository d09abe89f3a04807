"""app.py in Debian's Chromium (Playwright): held keys play until released, taps and clicks made
during a frame are queued and all played, Stop ends a repeat, plots grow, the true world shows
beside the frame (and hides), one click downloads the video (and the page says so when nothing
was played), nothing leaves 127.0.0.1. The tiny random model of test_app keeps it to seconds;
each frame is made to take at least ``FRAME_SECONDS`` so that a key is held, and a queue waits,
over several frames.

Screenshots of both tabs are saved to $TEST_ARTIFACTS (default: a pytest tmp folder)."""

import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_app import free_port, record_scene, tiny_resources

import app
from mineworld.play import EXPORT_MIN_WIDTH, PlaySession
from mineworld.video import read_video

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
FRAME_SECONDS = 0.05

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def outgoing_hosts():
    """Every host this process looks up or connects to while the module's tests run."""
    hosts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple):  # not a Unix socket path
            hosts.append(address[0])
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        hosts.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield hosts
    assert set(hosts) <= LOCAL_HOSTS, hosts


@pytest.fixture(scope="module")
def served(tmp_path_factory, outgoing_hosts):
    """The demo on 127.0.0.1, its frames slowed to at least FRAME_SECONDS."""
    real_record = PlaySession.record

    def slow_record(self, action, made):  # on the model's thread, as each frame is made
        time.sleep(FRAME_SECONDS)
        return real_record(self, action, made)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        patch.setattr(PlaySession, "record", slow_record)
        started = time.perf_counter()
        blocks = app.build_demo(tiny_resources(record_scene(tmp_path_factory.mktemp("scene"))))
        url = app.launch(blocks, "127.0.0.1", free_port(), block=False)
        print(f"served {time.perf_counter() - started:.1f} s after build_demo")
        yield url
        blocks.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    """A fresh tab on the Play tab, its scene prefilled; keys go to the page. Every request
    it makes must go to 127.0.0.1."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(served)
    expect(page.locator("#frame-play img")).to_be_visible(timeout=60_000)
    expect(page.locator("#status-play textarea")).to_have_value(re.compile("0 frames played"))
    page.locator("h2").click()
    yield page
    page.close()
    assert requests and all(
        urlparse(url).hostname in LOCAL_HOSTS for url in requests if url.startswith("http")
    ), [url for url in requests if urlparse(url).hostname not in LOCAL_HOSTS]


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_new_charts(page, than, tab="play"):
    """Wait until the tab's charts are drawn anew (another picture than ``than``, a src or
    None); return the new one's src."""
    page.wait_for_function(
        f"n => (document.querySelector('#charts-{tab} img')?.src ?? null) !== n"
        f" && document.querySelector('#charts-{tab} img') !== null", arg=than)
    return page.locator(f"#charts-{tab} img").get_attribute("src")


def frames_played(page, tab="play"):
    status = page.locator(f"#status-{tab} textarea").input_value()
    return int(re.search(r"(\d+) frames played", status).group(1))


def wait_until_idle(page, tab="play"):
    """Wait until nothing is held or queued and the frames stop coming; return the count."""
    from playwright.sync_api import expect

    expect(page.locator(f"#queue-{tab}")).to_have_text("Held: none · Queued: none")
    count = -1
    while count != frames_played(page, tab):  # the frame being made when the queue emptied
        count = frames_played(page, tab)
        page.wait_for_timeout(300)
    return count


def wait_for_frames(page, more_than, tab="play"):
    page.wait_for_function(
        f"n => Number((/(\\d+) frames played/.exec(document.querySelector("
        f"'#status-{tab} textarea').value) || [0, 0])[1]) > n", arg=more_than)


def test_keys_step_the_world_and_the_plots_grow_offline(page, artifacts):
    from playwright.sync_api import expect

    download = page.get_by_role("button", name="Download mp4")
    download.click()  # nothing played yet: the page says so, and offers no file
    expect(page.get_by_text("Nothing played yet")).to_be_visible()
    expect(page.locator("#export-play")).to_be_hidden()
    frame = page.locator("#frame-play img")
    first = frame.get_attribute("src")
    page.keyboard.press("w")
    wait_for_frames(page, 0)
    expect(frame).not_to_have_attribute("src", first)
    after_w = wait_for_new_charts(page, None)
    played = wait_until_idle(page)
    page.keyboard.press("ArrowRight")
    wait_for_frames(page, played)
    wait_for_new_charts(page, after_w)
    played = wait_until_idle(page)
    assert int(page.locator("#keys-play .painted").get_attribute("data-painted")) >= 2
    print("painted:", page.locator("#keys-play").inner_text())

    truth = page.locator("#truth-play")  # the scene was recorded in the world: its truth
    expect(truth).to_contain_text(f"The true world: frame {played}")
    page.get_by_label("Show the true world").uncheck()
    expect(truth).to_be_hidden()
    page.get_by_label("Show the true world").check()
    expect(truth.locator("img")).to_be_visible()

    with page.expect_download() as saved:  # one click saves the video
        download.click()
    video = read_video(saved.value.path())
    assert len(video) == played + 1 and video.shape[2] >= EXPORT_MIN_WIDTH  # + the start frame

    page.get_by_label("recent_size").first.press("w")  # typing in a field: no step
    page.wait_for_timeout(500)
    assert frames_played(page) == played
    page.screenshot(path=str(artifacts / "play.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()  # opening the tab starts a comparison
    expect(page.locator("#frame-b img")).to_be_visible()
    expect(page.locator("#status-compare textarea")).to_have_value(re.compile("0 frames"))
    page.locator("h2").click()
    page.keyboard.press("d")  # only the open tab plays
    wait_for_frames(page, 0, "compare")
    page.wait_for_function("() => document.querySelectorAll('#strip-b img').length >= 1")
    assert frames_played(page) == played  # the Play tab's session did not step
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)
    overflow = page.evaluate("""() => {  // a full strip: eight frames in a side's half
      const row = document.querySelector('#strip-b .mineworld-strip-frames');
      while (row.children.length < 8) row.appendChild(row.firstElementChild.cloneNode(true));
      return row.scrollWidth - row.clientWidth;
    }""")
    assert overflow <= 0, f"the strip's last frames are cut by {overflow} px"


def test_a_held_key_plays_until_released_and_keys_combine(page):
    page.keyboard.down("w")
    wait_for_frames(page, 4)  # one key down, many frames
    page.keyboard.down("ArrowRight")  # W + arrow: walk while turning
    held = frames_played(page)
    wait_for_frames(page, held + 2)
    page.keyboard.up("ArrowRight")
    page.keyboard.up("w")
    played = wait_until_idle(page)
    page.wait_for_timeout(500)
    assert frames_played(page) == played  # released: no more frames
    captions = page.locator("#strip-play").inner_text()
    assert "forward + pitch +0° yaw +15°" in captions, captions


def test_a_held_keys_frames_come_through_the_tabs_key_socket(page):
    """Once the tab's own WebSocket is open, keys go out and frames come in through it: no
    Gradio event a key, no Gradio update a frame (app.Demo.key_socket)."""
    page.wait_for_function(
        "() => window.mineworldTabs.play.socket?.readyState === WebSocket.OPEN")
    page.evaluate("""() => {
      window.socketFrames = 0;
      window.mineworldTabs.play.socket.addEventListener('message', (e) => {
        if (JSON.parse(e.data).screen) window.socketFrames++;
      });
    }""")
    before = frames_played(page)
    page.keyboard.down("d")
    wait_for_frames(page, before + 4)
    page.keyboard.up("d")
    played = wait_until_idle(page) - before
    assert played >= 4
    assert page.evaluate("() => window.socketFrames") >= played


def test_the_strip_and_charts_are_asked_for_only_when_new_frames_were_painted(page):
    """No Gradio event from an idle tab, few while a key is held for 2 s (the charts every
    PLOT_PLAYING_SECONDS), and the charts drawn anew once the key is up."""
    page.wait_for_function(
        "() => window.mineworldTabs.play.socket?.readyState === WebSocket.OPEN")
    events = []
    page.on("request", lambda request: events.append(request.url)
            if "/queue/join" in request.url else None)
    for _ in range(5):  # the first frame's tick may come late on a busy host: quiet after it
        events.clear()
        page.wait_for_timeout(2000)
        if not events:
            break
    assert events == []  # an idle tab: nothing asked, where a timer asked twice a second
    charts = page.locator("#charts-play img")
    before = charts.get_attribute("src") if charts.count() else None
    played = frames_played(page)
    page.keyboard.down("w")
    wait_for_frames(page, played + 4)
    page.wait_for_timeout(1500)
    page.keyboard.up("w")
    assert len(events) <= 2, events  # keys and frames through the socket; a timer: 4 or more
    wait_until_idle(page)
    wait_for_new_charts(page, before)


def test_taps_and_clicks_during_frames_are_queued_and_stop_ends_a_repeat(page):
    from playwright.sync_api import expect

    for _ in range(5):  # five taps, faster than frames are made: none is lost
        page.keyboard.press("a")
    wait_for_frames(page, 4)
    played = wait_until_idle(page)
    assert played >= 5

    page.get_by_label(re.compile("Repeat a button")).fill(str(app.MAX_REPEAT))
    forward = page.locator("button.control-forward")
    forward.click()
    forward.click()  # while the first repeat plays: queued behind it
    expect(page.locator("#queue-play")).to_contain_text("Queued: W forward ×")
    page.locator("#stop-play").click()
    expect(page.locator("#queue-play")).to_have_text("Held: none · Queued: none")
    stopped = wait_until_idle(page)
    assert stopped < played + 2 * app.MAX_REPEAT  # the repeats did not run out
    page.wait_for_timeout(500)
    assert frames_played(page) == stopped

    page.locator("button.control-jump").click()  # after Stop, play goes on
    wait_for_frames(page, stopped)


def test_moving_the_start_frame_restarts_play_from_it(page):
    from playwright.sync_api import expect

    page.keyboard.press("w")
    wait_for_frames(page, 0)
    page.get_by_text("Scene", exact=True).click()
    slider = page.locator("#start-frame input[type=range]")
    box = slider.bounding_box()
    slider.click(position={"x": 2, "y": box["height"] / 2})  # dragged to the far left
    expect(page.locator("#status-play textarea")).to_have_value(
        re.compile(r"from frame 0 · 0 frames played"))


def test_a_refused_upload_says_why_and_leaves_the_scene_as_it_was(page, tmp_path):
    from playwright.sync_api import expect

    page.get_by_text("Scene", exact=True).click()
    lone = tmp_path / "actions.jsonl"  # a jsonl without its mp4
    lone.write_text('{"keyboard": {"keys": []}, "mouse": {"dx": 0, "dy": 0, "buttons": []}}\n')
    page.locator("input[type=file]").set_input_files(str(lone))
    expect(page.get_by_text("Scene not loaded: upload an .mp4 and its .jsonl")).to_be_visible()
    expect(page.get_by_text("Drop File Here")).to_be_visible()  # the refused file is gone
    expect(page.locator("#start-frame input[type=range]")).to_be_visible()  # no error badge
    drawn_errors = page.evaluate("""() => [...document.querySelectorAll('#start-frame .error')]
        .filter(el => getComputedStyle(el.closest('.wrap') || el).opacity !== '0').length""")
    assert drawn_errors == 0  # Gradio draws a failed event's outputs as red "Error" badges
    expect(page.locator("#status-play textarea")).to_have_value(re.compile("walk.mp4 from"))
