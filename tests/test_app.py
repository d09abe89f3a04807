"""app.py served on 127.0.0.1 and driven with gradio_client: a tiny random model on a scene
recorded in the procedural world, so that every check runs in seconds on one CPU thread.

Also the play logic under it (mineworld.play) and the command line's exit status. The helpers
here (PatchTokenizer, tiny_model, record_scene) serve test_browser.py too."""

import asyncio
import dataclasses
import gc
import json
import math
import os
import re
import socket
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from starlette.datastructures import Address

import app
from cache import STRATEGIES, declared
from mineworld import play as play_module
from mineworld import stream as stream_module
from mineworld.actions import make_action
from mineworld.config import preset_path
from mineworld.decoding import Sampling
from mineworld.play import Options, PlaySession, process_memory_mb, read_scene
from mineworld.video import read_video, video_rate
from mineworld.world import record_episode
from mineworld.world.truth import TrueWorld, WorldProcess, WorldProcessEnded
from tests.stand_ins import (
    HEIGHT,
    WIDTH,
    PatchTokenizer,
    tiny_model,
)

SCENE_FRAMES = 10
CYCLES = 10  # open/close cycles in CI; benchmarks/app_load.py runs 100 on the embedded model
WORLD_SEED = 7


def record_scene(folder, seed=WORLD_SEED, name="walk"):
    """A world recording (mp4, jsonl, json sidecar) walking and turning: true frames exist."""
    actions = [make_action(["forward"], yaw=10.0 * (i % 3)) for i in range(SCENE_FRAMES)]
    stem = folder / name
    record_episode(seed, actions, stem, size=(WIDTH, HEIGHT))
    return stem.with_suffix(".mp4")


def tiny_resources(scene_mp4, strategy="streaming", params=None):
    tokenizer = PatchTokenizer()
    return app.Resources(
        model=tiny_model(), tokenizer=tokenizer,
        scene=read_scene(scene_mp4, tokenizer.frame_size), strategy=strategy,
        params={"start_size": 2, "recent_size": 20} if params is None else params,
        options=Options(reference_frames=2, sampling=Sampling(temperature=1.0, top_k=20)),
    )


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def visitor(url, address):
    """A client (one session) whose address the server takes to be ``address``: uvicorn trusts
    X-Forwarded-For from 127.0.0.1, as it would from a reverse proxy there."""
    return Client(url, verbose=False, headers={"X-Forwarded-For": address})


@pytest.fixture(scope="module")
def scene_mp4(tmp_path_factory):
    return record_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def served_blocks(scene_mp4, tmp_path_factory):
    """(url, resources, blocks) of the demo launched on 127.0.0.1 in this process."""
    resources = tiny_resources(scene_mp4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        blocks = app.build_demo(resources)
        url = app.launch(blocks, "127.0.0.1", free_port(), block=False)
        yield url, resources, blocks
        blocks.close()


@pytest.fixture(scope="module")
def served(served_blocks):
    """(url, resources) of the demo launched on 127.0.0.1 in this process."""
    return served_blocks[:2]


def path_of(output):
    """The file of an output: a path, or an update (new value and label) holding one."""
    return output["value"] if isinstance(output, dict) else output


def frame_of(screen, shown="frame-play"):
    """A frame of a screen value (``app.screen_value``): a side's, or the true world's."""
    return app.screen_images(screen)[shown]


def expected_frames(resources, start, action, steps, seed=0):
    options = dataclasses.replace(resources.options, seed=seed)
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, start,
                       [(resources.strategy, resources.params)], options)
    for _ in range(steps):
        play.step(action)
    return [side.frames[-1] for side in play.sides]


def picker_values(strategy, **params):
    """A strategy picker's API arguments: the strategy, then every strategy's parameter inputs
    (the API names them param_N, so they go by position); the ones not in ``params`` empty."""
    shown = app.input_group(strategy)
    inputs = [(group, param.name) for group, declaration in declared().items()
              for param in declaration.settable() if param.default is not None]
    return [strategy, *[params.get(name) if group == shown else None for group, name in inputs]]


# -- the strategy pickers ----------------------------------------------------------------------


def build_picker(resources, strategy="streaming", params=None):
    with app.gr.Blocks():
        return app.StrategyPicker.build("Strategy", strategy, params or {}, resources)


def test_pickers_show_each_strategys_own_defaults_for_the_model(scene_mp4):
    resources = tiny_resources(scene_mp4)
    picker = build_picker(resources, params={"recent_size": 30})
    layout = app.cache_layout(resources.model.config)
    for name, cls in STRATEGIES.items():
        defaults = {**cls.defaults(layout), **({"recent_size": 30} if name == "streaming" else {})}
        for param in cls.settable():
            component = picker.inputs[name, param.name]
            assert component.value == defaults[param.name], (name, param.name)
            assert component.visible == (name == "streaming")
            assert param.range_text in component.info
    values = [component.value for component in picker.inputs.values()]
    # The tiny model holds 4 frames: the frame window's defaults are 1 + 2 frames.
    assert picker.chosen("frames", *values) == ("frames", {"sink_frames": 1, "recent_frames": 2})
    empty = [None] * len(values)
    assert picker.chosen("frames", *empty) == ("frames", {})  # its defaults for the model


def test_a_class_path_is_taken_where_the_page_allows_it(scene_mp4):
    resources = tiny_resources(scene_mp4)
    spec = "tests.stand_ins:StartRecentKVCache"
    values = [None] * len(build_picker(resources).inputs)
    with pytest.raises(ValueError, match="package.module:Class only when it is served on"):
        build_picker(resources).chosen(spec, *values)
    local = dataclasses.replace(resources, any_class_path=True)
    picker = build_picker(local)
    assert picker.chosen(spec, *values) == (spec, {})  # it keeps its own cache_size
    assert not any(update["visible"] for update in picker.show_parameters(spec))
    play = PlaySession(local.model, local.tokenizer, local.scene, 2, [(spec, {})], local.options)
    play.step(make_action(["forward"]))
    assert play.describe_sides() == f"{spec}(policy='StartRecentKVCache', budget=32)"
    play.close()
    started = dataclasses.replace(resources, strategy=spec, params={})
    assert spec in started.strategy_choices
    assert build_picker(started, spec).chosen(spec, *[None] * len(values)) == (spec, {})


# -- play logic ------------------------------------------------------------------------------


