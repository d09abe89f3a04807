"""app.py in Debian's Chromium (Playwright): keys step the world, plots grow, nothing leaves
127.0.0.1. The tiny random model of test_app keeps it to seconds.

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

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Vertices of every line in a plot: the points it has drawn.
COUNT_POINTS = """el => [...el.querySelectorAll('path[aria-roledescription="line mark"]')]
    .reduce((n, p) => n + ((p.getAttribute('d') || '').match(/[ML]/g) || []).length, 0)"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture
def outgoing_hosts(monkeypatch):
    """Every host this process looks up or connects to from now on."""
    hosts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple):  # not a Unix socket path
            hosts.append(address[0])
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        hosts.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return hosts


@pytest.fixture
def artifacts(tmp_path):
    folder = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_more_points(page, plot_id, than):
    """Wait until the plot has drawn more than ``than`` points; return how many it has."""
    page.wait_for_function(
        f"n => ({COUNT_POINTS})(document.querySelector('#{plot_id}')) > n", arg=than
    )
    return page.eval_on_selector(f"#{plot_id}", COUNT_POINTS)


def frames_played(page, tab):
    status = page.locator(f"#status-{tab} textarea").input_value()
    return int(re.search(r"(\d+) frames played", status).group(1))


def test_keys_step_the_world_and_the_plots_grow_offline(tmp_path, outgoing_hosts, artifacts,
                                                       monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    started = time.perf_counter()
    blocks = app.build_demo(tiny_resources(record_scene(tmp_path)))
    url = app.launch(blocks, "127.0.0.1", free_port(), block=False)
    requests = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            frame = page.locator("#frame-play img")
            expect(frame).to_be_visible(timeout=60_000)  # the load event prefilled the scene
            print(f"page served {time.perf_counter() - started:.1f} s after build_demo")
            status = page.locator("#status-play textarea")
            expect(status).to_have_value(re.compile("0 frames played"))
            first = frame.get_attribute("src")

            page.locator("h1").click()  # keys go to the page, not to a field
            page.keyboard.press("w")
            expect(status).to_have_value(re.compile("1 frames played"))
            expect(frame).not_to_have_attribute("src", first)
            after_w = wait_for_more_points(page, "plot-tokens-play", 0)
            page.keyboard.press("ArrowRight")
            expect(status).to_have_value(re.compile("2 frames played"))
            expect(frame).not_to_have_attribute("src", first)
            wait_for_more_points(page, "plot-tokens-play", after_w)
            print("fps in the page:", re.search(r"([\d.]+) fps", status.input_value()).group(1))

            page.get_by_label("recent_size").first.press("w")  # typing in a field: no step
            page.wait_for_timeout(500)
            assert frames_played(page, "play") == 2

            page.screenshot(path=str(artifacts / "play.png"), full_page=True)

            page.get_by_role("tab", name="Compare").click()
            page.get_by_role("button", name="Start comparison from the start frame").click()
            expect(page.locator("#frame-b img")).to_be_visible()
            page.locator("h1").click()
            page.keyboard.press("d")  # only the open tab's button is pressed
            page.wait_for_function(
                "() => document.querySelectorAll('#strip-b img').length === 1"
            )
            expect(page.locator("#status-compare textarea")).to_have_value(
                re.compile("1 frames played"))
            assert frames_played(page, "play") == 2  # the Play tab's session did not step
            page.screenshot(path=str(artifacts / "compare.png"), full_page=True)
            browser.close()
    finally:
        blocks.close()
    assert requests and all(
        urlparse(url).hostname in LOCAL_HOSTS for url in requests if url.startswith("http")
    ), [url for url in requests if urlparse(url).hostname not in LOCAL_HOSTS]
    assert set(outgoing_hosts) <= LOCAL_HOSTS, outgoing_hosts
