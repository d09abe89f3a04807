"""app.py served on 127.0.0.1 and driven with gradio_client: a tiny random model on a scene
recorded in the procedural world, so that every check runs in seconds on one CPU thread.

Also the play logic under it (mineworld.play) and the command line's exit status. The helpers
here (PatchTokenizer, tiny_model, record_scene) serve test_browser.py too."""

import dataclasses
import socket
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from mineworld.actions import make_action
from mineworld.decoding import Sampling
from mineworld.play import Options, PlaySession, read_scene
from mineworld.video import read_video
from mineworld.world import record_episode
from tests.stand_ins import (
    HEIGHT,
    WIDTH,
    PatchTokenizer,
    tiny_model,
)

SCENE_FRAMES = 10
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


@pytest.fixture(scope="module")
def scene_mp4(tmp_path_factory):
    return record_scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def served(scene_mp4, tmp_path_factory):
    """(url, resources) of the demo launched on 127.0.0.1 in this process."""
    resources = tiny_resources(scene_mp4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        blocks = app.build_demo(resources)
        url = app.launch(blocks, "127.0.0.1", free_port(), block=False)
        yield url, resources
        blocks.close()


def frame_of(path):
    """The model frame inside a displayed image: undo the nearest-neighbour upscale."""
    image = np.asarray(Image.open(path).convert("RGB"))
    scale = image.shape[1] // WIDTH
    return image[scale // 2 :: scale, scale // 2 :: scale][:HEIGHT, :WIDTH]


def expected_frames(resources, start, action, steps, seed=0):
    options = dataclasses.replace(resources.options, seed=seed)
    play = PlaySession(resources.model, resources.tokenizer, resources.scene, start,
                       [(resources.strategy, resources.params)], options)
    for _ in range(steps):
        play.step(action)
    return [side.frames[-1] for side in play.sides]


def picker_values(strategy, **params):
    """A strategy picker's API arguments: the strategy, then every parameter input (the API
    names them param_N, so they go by position)."""
    inputs = {p: v for taken in app.strategy_parameters().values() for p, v in taken.items()}
    return [strategy, *{**inputs, **params}.values()]


# -- play logic ------------------------------------------------------------------------------


def test_play_session_compares_two_strategies_against_the_true_world(scene_mp4):
    resources = tiny_resources(scene_mp4)
    play = PlaySession(
        resources.model, resources.tokenizer, resources.scene, 3,
        [("none", {}), ("streaming", {"start_size": 2, "recent_size": 20})], resources.options,
    )
    for _ in range(6):  # past the 4-frame context: the full cache re-prefills, streaming evicts
        play.step(make_action(["forward"], yaw=5.0))
    full, streaming = play.sides
    assert full.rows[-1]["reprefills"] >= 1
    assert sum(row["evicted this frame"] for row in streaming.rows) > 0
    tables = streaming.plot_tables()
    assert set(tables) == set(app.PLOTS) and len(tables["tokens"]) > 6
    assert set(play.quality_table()["series"]) == {"A vs B", "A vs truth", "B vs truth"}
    video = read_video(play.export())
    assert video.shape == (7, HEIGHT, 2 * WIDTH, 3)  # start frame + 6, the sides side by side
    play.close()
    assert play.closed


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
    with pytest.raises(ValueError, match="hh_ratio"):
        play.switch_strategy(0, "h2o", {"hh_ratio": 2.0})


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
    assert len(steps.outputs()) == 3  # every frame streamed as it was made
    video = read_video(client.predict(api_name="/download"))
    assert video.shape == (4, HEIGHT, WIDTH, 3)  # the start frame and the three played


def test_an_uploaded_scene_is_played(served, tmp_path):
    client = Client(served[0], verbose=False)
    mp4 = record_scene(tmp_path, seed=WORLD_SEED + 1, name="hill")
    client.predict([handle_file(mp4), handle_file(mp4.with_suffix(".jsonl"))],
                   api_name="/load_scene")
    status = client.predict(2, api_name="/reset")[0]
    assert status.startswith("scene hill, start frame 2")
    status = client.predict(1, 0, 0, api_name="/play_jump")[0]
    assert "1 frames played" in status


def test_closing_the_tab_frees_its_plays(served):
    demo = app.Demo(served[1])
    request = SimpleNamespace(session_hash="closed-tab")
    plays = [demo.new_play(None, None, None, strategies, request)
             for strategies in ([("none", {})], [("none", {}), ("none", {})])]
    demo.forget(request)
    assert all(play.closed for play in plays)


def test_a_bad_parameter_returns_the_validation_message(served):
    client = Client(served[0], verbose=False)
    status = client.predict(*picker_values("h2o", hh_ratio=2.0), api_name="/apply_strategy")[0]
    assert status.startswith("Strategy not changed:") and "hh_ratio" in status
    assert "Traceback" not in status


def test_two_clients_stepping_at_once_get_their_own_frames(served):
    url, resources = served
    starts = {1: 1, 2: 6}  # seed: start frame, distinct for each client
    clients = {seed: Client(url, verbose=False) for seed in starts}
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
], ids=["flag-the-strategy-does-not-take", "half-a-model", "bad-port"])
def test_bad_flags_exit_2_with_one_line(capsys, args, message):
    status, lines = run_main(capsys, *args)
    assert status == 2
    [line] = lines
    assert line.startswith("app.py: error:") and message in line


def test_no_flags_load_the_embedded_model_and_scene():
    resources = app.load_resources(app.parse_args([]))
    assert resources.model.config.codebook_size == resources.tokenizer.codebook_size
    assert len(resources.scene.frames) == len(resources.scene.actions)


def test_importing_app_builds_no_demo():
    assert app._default_demo.cache_info().currsize == 0