def test_play_session_compares_two_strategies_against_the_true_world(scene_mp4):
    resources = tiny_resources(scene_mp4)
    play = PlaySession(
        resources.model, resources.tokenizer, resources.scene, 3,
        [("none", {}), ("streaming", {"start_size": 2, "recent_size": 20})], resources.options,
    )
    assert app.charts(play, ["A", "B"]) is None  # nothing played: no picture, no shared file
    for _ in range(6):  # past the 4-frame context: the full cache re-prefills, streaming evicts
        play.step(make_action(["forward"], yaw=5.0))
    play.render_truth(7, make_action(["forward"], yaw=5.0))  # ahead of frame 7's making
    assert play.truth_frame(6)[0] == 6 and play.truth_frame(7)[0] == 7
    play.score_pending(through=4)
    assert play.newest_truth[0] == 4 and {row["frame"] for row in play.quality} == {1, 2, 3, 4}
    play.step(make_action(["forward"], yaw=5.0))
    world = TrueWorld(resources.scene.world, 3, (WIDTH, HEIGHT))  # the truth, in one go
    truths = [world.step(make_action(["forward"], yaw=5.0)) for _ in range(7)]
    assert np.array_equal(play.truth_frame(7)[1], truths[6])
    play.score_pending()  # frames 5 to 7, scored against the frames rendered ahead
    assert play.newest_truth[0] == 7 and np.array_equal(play.newest_truth[1], truths[6])
    assert len(play.quality) == 3 * 7  # A vs B, A vs truth, B vs truth
    assert app.charts(play, ["A", "B"]).size == (4 * app.CHART_PANEL[0], 2 * app.CHART_PANEL[1])
    full, streaming = play.sides
    assert full.rows[-1]["reprefills"] >= 1
    assert sum(row["evicted this frame"] for row in streaming.rows) > 0
    lines = streaming.plot_series()
    assert set(lines) == set(app.PLOTS)
    assert lines["tokens"]["live tokens"][0] == list(range(1, 8))  # frames 1 to 7
    for measure in app.QUALITY:  # PSNR and SSIM, from mineworld.metrics like the benchmarks
        quality = play.quality_series(measure)
        assert list(quality) == ["A vs B", "A vs truth", "B vs truth"]
        assert all(frames == list(range(1, 8)) for frames, _values in quality.values())
    assert all(-1 <= v <= 1 for _frames, values in play.quality_series("ssim").values()
               for v in values)
    assert "A vs B" in play.latest_quality() and "SSIM" in play.latest_quality()
    exported = play.export()
    video = read_video(exported)
    scale = math.ceil(play_module.EXPORT_MIN_WIDTH / WIDTH)  # whole factor, >= 512 px a side
    band = play_module.CAPTION_HEIGHT
    # start frame + 7, each side scaled up under a band naming it, the sides side by side
    assert video.shape == (8, band + HEIGHT * scale, 2 * WIDTH * scale, 3)
    newest = np.concatenate([side.frames[-1] for side in play.sides], axis=1)
    pixels = video[-1, band + scale // 2 :: scale, scale // 2 :: scale].astype(int)
    assert np.abs(pixels - newest).mean() < 3  # the frames, pixel for pixel (H.264 aside)
    assert play.side_labels() == [
        "A: none", "B: streaming(start_size=2, recent_size=20, pos_shift=False)"]
    assert (video[0, :band] > 200).any()  # the labels are written in the band
    assert video_rate(exported) == resources.scene.fps
    play.close()
    assert play.closed


def test_true_worlds_in_their_own_process_render_as_in_this_one_and_go_with_their_handle(
        scene_mp4):
    resources = tiny_resources(scene_mp4)
    moves = [make_action(["forward"], yaw=5.0), make_action(["jump"]), make_action(["left"])]
    here = TrueWorld(resources.scene.world, 3, (WIDTH, HEIGHT))
    process = WorldProcess()
    try:
        there = process.open(resources.scene.world, 3, (WIDTH, HEIGHT))
        assert all(np.array_equal(here.step(move), there.step(move)) for move in moves)
        fork_here, fork_there = here.fork(), there.fork()
        assert all(np.array_equal(fork_here.step(move), fork_there.step(move))
                   for move in moves)
        assert np.array_equal(here.step(moves[0]), there.step(moves[0]))  # forks moved alone
        with pytest.raises(KeyError):  # the process's error, raised in the caller
            process.open(({"seed": 1}, []), 0, (WIDTH, HEIGHT))
        key = fork_there.key
        del fork_there
        gc.collect()
        there.step(moves[0])  # the dropped handle's world went with this call
        with pytest.raises(KeyError):
            process.call("step", key, moves[0])
        options = dataclasses.replace(resources.options, world_process=process)
        play = PlaySession(resources.model, resources.tokenizer, resources.scene, 3,
                           [("none", {})], options)
        play.step(moves[0])
        play.render_truth(1, moves[0])
        assert np.array_equal(play.truth_frame(1)[1],
                              TrueWorld(resources.scene.world, 3, (WIDTH, HEIGHT)).step(moves[0]))
        process._process.kill()  # killed, or out of memory: the worlds in it are lost
        play.step(moves[1])
        play.render_truth(2, moves[1])  # the play goes on without its true world
        assert play.truth is None and play.truth_frame(2)[0] == 1
        assert play.step(moves[2]) and play.frames_played == 3
        with pytest.raises(WorldProcessEnded):
            there.step(moves[0])
        again = process.open(resources.scene.world, 3, (WIDTH, HEIGHT))  # in a new process
        assert np.array_equal(again.step(moves[0]),
                              TrueWorld(resources.scene.world, 3, (WIDTH, HEIGHT)).step(moves[0]))
    finally:
        process.close()
    with pytest.raises(WorldProcessEnded, match="closed"):
        again.step(moves[0])


def test_a_new_play_or_strategy_has_the_seats_newest_keys_made_ahead_again(scene_mp4):
    resources = tiny_resources(scene_mp4)
    demo, seat = app.Demo(resources), stream_module.Seat()
    forward = make_action(["forward"])
    seat.recent_actions.append(forward)

    def made_ahead(play):
        """The actions whose next frames are ready, once one is (at most 5 s)."""
        for _ in range(500):
            ready = [frames.action for frames in play._prepared
                     if frames.fits(play, frames.action)]
            if ready:
                return ready
            time.sleep(0.01)
        return []

    try:
        play = demo.new_play(None, None, None, [("none", {})], None)
        demo.replace_play(seat, play)
        assert made_ahead(play) == [forward]
        demo.scheduler.call(play.switch_strategy, 0, "h2o", {})
        assert not any(frames.fits(play, forward) for frames in play._prepared)
        seat.prepare_next(demo.scheduler)
        assert made_ahead(play) == [forward]
    finally:
        demo.scheduler.shutdown()


def test_identical_sides_are_drawn_at_the_ceiling_and_called_identical(scene_mp4):
    resources = tiny_resources(scene_mp4)
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, 2,
                       [("none", {}), ("none", {})], resources.options)
    play.step(make_action(["forward"]))
    psnr = play.quality_series("psnr")
    assert psnr["A vs B"] == ([1], [play_module.PSNR_PLOT_CEILING_DB])  # not inf, not 100 dB
    assert max(v for _frames, values in psnr.values() for v in values) <= (
        play_module.PSNR_PLOT_CEILING_DB)
    assert play.latest_quality().startswith("A vs B identical, A vs truth ")


def test_the_kv_budget_field_fills_in_the_chosen_strategys_values(scene_mp4):
    from mineworld.loading import kv_budget_params

    resources = tiny_resources(scene_mp4)
    with app.gr.Blocks():
        picker = app.StrategyPicker.build("Cache strategy", "streaming", {}, resources)
    config = resources.model.config
    fitted = kv_budget_params("streaming", 0.05, config, torch.float32, "KV MiB")
    assert fitted["recent_size"] > 0
    updates = dict(zip(picker.inputs, picker.fit_budget("streaming", 0.05), strict=True))
    for (group, param), update in updates.items():
        if group == "streaming" and param in fitted:
            assert update["value"] == fitted[param]
        else:  # other strategies' fields stay as they are
            assert update == app.gr.skip()
    assert updates[("streaming", "pos_shift")] == app.gr.skip()  # no budget's business
    with pytest.warns(UserWarning, match="KV MiB: strategy none keeps the whole context"):
        refused = picker.fit_budget("none", 0.05)  # a full cache takes no budget
    assert refused == [app.gr.skip()] * len(picker.inputs)
    # The field is text (an empty number field would read 0): typed text is read as a number.
    assert picker.fit_budget("streaming", " 0.05") == picker.fit_budget("streaming", 0.05)
    with pytest.warns(UserWarning, match="KV MiB must be a number, got ''"):
        picker.fit_budget("streaming", "")


def test_switching_strategy_continues_from_the_newest_frames(scene_mp4):
    resources = tiny_resources(scene_mp4)
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, 2,
                       [("none", {})], resources.options)
    play.step(make_action(["jump"]))
    play.switch_strategy(0, "h2o", {"hh_ratio": 0.2, "recent_size": 20})
    play.step(make_action(["jump"]))
    side = play.sides[0]
    assert side.strategy == "h2o" and len(side.frames) == 2
    assert [row["frame"] for row in side.rows] == [1, 2]
    assert all(row["evicted this frame"] >= 0 for row in side.rows)
    hit = side.plot_series()["hit"]  # h2o tracks attention: the seed's "hit rate" is drawn
    assert all(frames == [2] and 0 <= values[0] <= 1 for frames, values in hit.values())
    # with its split by the kept tokens' role: h2o has no sinks
    assert list(hit) == ["attention hit rate", "kept by heavy hitters", "kept by recent"]
    with pytest.raises(ValueError, match="hh_ratio"):
        play.switch_strategy(0, "h2o", {"hh_ratio": 2.0})


def test_a_frame_prepared_ahead_is_the_frame_the_step_makes_and_is_taken_only_then(scene_mp4):
    """Sampled, two sides: frames prepared for the action the step takes are the frames a
    play that never prepares makes (and the step runs no forward pass); prepared for another
    action, given up half-way, or made before a switch, they are dropped and the play goes
    on as if nothing had been prepared."""
    resources = tiny_resources(scene_mp4)
    strategies = [("streaming", {"start_size": 2, "recent_size": 20}), ("none", {})]

    def new_play():
        return PlaySession(resources.model, resources.tokenizer, resources.scene, 2,
                           strategies, resources.options)

    prepared, plain = new_play(), new_play()
    forward, jump = make_action(["forward"]), make_action(["jump"], yaw=5.0)
    calls = []
    original_forward = type(resources.model).forward_feeds

    def counted(model, feeds):
        calls.append(len(feeds))
        return original_forward(model, feeds)

    rendered = []
    original_render = TrueWorld.step

    def counted_render(world, action):
        rendered.append(action)
        return original_render(world, action)

    # Each ask of a case (a list of actions) made ahead, those of one ask together.
    for asks, action in [([[forward]], forward), ([[forward]], jump), ([], jump),
                         ([[jump]], jump), ([[forward, jump]], jump),
                         ([[jump], [forward]], forward)]:
        for ask in asks:
            prepared.prepare(ask)
        aheads = [ahead for ask in asks for ahead in ask]
        calls.clear()
        rendered.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(resources.model), "forward_feeds", counted)
            patch.setattr(TrueWorld, "step", counted_render)
            [frame] = stream_module.step_together([(prepared, action)])  # as the page steps
            prepared.render_truth(prepared.frames_played, action)  # and renders the truth
        assert bool(calls) == bool(rendered) == (action not in aheads)  # made ahead: no pass
        assert (frame.ahead_seconds > 0) == (action in aheads)
        assert [image.tolist() for image in frame.images] == [
            frame.tolist() for frame in plain.step(action)]
        plain.render_truth(plain.frames_played, action)
        assert prepared.truth_frame(prepared.frames_played)[1].tolist() == (
            plain.truth_frame(plain.frames_played)[1].tolist())
    prepared.prepare([forward], stop=lambda action: True)  # given up before its first pass
    assert prepared._prepared == []
    prepared.prepare([forward, jump], stop=lambda action: action == jump)  # jump given up
    assert [frames.action for frames in prepared._prepared] == [forward]
    assert [truth.action for truth in prepared._prepared_truths] == [forward]
    prepared.switch_strategy(1, "h2o", {"hh_ratio": 0.2, "recent_size": 20})
    plain.switch_strategy(1, "h2o", {"hh_ratio": 0.2, "recent_size": 20})
    assert [frame.tolist() for frame in prepared.step(forward)] == [
        frame.tolist() for frame in plain.step(forward)]  # the old session's frame not taken
    assert [row["frame"] for row in prepared.sides[0].rows] == list(range(1, 8))


def test_a_long_play_keeps_only_the_newest_frames(scene_mp4, monkeypatch):
    monkeypatch.setattr(play_module, "KEPT_FRAMES", 5)
    resources = tiny_resources(scene_mp4)
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, 2,
                       [("streaming", {"start_size": 2, "recent_size": 20}), ("none", {})],
                       resources.options)
    for index in range(9):
        play.step(make_action(["forward"], yaw=5.0 * (index % 2)))
    assert play.frames_played == 9 and play.truncated
    for side in play.sides:
        assert len(side.frames) == len(side.captions) == len(side.rows) == 5
        assert [row["frame"] for row in side.rows] == [5, 6, 7, 8, 9]
    assert len(play.actions) == 5 and len(play.quality) <= 15
    assert read_video(play.export()).shape[0] == 5  # the kept frames, not the start frame
    assert "9 frames played (the newest 5 kept)" in app.status_line(play)
    play.switch_strategy(0, "h2o", {"hh_ratio": 0.2, "recent_size": 20})  # from kept frames
    play.step(make_action(["jump"]))
    assert play.frames_played == 10 and play.sides[0].rows[-1]["frame"] == 10
    play.close()
    assert not any(side.frames or side.rows for side in play.sides)


def test_a_long_video_is_cut_with_a_note(scene_mp4):
    scene = read_scene(scene_mp4, (WIDTH, HEIGHT), max_frames=4)
    assert len(scene.frames) == len(scene.actions) == 4
    assert scene.notes == ("only the first 4 frames are read",)
    assert "only the first 4 frames are read" in app.describe_scene(scene)
    whole = read_scene(scene_mp4, (WIDTH, HEIGHT))
    assert len(whole.frames) == SCENE_FRAMES and whole.notes == ()


@pytest.mark.parametrize("edit, reason", [
    ({"size": [100000, 100000]}, "size must be"),
    ({"supersample": 1000}, "supersample must be"),
    # The old documented maxima: 75 s and +4.7 GB a step on the 2-core host.
    ({"size": [1024, 1024], "supersample": 4}, f"from 8 to {2 * WIDTH} x {2 * HEIGHT} (2 times"),
    ({"size": [2 * WIDTH + 1, HEIGHT]}, "size must be"),
    ({"supersample": 3}, "supersample must be in [1, 2]"),
    ({"padding": " " * 5000}, "over 4,096 bytes"),
    ({"seed": -1}, "seed must be"),
    ({"seed": "7"}, "seed must be"),
    ({"start": {"x": 1}}, "start must hold"),
    ({"start": "nan"}, "start must hold"),
    ({"start_nan": True}, "start.y must be a finite number"),
    (None, "Expecting"),
], ids=["huge-frames", "supersample", "old-maxima", "wider-than-twice-the-model",
        "more-supersampling-than-recorded", "long-sidecar", "negative-seed", "text-seed",
        "start-keys", "start-not-a-dict", "start-nan", "not-json"])
def test_an_unusable_world_sidecar_is_ignored_with_a_note(tmp_path, edit, reason):
    mp4 = record_scene(tmp_path)
    sidecar = mp4.with_suffix(".json")
    if edit is None:
        sidecar.write_text("{not json")
    else:
        document = json.loads(sidecar.read_text())
        if edit.pop("start_nan", False):
            document["start"]["y"] = float("nan")
        document.update(edit)
        sidecar.write_text(json.dumps(document))
    scene = read_scene(mp4, (WIDTH, HEIGHT))
    assert scene.world is None
    [note] = scene.notes
    assert note.startswith("world sidecar ignored (no true frames)") and reason in note
    resources = tiny_resources(mp4)
    play = PlaySession(resources.model, resources.tokenizer, scene, 2, [("none", {})],
                       resources.options)
    play.step(make_action(["forward"]))  # plays on, without true frames
    assert play.frames_played == 1 and play.quality_series() == {}


def test_a_scene_keeps_only_its_frames_actions_and_world(tmp_path):
    """The world sidecar at its limits is used, and a scene cut to its first frames holds the
    actions of those frames only (the world's too), not the whole file's."""
    mp4 = record_scene(tmp_path)
    sidecar = json.loads(mp4.with_suffix(".json").read_text())
    sidecar.update(size=[2 * WIDTH, 2 * HEIGHT], supersample=2)
    mp4.with_suffix(".json").write_text(json.dumps(sidecar))
    scene = read_scene(mp4, (WIDTH, HEIGHT), max_frames=4)
    assert len(scene.frames) == len(scene.actions) == len(scene.world[1]) == 4
    play = PlaySession(tiny_model(), PatchTokenizer(), scene, 2, [("none", {})],
                       Options(reference_frames=2))
    assert play.truth.step(make_action(["forward"])).shape == (HEIGHT, WIDTH, 3)


def test_the_page_states_its_limits():
    for words in (f"{app.MAX_UPLOAD_MB} MB", f"first {app.MAX_SCENE_FRAMES} frames",
                  "4096 px a side", "236 M pixels in all", "20 idle minutes",
                  f"at most {app.MAX_REPEAT} times", f"newest {app.KEPT_FRAMES} frames"):
        assert words in app.LIMITS_TEXT


@pytest.mark.parametrize("repeat, times, noted", [
    (3, 3, False), (1000, app.MAX_REPEAT, True), (0, 1, True), (2.5, 2, True),
])
def test_repeat_counts_are_clamped_with_a_note(repeat, times, noted):
    assert app.repeat_count(repeat)[0] == times
    assert bool(app.repeat_count(repeat)[1]) == noted


@pytest.mark.parametrize("repeat", [float("nan"), float("inf"), None, "many"])
def test_a_repeat_that_is_not_a_number_is_refused(repeat):
    with pytest.raises(ValueError, match="repeat must be"):
        app.repeat_count(repeat)


# -- served app ------------------------------------------------------------------------------


def test_a_step_returns_a_new_frame(served):
    url, resources = served
    client = Client(url, verbose=False)
    start = client.predict(1, api_name="/reset")
    steps = client.submit(3, 0, 0, api_name="/play_forward")
    outputs = steps.result()
    start_frame, newest = frame_of(start[1]), frame_of(outputs[1])
    assert newest.shape == (HEIGHT, WIDTH, 3)
    assert not np.array_equal(start_frame, newest)
    [expected] = expected_frames(resources, 1, make_action(["forward"]), 3)
    assert np.array_equal(newest, expected)
    assert "3 frames played" in outputs[0] and "fps" in outputs[0]
    streamed = steps.outputs()
    played = [int(re.search(r"(\d+) frames played", out[0]).group(1)) for out in streamed]
    assert played == [1, 2, 3, 3]  # every frame streamed as it was made, then the queue left
    truths = [frame_of(out[1], "truth-play") for out in streamed]  # the world's, beside
    assert not np.array_equal(truths[0], truths[2])
    video = read_video(path_of(client.predict(api_name="/download")))
    assert len(video) == 4  # the start frame and the three played
    assert video.shape[2] >= play_module.EXPORT_MIN_WIDTH


def test_an_uploaded_scene_is_played(served, tmp_path):
    client = Client(served[0], verbose=False)
    mp4 = record_scene(tmp_path, seed=WORLD_SEED + 1, name="hill")
    client.predict([handle_file(mp4), handle_file(mp4.with_suffix(".jsonl"))],
                   api_name="/load_scene")
    status = client.predict(2, api_name="/reset")[0]
    assert status.startswith("hill.mp4 from frame 2")
    status = client.predict(1, 0, 0, api_name="/play_jump")[0]
    assert "1 frames played" in status


def test_a_closed_play_shows_only_the_queue(served):
    demo = app.Demo(served[1])
    with app.gr.Blocks():
        view = app.PlayView.build("t", ["Play"], demo.close_seat, height=100,
                                  frame_size=(WIDTH, HEIGHT))
    seat = app.Seat()
    seat.play = demo.new_play(None, None, None, [("none", {})], None)
    assert len(view.frame_values(seat)) == len(view.frame_outputs)
    demo.scheduler.call(seat.play.close)  # the tab went while a frame was on its way
    values = view.frame_values(seat)
    demo.scheduler.shutdown()
    assert values[-1] == "Held: none · Queued: none"
    assert all(isinstance(v, dict) and v.get("__type__") == "update" for v in values[1:-1])


def test_closing_the_tab_frees_its_plays(served):
    demo = app.Demo(served[1])
    request = SimpleNamespace(session_hash="closed-tab")
    plays = [demo.new_play(None, None, None, strategies, request)
             for strategies in ([("none", {})], [("none", {}), ("none", {})])]
    demo.forget(request)
    assert all(play.closed for play in plays)


def test_an_idle_session_is_freed_without_an_unload(served, monkeypatch):
    """API clients never close a tab: their plays and scene go once they are idle."""
    demo = app.Demo(served[1])
    request = SimpleNamespace(session_hash="api-client")
    play = demo.new_play(None, None, None, [("none", {})], request)
    scene = dataclasses.replace(served[1].scene)
    demo.open_scenes[request.session_hash] = scene
    demo.free_idle_sessions()
    assert not play.closed  # active a moment ago
    monkeypatch.setattr(app, "IDLE_SECONDS", 0.0)
    demo.free_idle_sessions()
    demo.scheduler.call(lambda: None)  # the play closes on the model's thread, in order
    assert play.closed and len(scene.frames) == 0 and scene.world is None
    with pytest.raises(ValueError, match="the uploaded scene was freed .* upload it again"):
        demo.new_play(scene, None, None, [("none", {})], request)
    demo.scheduler.shutdown()


@pytest.fixture
def quickly_idle(scene_mp4, tmp_path, monkeypatch):
    """The url of a demo whose sessions are idle after 3 s, looked for every 0.2 s (long enough
    that a busy host's reply to a reset does not outlast it)."""
    monkeypatch.setattr(app, "IDLE_SECONDS", 3.0)
    monkeypatch.setattr(app, "SWEEP_SECONDS", 0.2)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    blocks = app.build_demo(tiny_resources(scene_mp4))
    yield app.launch(blocks, "127.0.0.1", free_port(), block=False)
    blocks.close()


def test_keeping_a_page_open_ends_once_its_session_is_not_active(served, monkeypatch):
    """A join whose stream nobody reads is never cleaned up by Gradio: the handler that keeps
    a page's stream open ends by itself, freeing its client's place in the queue."""
    monkeypatch.setattr(app, "KEEP_OPEN_SECONDS", 0)
    demo = app.Demo(served[1])

    async def ticks(session, most=3):
        count = 0
        async for _tick in demo.keep_open(SimpleNamespace(session_hash=session)):
            count += 1
            if count == most:
                break
        return count

    demo.touch(SimpleNamespace(session_hash="playing"))
    assert app.asyncio.run(ticks("playing")) == 3
    assert app.asyncio.run(ticks("never-started")) == 0


def test_an_idle_api_client_loses_its_uploaded_scene_and_play(quickly_idle, tmp_path):
    others = live_plays()
    client = Client(quickly_idle, verbose=False)
    mp4 = record_scene(tmp_path, seed=WORLD_SEED + 2, name="kept")
    client.predict([handle_file(mp4), handle_file(mp4.with_suffix(".jsonl"))],
                   api_name="/load_scene")
    assert client.predict(2, api_name="/reset")[0].startswith("kept.mp4 from frame 2")
    mine = live_plays() - others
    assert mine
    time.sleep(4.0)  # idle: no request, no unload (the client stays connected)
    assert not live_plays() & mine
    status = client.predict(2, api_name="/reset")[0]
    assert status == ("Not started: the uploaded scene was freed (its tab closed or was idle): "
                      "upload it again")
    client.close()


def test_a_bad_parameter_returns_the_validation_message(served):
    client = Client(served[0], verbose=False)
    outputs = client.predict(*picker_values("h2o", hh_ratio=2.0), api_name="/apply_strategy")
    status = outputs[0]
    assert status.startswith("Strategy not changed:") and "hh_ratio" in status
    assert "Traceback" not in status
    assert outputs[-1] == served[1].strategy  # the picker shows the strategy that plays on


def test_two_clients_stepping_at_once_get_their_own_frames(served):
    url, resources = served
    starts = {1: 1, 2: 6}  # seed: start frame, distinct for each client
    clients = {seed: visitor(url, f"10.0.2.{seed}") for seed in starts}
    for seed, client in clients.items():
        client.predict(starts[seed], seed, api_name="/reset")
    with ThreadPoolExecutor(2) as pool:
        jobs = {seed: pool.submit(client.predict, 3, 0, 0, api_name="/play_look_right")
                for seed, client in clients.items()}
        results = {seed: job.result() for seed, job in jobs.items()}
    frames = {seed: frame_of(outputs[1]) for seed, outputs in results.items()}
    assert not np.array_equal(frames[1], frames[2])
    for seed, frame in frames.items():
        [expected] = expected_frames(resources, starts[seed], make_action((), 0, 15.0), 3, seed)
        assert np.array_equal(frame, expected), f"client of seed {seed}"


@pytest.mark.parametrize("path", [
    "/etc/passwd", "../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/proc/self/environ", "app.py", str(app.Path(app.__file__).resolve()),
    "assets/model/config.yaml", str(app.Path(app.__file__).resolve().parent / "README.md"),
])
def test_no_file_is_served_outside_gradios_own_folders(served, path):
    response = httpx.get(f"{served[0]}gradio_api/file={path}")
    assert response.status_code in (403, 404), response.text[:200]
    assert "root:" not in response.text and "MineWorld" not in response.text


def test_an_upload_over_the_size_limit_is_refused(served, tmp_path):
    big = tmp_path / "big.mp4"
    with big.open("wb") as file:
        file.truncate(app.MAX_UPLOAD_MB * 2**20 + 1)
    with big.open("rb") as file:
        response = httpx.post(f"{served[0]}gradio_api/upload", files={"files": file},
                              timeout=60)
    assert response.status_code == 413
    assert "maximum allowed size" in response.text
    small = tmp_path / "small.jsonl"
    small.write_text("{}\n")
    with small.open("rb") as file:
        assert httpx.post(f"{served[0]}gradio_api/upload", files={"files": file}).is_success


def raw_upload(url, headers):
    """The status line of a POST to Gradio's upload route with ``headers`` and no body."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\n"
                           f"Content-Type: multipart/form-data; boundary=x\r\n{headers}\r\n"
                           .encode())
        return connection.recv(4096).decode().split("\r\n")[0]


def test_an_upload_request_over_the_limits_is_refused_before_its_body(served):
    too_big = f"Content-Length: {app.MAX_REQUEST_MB * 2**20 + 1}\r\n"
    assert raw_upload(served[0], too_big) == "HTTP/1.1 413 Request Entity Too Large"
    chunked = "Transfer-Encoding: chunked\r\n"
    assert raw_upload(served[0], chunked) == "HTTP/1.1 411 Length Required"


def test_any_other_request_body_over_the_limit_is_refused(served):
    """Issue 21: the queue took a 50 MB JSON body; events carry a few hundred bytes."""
    url = served[0]
    body = json.dumps({"data": ["x" * (app.MAX_BODY_KB * 1024)], "fn_index": 0,
                       "session_hash": "flood"})
    response = httpx.post(f"{url}gradio_api/queue/join", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and f"{app.MAX_BODY_KB} KB" in response.text

    def chunks():  # no length named: cut off once over the limit
        for _ in range(app.MAX_BODY_KB + 8):
            yield b"x" * 1024

    response = httpx.post(f"{url}gradio_api/queue/join", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert not response.is_success
    assert Client(url, verbose=False).predict(1, api_name="/reset")  # the page still plays


class StandInQueue:
    """An ASGI app answering queue joins as Gradio does, its events live in
    ``event_ids_to_events`` until ended; ``hold`` keeps a join unanswered until set."""

    def __init__(self):
        self._queue = SimpleNamespace(event_ids_to_events={})
        self.hold = None

    async def __call__(self, scope, receive, send):
        if self.hold is not None:
            await self.hold.wait()
        event = f"event-{len(self._queue.event_ids_to_events)}-{time.perf_counter_ns()}"
        self._queue.event_ids_to_events[event] = scope["client"][0]
        await app.PlainTextResponse(json.dumps({"event_id": event}))(scope, receive, send)

    def end(self, client):
        """One event of ``client`` completes (or fails, or is cancelled)."""
        live = self._queue.event_ids_to_events
        live.pop(next(event for event, owner in live.items() if owner == client))


def join_through(limits, client):
    """The HTTP status of a queue join from ``client`` through the middleware ``limits``."""
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join",
             "headers": [(b"content-length", b"2")], "client": (client, 5000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    async def join():
        await limits(scope, receive, send)
        return sent[0]["status"]

    return join


def test_a_client_has_at_most_its_bound_of_events_in_the_queue(capsys):
    """Issue 21: one client filled all 64 queue places, and everyone else got 503."""
    queue = StandInQueue()
    limits = app.RequestLimits(queue, blocks=queue)
    run = app.asyncio.run
    bound = app.MAX_EVENTS_PER_CLIENT
    assert [run(join_through(limits, "10.0.0.1")()) for _ in range(bound + 1)] == (
        [200] * bound + [429])
    assert run(join_through(limits, "10.0.0.2")()) == 200  # another client is not affected
    queue.end("10.0.0.1")  # an event ended: its place is free again
    assert [run(join_through(limits, "10.0.0.1")()) for _ in range(2)] == [200, 429]
    queue.end("10.0.0.2")
    assert limits.client_events.count("10.0.0.1") == bound
    assert set(limits.client_events.events) == {"10.0.0.1"}  # ended ones are not kept
    log = capsys.readouterr().err.splitlines()
    assert len(log) == 2 and all(f"At most {bound} requests" in line and "10.0.0.1" in line
                                 for line in log)


def test_joins_not_answered_yet_count_toward_the_bound():
    """A burst of joins at once: each counts from its arrival, before Gradio has queued it."""
    queue = StandInQueue()
    limits = app.RequestLimits(queue, blocks=queue)
    bound = app.MAX_EVENTS_PER_CLIENT

    async def burst():
        queue.hold = app.asyncio.Event()
        joins = [app.asyncio.create_task(join_through(limits, "10.0.0.1")())
                 for _ in range(bound + 3)]
        await app.asyncio.sleep(0.05)  # every join has arrived, none answered
        queue.hold.set()
        return sorted(await app.asyncio.gather(*joins))

    assert app.asyncio.run(burst()) == [200] * bound + [429] * 3


def test_a_floods_joins_over_the_bound_are_refused_until_its_events_end(served, monkeypatch):
    """Sessions are free to invent: one address with a play in each of many sessions, each a
    repeat of 32, has at most its bound in work; another client plays meanwhile; once the
    flood's events end, its places are free again."""
    url = served[0]
    bound = app.MAX_EVENTS_PER_CLIENT
    step_together = stream_module.step_together

    def slow_step_together(steps):  # every frame slow: 32 outlast the test's other requests
        time.sleep(0.05)
        return step_together(steps)

    monkeypatch.setattr(stream_module, "step_together", slow_step_together)
    flood = [visitor(url, "10.0.1.1") for _ in range(bound + 1)]
    other = visitor(url, "10.0.1.2")
    try:
        jobs = [client.submit(app.MAX_REPEAT, 0, 0, api_name="/play_forward")
                for client in flood]
        done, _running = wait([job.future for job in jobs], return_when=FIRST_COMPLETED)
        [refused] = [job for job in jobs if job.future in done]
        assert "429" in str(refused.exception())
        assert "1 frames played" in other.predict(1, 0, 0, api_name="/play_jump")[0]
        for job in jobs:
            if job is not refused:
                assert f"{app.MAX_REPEAT} frames played" in job.result()[0]
        assert "frames played" in flood[0].predict(1, 0, 0, api_name="/play_jump")[0]
    finally:
        for client in [*flood, other]:
            client.close()


def test_a_play_whose_frames_nobody_reads_stops(served, monkeypatch):
    """Issue 21: joins of repeat 32 whose streams were never opened made all 32 frames each,
    taking the model from everyone else."""
    url = served[0]
    step_together, passes = stream_module.step_together, []

    def counted_step_together(steps):
        passes.append(len(steps))
        return step_together(steps)

    monkeypatch.setattr(stream_module, "step_together", counted_step_together)
    config = httpx.get(f"{url}config").json()
    forward = next(fn["id"] for fn in config["dependencies"]
                   if fn.get("api_name") == "play_forward")
    joined = httpx.post(f"{url}gradio_api/queue/join", json={
        "data": [None, app.MAX_REPEAT, 0, 0], "fn_index": forward,
        "session_hash": "never-read", "event_data": None, "trigger_id": None})
    assert joined.status_code == 200
    made = -1
    deadline = time.monotonic() + 30
    while made != len(passes) and time.monotonic() < deadline:  # until no frame comes
        made = len(passes)
        time.sleep(1.0)
    assert 0 < made <= app.MAX_UNREAD_MESSAGES + 1


def test_gradios_queue_looks_for_events_at_the_apps_pace(served_blocks):
    """Gradio's queue, free, sleeps ``sleep_when_free`` between looks (1 ms of its own): the
    served queue's is ``QUEUE_POLL_SECONDS``, and Gradio's loop still reads that attribute."""
    import inspect

    queue = served_blocks[2]._queue
    assert queue.sleep_when_free == app.QUEUE_POLL_SECONDS
    assert "asyncio.sleep(self.sleep_when_free)" in inspect.getsource(type(queue).start_processing)


@pytest.fixture(scope="module")
def key_sockets(served_blocks):
    """(the served demo's key socket ws:// url, its Demo, its resources)."""
    url, resources, blocks = served_blocks
    return (url.replace("http", "ws", 1).rstrip("/") + app.KEYS_SOCKET_PATH,
            blocks.key_socket.__self__, resources)


def bound_token(demo, session, seat=None, address="127.0.0.1"):
    """(a token bound to a new Play view and ``seat`` of ``session``, the seat)."""
    with app.gr.Blocks():
        view = app.PlayView.build("t", ["Play"], demo.close_seat, height=100,
                                  frame_size=(WIDTH, HEIGHT))
    seat = seat or app.Seat()
    token = os.urandom(16).hex()
    demo.bind_socket(token, view, seat, 1,
                     SimpleNamespace(session_hash=session, client=Address(address, 1)))
    return token, seat


def key(control, down, number):
    return json.dumps({"control": control, "down": down, "number": number})


def socket_messages(socket, until):
    """The socket's messages up to the first for which ``until(message)`` holds."""
    messages = []
    while not messages or not until(messages[-1]):
        messages.append(json.loads(socket.recv(timeout=60)))
    return messages


def test_a_key_socket_plays_the_frames_its_keys_ask_for(key_sockets):
    """The page's keys and frames without a Gradio event: a key down plays (the frame the
    play makes offline for that key), its key up stops, and the last message leaves the
    queue empty with the status."""
    from websockets.sync.client import connect

    url, demo, resources = key_sockets
    token, seat = bound_token(demo, "plays")
    with connect(f"{url}?token={token}") as socket:
        socket.send(key("forward", True, 1))
        first = json.loads(socket.recv(timeout=60))
        socket.send(key("forward", False, 2))
        rest = socket_messages(socket, lambda message: message.get("queue")
                               == "Held: none · Queued: none" and "status" in message)
    played = seat.play.frames_played
    assert played >= 1 and f"{played} frames played" in rest[-1]["status"]
    start = resources.default_start(resources.scene)
    [expected] = expected_frames(resources, start, make_action(["forward"]), 1)
    assert np.array_equal(frame_of(first["screen"]), expected)
    assert not seat.controls.driving and not seat.controls.held


def test_a_held_keys_frames_are_scored_off_the_models_thread(key_sockets, monkeypatch):
    """Each frame's scores are computed while the next is made (PlaySession.beside_frame), not
    MAX_UNSCORED at once on the model's thread, where they would hold up a frame."""
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    # A frame's scores wait at most for the next frame's making: never 3 unscored at once.
    monkeypatch.setattr(play_module, "MAX_UNSCORED", 3)
    scoring_threads, score_pending = [], PlaySession.score_pending

    def noting(self, through=None):
        scoring_threads.append(threading.current_thread().name)
        return score_pending(self, through)

    monkeypatch.setattr(PlaySession, "score_pending", noting)
    token, seat = bound_token(demo, "scored")
    with connect(f"{url}?token={token}") as socket:
        socket.send(key("forward", True, 1))
        socket_messages(socket, lambda message: "frame 6" in json.dumps(message.get("screen")))
        socket.send(key("forward", False, 2))
        socket_messages(socket, lambda message: message.get("queue")
                        == "Held: none · Queued: none" and "status" in message)
    played = seat.play.frames_played
    assert scoring_threads and "model" not in scoring_threads
    scored = {row["frame"] for row in seat.play.quality if row["series"] == "vs truth"}
    assert scored >= set(range(1, played))  # all but the newest, scored while the next was made


def test_a_key_socket_opens_only_with_a_bound_token_and_closes_with_its_session(key_sockets):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    for token in ("0" * 32, "", "not-a-token"):
        with pytest.raises(InvalidStatus, match="403"):
            connect(f"{url}?token={token}")
    token, seat = bound_token(demo, "first")
    view = demo.sockets[token].view
    for bound, session in ((token, "second"),  # another session's token: not taken over
                           ("A" * 32, "first")):  # not 32 lower-case hex digits
        demo.bind_socket(bound, view, app.Seat(), 1, SimpleNamespace(
            session_hash=session, client=Address("127.0.0.1", 1)))
    assert demo.sockets[token].caller.session_hash == "first"
    assert demo.sockets[token].seat() is seat and "A" * 32 not in demo.sockets
    demo.free_session("first")
    with pytest.raises(InvalidStatus, match="403"):
        connect(f"{url}?token={token}")


def test_a_key_socket_message_that_is_not_a_key_event_closes_it(key_sockets):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    for message, code in (("[1, 2]", app.POLICY_VIOLATION), ("{", app.POLICY_VIOLATION),
                          (b"binary", app.POLICY_VIOLATION),
                          (key("forward", True, 1) + " " * app.MAX_SOCKET_MESSAGE, 1009)):
        token, seat = bound_token(demo, "bad-messages")
        with connect(f"{url}?token={token}") as socket:
            socket.send(message)
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=30)
        assert closed.value.rcvd.code == code
        assert seat.play is None  # nothing was played


def test_more_key_events_at_once_than_the_bound_close_the_socket(key_sockets, monkeypatch):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    monkeypatch.setattr(app, "MAX_EVENTS_PER_CLIENT", 1)
    token, seat = bound_token(demo, "floods")
    with connect(f"{url}?token={token}") as socket:
        socket.send(key("forward", True, 1))  # answered until released: one at once
        socket_messages(socket, lambda message: "screen" in message)
        socket.send(key("back", True, 2))
        with pytest.raises(ConnectionClosed) as closed:
            socket_messages(socket, lambda message: False)
    assert closed.value.rcvd.code == app.POLICY_VIOLATION
    demo.scheduler.call(lambda: None)
    assert not seat.controls.held and not seat.controls.driving


def test_a_key_socket_that_closes_stops_its_held_key(key_sockets):
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    token, seat = bound_token(demo, "goes-away")
    with connect(f"{url}?token={token}") as socket:
        socket.send(key("forward", True, 1))
        socket_messages(socket, lambda message: "screen" in message)
        assert seat.controls.held == ["forward"]
    deadline = time.monotonic() + 30
    while seat.controls.driving and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not seat.controls.driving and not seat.controls.held
    demo.scheduler.call(lambda: None)  # the frame asked for before the socket went, made
    played = seat.play.frames_played
    time.sleep(0.5)
    assert seat.play.frames_played == played


def test_a_key_socket_whose_page_takes_no_frame_stops_its_play(key_sockets, monkeypatch):
    """A frame the page does not take within ``UNREAD_WAIT_SECONDS`` (a stalled tab, its
    connection's buffers full) stops the play, so the model stops making frames nobody sees
    and the seat takes keys again. The send is made to hang after the first frame."""
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    monkeypatch.setattr(app, "UNREAD_WAIT_SECONDS", 0.3)
    sent, send_text = [], app.WebSocket.send_text

    async def hangs_after_the_first(self, text):
        if sent:
            await asyncio.Event().wait()  # never set: the page takes nothing more
        sent.append(text)
        await send_text(self, text)

    monkeypatch.setattr(app.WebSocket, "send_text", hangs_after_the_first)
    token, seat = bound_token(demo, "stalls")
    with connect(f"{url}?token={token}") as socket:
        socket.send(key("forward", True, 1))
        socket_messages(socket, lambda message: "screen" in message)
        deadline = time.monotonic() + 30
        while seat.controls.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not seat.controls.held  # the key is still down on the page: the bound let go
        demo.scheduler.call(lambda: None)  # a frame asked for before the stop, made
        played = seat.play.frames_played
        time.sleep(0.5)
        assert seat.play.frames_played == played


def test_a_client_has_at_most_its_bound_of_key_sockets(key_sockets, monkeypatch):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url, demo, _resources = key_sockets
    monkeypatch.setattr(app, "MAX_SOCKETS_PER_CLIENT", 2)
    seat = app.Seat()
    tokens = [bound_token(demo, f"tab-{i}", seat)[0] for i in range(3)]
    with connect(f"{url}?token={tokens[0]}"):
        with connect(f"{url}?token={tokens[1]}"), pytest.raises(InvalidStatus, match="403"):
            connect(f"{url}?token={tokens[2]}")
        deadline = time.monotonic() + 10
        while demo.socket_clients.get("127.0.0.1", 0) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(f"{url}?token={tokens[2]}"):  # one closed: another may open
            pass


def test_uploads_stop_when_gradios_files_are_full(served, tmp_path, monkeypatch):
    scene = tmp_path / "scene.jsonl"
    scene.write_text("{}\n" * 1000)
    monkeypatch.setattr(app, "MAX_STORED_MB", 0)
    with scene.open("rb") as file:
        response = httpx.post(f"{served[0]}gradio_api/upload", files={"files": file})
    assert response.status_code == 507 and "Uploads are full" in response.text


def test_only_the_pages_own_file_types_are_served_back(served, tmp_path):
    stored = {}
    for name in ("page.html", "image.svg", "scene.jsonl"):
        (tmp_path / name).write_text("<script>alert(1)</script>")
        with (tmp_path / name).open("rb") as file:
            [stored[name]] = httpx.post(f"{served[0]}gradio_api/upload",
                                        files={"files": file}).json()
    served_back = {name: httpx.get(f"{served[0]}gradio_api/file={path}").status_code
                   for name, path in stored.items()}
    assert served_back == {"page.html": 403, "image.svg": 403, "scene.jsonl": 200}


def test_limits_and_bad_values_leave_the_session_usable(served, tmp_path):
    client = Client(served[0], verbose=False)
    client.predict(1, api_name="/reset")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scene")
    with pytest.raises(AppError, match="Invalid file type"):
        client.predict([handle_file(notes)], api_name="/load_scene")
    mp4_only = record_scene(tmp_path)
    with pytest.raises(AppError, match="Scene not loaded: upload an .mp4 and its .jsonl"):
        client.predict([handle_file(mp4_only)], api_name="/load_scene")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    broken.with_suffix(".jsonl").write_text("{}\n")
    with pytest.raises(AppError, match="Scene not loaded: .*not a video|Scene not loaded: .*"
                                       "decode"):
        client.predict([handle_file(broken), handle_file(broken.with_suffix(".jsonl"))],
                       api_name="/load_scene")
    with pytest.raises(AppError, match=f"greater than maximum value {app.MAX_REPEAT}"):
        client.predict(app.MAX_REPEAT + 1, 0, 0, api_name="/play_forward")
    status = client.predict(1, 10**30, api_name="/reset")[0]
    assert status.startswith("Not started: seed must be a whole number")
    status = client.predict(*picker_values("streaming", start_size=2, recent_size=10**9),
                            api_name="/apply_strategy")[0]
    assert status.startswith("Strategy not changed:") and "budget" in status
    status = client.predict(2, 0, 0, api_name="/play_forward")[0]
    assert "2 frames played" in status  # after every refusal, play goes on
    client.close()


@pytest.mark.parametrize("endpoint, args, message", [
    ("/play_forward", ("abc", 0, 0), "Repeat a button n times (1-32) must be a number, got 'abc'"),
    ("/play_forward", ([1], 0, 0), "must be a number, got [1]"),
    ("/play_look", (1, None, 0), "Look: pitch (°, + looks down) must be a number, got None"),
    ("/reset", ("abc",), "Start frame (play restarts after it) must be a number, got 'abc'"),
    ("/reset", (1, [1]), "Seed (sampling; Enter restarts) must be a number, got [1]"),
    ("/apply_strategy", picker_values("h2o", normalize="yes"),
     "normalize must be true or false, got 'yes'"),
    ("/apply_strategy", picker_values("h2o", hh_ratio="abc"), "hh_ratio must be a number"),
    ("/apply_strategy", ["nope", *picker_values("h2o")[1:]], "not in the list of choices"),
    ("/play_forward", (app.MAX_REPEAT + 1, 0, 0), "greater than maximum value"),
], ids=["string", "list", "none", "start", "seed", "checkbox", "parameter", "choice", "range"])
def test_a_wrongly_typed_value_is_refused_in_one_line(served, capfd, endpoint, args, message):
    """Through the API, past the page's widgets: a clear message, one log line, no traceback."""
    client = Client(served[0], verbose=False)
    capfd.readouterr()
    with pytest.raises(AppError) as refused:
        client.predict(*args, api_name=endpoint)
    assert message in str(refused.value)
    log = capfd.readouterr().err.splitlines()
    assert [line for line in log if "refused" in line] == [f"app.py: refused: {refused.value}"]
    assert not any("Traceback" in line for line in log)
    assert "frames played" in client.predict(1, 0, 0, api_name="/play_jump")[0]
    client.close()


def test_wrong_types_are_refused_after_an_upload_changed_an_input(served, tmp_path, capfd):
    """An upload changes the start slider's maximum: Gradio gives the session its own copy of
    the slider, which is checked all the same."""
    client = Client(served[0], verbose=False)
    mp4 = record_scene(tmp_path, name="changes")
    client.predict([handle_file(mp4), handle_file(mp4.with_suffix(".jsonl"))],
                   api_name="/load_scene")
    capfd.readouterr()
    with pytest.raises(AppError, match="Start frame .* must be a number, got 'x'"):
        client.predict("x", api_name="/reset")
    assert "Traceback" not in capfd.readouterr().err
    client.close()


def test_a_refused_scene_names_the_users_files_and_is_deleted(served, tmp_path, capfd):
    client = Client(served[0], verbose=False)
    mp4 = record_scene(tmp_path, name="my clip")
    mp4.with_suffix(".jsonl").write_text("{'forward': 1\n")
    capfd.readouterr()
    with pytest.raises(AppError) as refused:
        client.predict([handle_file(mp4), handle_file(mp4.with_suffix(".jsonl"))],
                       api_name="/load_scene")
    assert str(refused.value) == ("Scene not loaded: my clip.jsonl, line 1: neither JSON nor a "
                                  "Python literal: unexpected end of line at column 14; only "
                                  "literals and array(...) are allowed")
    assert "Traceback" not in capfd.readouterr().err
    uploads = app.Path(os.environ["GRADIO_TEMP_DIR"])
    assert not [path for path in uploads.rglob("my clip*")], "the upload was kept"
    client.close()


def live_plays() -> set[int]:
    """Ids of the PlaySessions in this process that are not closed."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch objects warns
        warnings.simplefilter("ignore")
        # One being made on the model's thread meanwhile may not have its sides yet.
        return {id(o) for o in gc.get_objects()
                if isinstance(o, PlaySession) and hasattr(o, "sides") and not o.closed}


def test_eight_clients_stepping_at_once_see_only_their_own_frames(served):
    """8 sessions, each with its own seed, start frame, control and number of steps, all
    stepping at once: each sees its own count and exactly its own frames."""
    url, resources = served
    controls = ["forward", "back", "left", "right", "jump", "look_left", "look_right", "sneak"]
    actions = {"look_left": make_action((), 0, -15.0), "look_right": make_action((), 0, 15.0)}
    runs = {seed: (1 + seed % 8, controls[seed], 2 + seed % 3) for seed in range(8)}

    # Connected one by one: each connection fetches the API description, which is slow on a
    # busy CPU; then all of them step at once, each from its own address (one address has at
    # most MAX_EVENTS_PER_CLIENT events in the queue).
    clients = {seed: visitor(url, f"10.0.3.{seed}") for seed in runs}

    def run(seed):
        start, control, steps = runs[seed]
        client = clients[seed]
        client.predict(start, seed, api_name="/reset")
        frames = []
        for step in range(1, steps + 1):
            outputs = client.predict(1, 0, 0, api_name=f"/play_{control}")
            assert f"from frame {start} · {step} frames played" in outputs[0]
            frames.append(frame_of(outputs[1]))
        return frames

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            seen = dict(zip(runs, pool.map(run, runs), strict=True))
    finally:
        for client in clients.values():
            client.close()
    print(f"8 clients, {sum(r[2] for r in runs.values())} steps in "
          f"{time.perf_counter() - started:.1f} s")
    for seed, (start, control, steps) in runs.items():
        action = actions.get(control) or make_action([control])
        options = dataclasses.replace(resources.options, seed=seed)
        play = PlaySession(resources.model, resources.tokenizer, resources.scene, start,
                           [(resources.strategy, resources.params)], options)
        for step in range(steps):
            play.step(action)
            assert np.array_equal(seen[seed][step], play.sides[0].frames[-1]), (seed, step)
        play.close()
    finals = [frames[-1].tobytes() for frames in seen.values()]
    assert len(set(finals)) > 1


def test_closed_sessions_are_freed(served):
    """Open/close cycles: every play a closed client made is closed by the unload handler,
    and process memory comes back (within 10 %)."""
    url = served[0]
    before = live_plays()

    def cycle():
        client = Client(url, verbose=False)
        client.predict(1, api_name="/reset")
        client.predict(1, 0, 0, api_name="/play_jump")
        client.close()

    for _ in range(3):  # warm-up: imports, caches, allocator pools
        cycle()
    deadline = time.monotonic() + 60
    while live_plays() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    start_rss = process_memory_mb()
    for _ in range(CYCLES):
        cycle()
    while live_plays() - before and time.monotonic() < deadline + 60:
        time.sleep(0.5)
    end_rss = process_memory_mb()
    print(f"{CYCLES} open/close cycles: RSS {start_rss:.1f} -> {end_rss:.1f} MB")
    assert not live_plays() - before, "a closed client's play was not freed"
    assert end_rss < 1.10 * start_rss


# -- command line ----------------------------------------------------------------------------


def run_main(capsys, *args):
    """(exit status, stderr lines) of ``app.py args`` for arguments that fail before serving."""
    try:
        status = app.main(list(args))
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    return status, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("args, message", [
    (["--cache-strategy", "streaming", "--hh-ratio", "0.5"],
     "--hh-ratio is not a parameter of strategy 'streaming'"),
    (["--model_ckpt", "nowhere.ckpt"], "--model_ckpt and --config go together"),
    (["--port", "http"], "argument --port: invalid int value: 'http'"),
    (["--guidance", "15"], "argument --guidance: must be a number in [0, 10], got 15"),
    (["--overuse_penalty", "-1"], "--overuse_penalty: must be a number in [0, 10], got -1"),
    (["--repeat_penalty", "0.5"], "--repeat_penalty: must be a number in [1, 1000000], got 0.5"),
    (["--temperature", "-0.7"], "argument --temperature: must be a number in [0, 100], got -0.7"),
    (["--top_k", "0"], "argument --top_k: must be a whole number >= 1, got 0"),
    (["--window_size", "0"], "argument --window_size: must be a whole number >= 1, got 0"),
    (["--seed", "-5"], "--seed: must be a whole number in [0, 9223372036854775807], got -5"),
], ids=["flag-the-strategy-does-not-take", "half-a-model", "bad-port", "guidance-past-10",
        "overuse-below-0", "repeat-penalty-below-1", "temperature-below-0", "top-k-0",
        "window-0", "negative-seed"])
def test_bad_flags_exit_2_with_one_line(capsys, args, message):
    status, lines = run_main(capsys, *args)
    assert status == 2
    [line] = lines
    assert line.startswith("app.py: error:") and message in line


@pytest.mark.parametrize("text, words", [
    ("model: [unclosed\n", ["cannot read config"]),
    ("- a list\n", ["the document must be a mapping, got list"]),
    (preset_path("300M_16f").read_text().replace("hidden_size: 1024", "hidden_size: -1024"),
     ["hidden_size must be in [2, 65536]", "-1024"]),
], ids=["not-yaml", "not-a-mapping", "negative-size"])
def test_a_bad_config_exits_2_with_one_line_naming_it(capsys, tmp_path, text, words):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    status, lines = run_main(capsys, "--config", str(config), "--model_ckpt", "m.ckpt")
    assert status == 2
    [line] = lines
    assert line.startswith(f"app.py: error: {config}:")
    for word in words:
        assert word in line


@pytest.mark.parametrize("strategy", ["frames", "tests.stand_ins:StartRecentKVCache"])
def test_a_strategy_with_no_flags_starts_on_the_embedded_model(strategy):
    """The frame window's own defaults would fill the embedded model's 8-frame context; a
    class of the (K, V) protocol is named by its path."""
    resources = app.load_resources(app.parse_args(["--cache-strategy", strategy]))
    assert resources.strategy == strategy and resources.params == {}
    assert resources.strategy_choices[-1] == strategy and resources.any_class_path
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, 3,
                       [(strategy, {})], resources.options)
    play.step(make_action(["forward"]))
    assert play.describe_sides().startswith(strategy)
    play.close()


def test_a_target_rate_sets_the_demos_budget_and_schedule(capsys):
    resources = app.load_resources(app.parse_args(
        ["--cache-strategy", "streaming", "--no-diagd", "--target-fps", "0.01"]))
    assert resources.params == {"start_size": 4, "recent_size": 745}  # the context's room
    assert resources.options.schedule == "naive"  # met as asked
    assert "--target-fps 0.01: naive decoding, start_size=4 recent_size=745" in (
        capsys.readouterr().out)


def test_no_flags_load_the_embedded_model_and_scene():
    resources = app.load_resources(app.parse_args([]))
    assert resources.model.config.codebook_size == resources.tokenizer.codebook_size
    assert len(resources.scene.frames) == len(resources.scene.actions)
    # Real-time play by default: diagonal decoding with the model's own window.
    assert (resources.options.schedule, resources.options.window) == ("diagonal", 1)
    assert app.parse_args(["--no-diagd"]).schedule == "naive"
    assert app.parse_args(["--schedule", "published-diagonal"]).schedule == "published-diagonal"
    # A bounded cache, with no re-prefill stall; Compare sets MineWorld's full context beside it.
    assert (resources.strategy, resources.params) == ("frames", {})
    assert resources.comparison() == ("none", {})
    # ... and the model's own decoding (greedy, overuse penalty 1), unless the flags name another.
    assert resources.options.sampling == Sampling.model_default(resources.model.config)
    assert resources.options.sampling == Sampling(overuse_penalty=1.0)
    plain = app.load_resources(app.parse_args(["--overuse_penalty", "0"]))
    assert plain.options.sampling == Sampling()
    top_k = app.load_resources(app.parse_args(["--top_k", "5"]))
    assert top_k.options.sampling.top_k == 5 and top_k.options.sampling.temperature > 0


def test_the_scene_panel_says_how_frames_are_decoded():
    played = Options(schedule="diagonal", sampling=Sampling(overuse_penalty=1.0))
    assert app.describe_decoding(played, model_window=1).startswith(
        "Decoding: diagonal, window 1; greedy, overuse penalty 1 (app.py's `--schedule`")
    sampled = Options(schedule="naive", window=2, sampling=Sampling(1.0, top_k=20), seed=3)
    assert app.describe_decoding(sampled, model_window=1).startswith(
        "Decoding: naive; temperature 1, top-k 20 (")


@pytest.mark.parametrize("sampling, shown", [(Sampling(), False),
                                             (Sampling(1.0, top_k=20), True)])
def test_the_seed_field_shows_only_when_decoding_draws(scene_mp4, sampling, shown):
    resources = tiny_resources(scene_mp4)
    options = dataclasses.replace(resources.options, sampling=sampling)
    blocks = app.build_demo(dataclasses.replace(resources, options=options))
    seed, = (block for block in blocks.blocks.values() if block.elem_id == "seed")
    assert seed.visible is shown


def test_importing_app_builds_no_demo():
    assert app._default_demo.cache_info().currsize == 0
