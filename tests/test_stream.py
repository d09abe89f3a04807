"""mineworld.stream: what held keys and queued presses play, and one driver per seat."""

import asyncio
import threading
import time

import pytest
import torch

from mineworld.actions import make_action
from mineworld.stream import (
    PREPARED_ACTIONS,
    PREPARED_CACHE_MB,
    Controls,
    Frame,
    FrameScheduler,
    Seat,
    combine,
    prepared_actions_that_fit,
)

FORWARD, RIGHT = make_action(["forward"]), make_action((), 0.0, 15.0)


def pressed(action):
    return sorted(name for name, value in action.items() if name != "camera" and value)


def test_combine_presses_every_button_and_adds_the_camera_moves():
    action = combine([FORWARD, RIGHT, make_action(["jump"], 5.0, 80.0)])
    assert pressed(action) == ["forward", "jump"]
    assert action["camera"] == [5.0, 90.0]  # 95 degrees clamped to the camera's range
    assert combine([RIGHT, make_action((), 0.0, -15.0)])["camera"] == [0.0, 0.0]


def test_a_tap_plays_once_and_a_held_key_until_released():
    controls = Controls()
    controls.hold("forward", FORWARD, 1)
    controls.release("forward", 2)  # released before its frame began
    assert controls.claim()
    assert pressed(controls.next_action()) == ["forward"]
    assert controls.next_action() is None  # the tap played once; the driver's turn ended

    controls.hold("forward", FORWARD, 3)
    assert controls.claim()
    assert [pressed(controls.next_action()) for _ in range(3)] == [["forward"]] * 3
    controls.hold("look right", RIGHT, 1)  # W held + an arrow: both in the next frames
    action = controls.next_action()
    assert pressed(action) == ["forward"] and action["camera"] == [0.0, 15.0]
    controls.release("forward", 4)
    controls.release("look right", 2)
    assert controls.next_action() is None


def test_a_key_down_arriving_after_its_key_up_is_a_tap():
    controls = Controls()
    controls.release("forward", 2)
    controls.hold("forward", FORWARD, 1)
    assert controls.held == [] and controls.queued == ["forward"]


def test_presses_queue_in_order_up_to_the_limit_and_stop_empties_everything():
    controls = Controls(max_queued=4)
    assert controls.press("jump", make_action(["jump"]), 3) == 0
    assert controls.press("forward", FORWARD, 3) == 2  # two did not fit, and say so
    assert controls.queued == ["jump", "jump", "jump", "forward"]
    controls.hold("back", make_action(["back"]))
    controls.stop()
    assert controls.queued == [] and controls.held == []
    assert controls.claim() and controls.next_action() is None


def test_one_driver_at_a_time():
    controls = Controls()
    assert not controls.driving
    assert controls.claim() and not controls.claim() and controls.driving
    assert controls.next_action() is None and not controls.driving  # ends the turn
    assert controls.claim()
    controls.resign()
    assert controls.claim()


class CountingPlay:
    """A stand-in play: counts its steps and the threads they ran on."""

    def __init__(self):
        self.actions, self.threads, self.closed = [], set(), False
        self.prepared = []  # the actions asked for ahead, and the threads they ran on
        self.was_prepared = threading.Event()

    model = None  # never called: a play without sides asks for no forward pass

    def prepare(self, actions, stop):
        self.prepared += [(action, threading.current_thread().name) for action in actions]
        self.was_prepared.set()

    def side_steps(self, action):
        return []

    def record(self, action, made):
        self.actions.append(action)
        self.threads.add(threading.current_thread().name)
        return [f"image {len(self.actions)}"]

    @property
    def frames_played(self):
        return len(self.actions)


def seated_play(presses: int) -> tuple[FrameScheduler, Seat]:
    """A scheduler and a seat on a stand-in play, ``presses`` of forward queued."""
    seat = Seat()
    seat.play = CountingPlay()
    seat.controls.press("forward", FORWARD, presses)
    return FrameScheduler(), seat


async def frames_of(seat, scheduler):
    return [frame async for frame in seat.frames(scheduler)]


def test_a_seat_plays_its_queue_on_the_scheduler_thread_and_stops_on_a_closed_play():
    scheduler, seat = seated_play(3)
    assert asyncio.run(frames_of(seat, scheduler)) == [
        Frame(number, [f"image {number}"]) for number in (1, 2, 3)]
    assert len(seat.play.actions) == 3 and len(seat.play.threads) == 1
    assert seat.play.threads != {threading.current_thread().name}
    seat.play.closed = True
    seat.controls.hold("forward", FORWARD)
    assert asyncio.run(frames_of(seat, scheduler)) == []  # nothing to play on: key dropped
    assert seat.controls.held == []
    scheduler.shutdown()


@pytest.mark.parametrize("prepare_next", [3, 0])
def test_once_a_seat_has_played_its_last_keys_are_prepared_again_on_the_model_thread(
        prepare_next):
    scheduler, seat = seated_play(2)
    scheduler.prepare_next = prepare_next
    assert len(asyncio.run(frames_of(seat, scheduler))) == 2
    assert seat.play.was_prepared.wait(5 if prepare_next else 0.2) == bool(prepare_next)
    assert seat.play.prepared == ([(FORWARD, *seat.play.threads)] if prepare_next else [])
    if prepare_next:  # the newest three different actions, the newest first
        jump, back = make_action(["jump"]), make_action(["back"])
        for control, action in [("jump", jump), ("look right", RIGHT), ("jump", jump),
                                ("back", back)]:
            seat.controls.press(control, action)
        seat.play.prepared.clear()
        assert len(asyncio.run(frames_of(seat, scheduler))) == 4
        for _ in range(100):
            if len(seat.play.prepared) == 3:
                break
            time.sleep(0.01)
        assert [action for action, _thread in seat.play.prepared] == [back, jump, RIGHT]
    scheduler.shutdown()


def test_after_its_newest_keys_a_seat_has_the_usual_ones_made_ahead_each_once():
    scheduler, seat = seated_play(1)
    jump, back = make_action(["jump"]), make_action(["back"])
    seat.usual_actions = (jump, FORWARD, back, RIGHT)
    scheduler.prepare_next = 3
    assert len(asyncio.run(frames_of(seat, scheduler))) == 1
    for _ in range(100):
        if len(seat.play.prepared) == 3:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # no fourth
    assert [action for action, _thread in seat.play.prepared] == [FORWARD, jump, back]
    scheduler.shutdown()


@pytest.mark.parametrize("preset, dtype, made_ahead", [
    ("embedded", torch.float32, PREPARED_ACTIONS),  # 2.5 MiB a copy
    ("300M_16f", torch.float16, 0),  # 163 MiB a copy
])
def test_by_default_as_many_actions_are_made_ahead_as_their_cache_copies_allow(
        preset, dtype, made_ahead):
    from mineworld.config import load_config, preset_path
    from mineworld.embedded import MODEL_DIR
    from mineworld.loading import model_kv_bytes_per_token
    from mineworld.model import cache_layout

    path = MODEL_DIR / "config.yaml" if preset == "embedded" else preset_path(preset)
    config = load_config(path)
    full = model_kv_bytes_per_token(config, dtype) * cache_layout(config).context_tokens
    assert prepared_actions_that_fit(full) == made_ahead
    assert prepared_actions_that_fit(PREPARED_CACHE_MB * 2**20 // 4) == min(4, PREPARED_ACTIONS)


class MadeAheadPlay(CountingPlay):
    """A stand-in play whose every frame was made ahead, in 200 ms."""

    def side_steps(self, action):
        def made():
            yield from ()
            return None, {"made_ahead_ms": 200.0}

        return [made()]


def test_a_frame_made_ahead_shows_at_once_and_a_tap_still_makes_one_frame():
    """The held key's next frame is asked for as long after as the frame took: a key let go
    within that time has played once, as when the frame is made on asking."""
    scheduler, seat = FrameScheduler(), Seat()
    seat.play = MadeAheadPlay()
    seat.controls.hold("forward", FORWARD, 1)

    async def tap():
        shown = []
        async for frame in seat.frames(scheduler):
            shown.append(frame)
            asyncio.get_running_loop().call_later(0.05, seat.controls.release, "forward", 2)
        return shown

    assert asyncio.run(tap()) == [Frame(1, ["image 1"], 0.2)]
    scheduler.shutdown()


def test_the_next_frame_is_made_while_a_frame_is_shown_and_work_ahead_runs_off_thread():
    scheduler, seat = seated_play(3)
    worked = []  # (the frame it ran for, frames made when it began, its thread)

    def ahead(play, number, action):
        assert action == FORWARD
        worked.append((number, len(play.actions), threading.current_thread().name))

    async def drive():
        shown = []  # (the frame shown, the frames made after showing it)
        async for frame in seat.frames(scheduler, ahead):
            await asyncio.sleep(0.05)  # showing the frame: the next one is made meanwhile
            shown.append((frame.number, len(seat.play.actions)))
        return shown

    assert asyncio.run(drive()) == [(1, 2), (2, 3), (3, 3)]  # one frame ahead, never more
    assert [number for number, _before, _thread in worked] == [1, 2, 3]
    # each frame's work began once the frame before was made (the model may finish first)
    assert all(number - 1 <= before <= number for number, before, _thread in worked)
    assert not {thread for *_, thread in worked} & (seat.play.threads | {
        threading.current_thread().name})  # neither the model's thread nor the event loop's
    scheduler.shutdown()


def test_a_seat_copied_for_a_new_user_is_fresh():
    import copy

    seat = Seat([RIGHT])
    seat.controls.press("forward", FORWARD)
    other = copy.deepcopy(seat)
    assert other.controls.queued == [] and other.play is None
    assert other.usual_actions == (RIGHT,)  # the page's, not the user's


class OnePassPlay:
    """A stand-in play of one side whose frame takes one forward pass of ``model``."""

    def __init__(self, model, name):
        self.model, self.name, self.closed, self.frames_played = model, name, False, 0

    def side_steps(self, action):
        def passes():
            [logits] = yield [f"{self.name}'s feed"]
            return f"{self.name} after {logits}", {}

        return [passes()]

    def record(self, action, made):
        self.frames_played += 1
        return [frame for frame, _stats in made]


class CountingModel:
    def __init__(self):
        self.calls = []

    def forward_feeds(self, feeds):
        self.calls.append(list(feeds))
        return [f"logits of {feed}" for feed in feeds]


def test_frames_waiting_together_are_made_in_the_same_forward_passes():
    model, gate = CountingModel(), threading.Event()
    scheduler = FrameScheduler()
    busy = scheduler.submit(gate.wait)  # the model's thread is making someone's frame
    plays = [OnePassPlay(model, name) for name in "abc"]
    plays[1].closed = True  # its tab went while its frame waited
    asked = [scheduler.step(play, FORWARD) for play in plays]
    gate.set()
    busy.result()
    frames = [future.result(timeout=5) for future in asked]
    assert model.calls == [["a's feed", "c's feed"]]  # one pass for both open plays
    assert frames[0] == Frame(1, ["a after logits of a's feed"]) and frames[1] is None
    assert frames[2] == Frame(1, ["c after logits of c's feed"])
    scheduler.shutdown()


def test_a_pass_makes_one_frame_of_each_client():
    """A flood's many plays (sessions are free to invent) take one place in each pass: the
    other client's frame is in the first pass, not behind or beside all of them."""
    model, gate = CountingModel(), threading.Event()
    scheduler = FrameScheduler()
    busy = scheduler.submit(gate.wait)
    flood = [scheduler.step(OnePassPlay(model, name), FORWARD, "10.0.0.1") for name in "abc"]
    other = scheduler.step(OnePassPlay(model, "v"), FORWARD, "10.0.0.2")
    gate.set()
    busy.result()
    for future in [*flood, other]:
        future.result(timeout=5)
    assert model.calls == [["a's feed", "v's feed"], ["b's feed"], ["c's feed"]]
    scheduler.shutdown()


def test_work_of_a_client_just_served_waits_once_for_another_clients():
    """A flood's prefills (a play for every session it invents) do not all go before another
    client's work: each waits for one of the other client's jobs."""
    gate, done = threading.Event(), []
    scheduler = FrameScheduler()
    busy = scheduler.submit(gate.wait, client="10.0.0.1")
    jobs = [scheduler.submit(done.append, name, client=client)
            for name, client in [("flood 1", "10.0.0.1"), ("flood 2", "10.0.0.1"),
                                 ("other", "10.0.0.2")]]
    gate.set()
    for job in [busy, *jobs]:
        job.result(timeout=5)
    assert done == ["other", "flood 1", "flood 2"]
    scheduler.shutdown()


class PausedPreparingPlay(OnePassPlay):
    """A stand-in play whose ``prepare`` call number ``paused_call`` waits for ``go`` between
    two passes; notes for each call whether it was told to stop each action there."""

    def __init__(self, model, name, paused_call):
        super().__init__(model, name)
        self.started, self.go, self.stopped = threading.Event(), threading.Event(), []
        self.paused_call = paused_call

    def prepare(self, actions, stop):
        if len(self.stopped) == self.paused_call:
            self.started.set()
            self.go.wait(5)
        self.stopped.append([stop(action) for action in actions])


@pytest.mark.parametrize("other_work", ["this frame", "a frame of another play", "a job"])
@pytest.mark.parametrize("ahead, paused_call", [
    ([FORWARD], 0),
    # RIGHT alone, back alone, then the others together
    ([RIGHT, make_action(["back"]), FORWARD, make_action(["jump"])], 2),
])
def test_a_frame_prepared_while_idle_gives_way_to_other_work_but_not_to_its_own_frame(
        other_work, ahead, paused_call):
    model, scheduler = CountingModel(), FrameScheduler()
    play = PausedPreparingPlay(model, "p", paused_call)
    scheduler.prepare(play, ahead)
    assert play.started.wait(5)
    if other_work == "this frame":
        asked = scheduler.step(play, FORWARD)
    elif other_work == "a frame of another play":
        asked = scheduler.step(OnePassPlay(model, "q"), FORWARD)
    else:
        asked = scheduler.submit(lambda: None)
    play.go.set()
    asked.result(timeout=5)
    # FORWARD's frames go on when that very frame is asked for; every other action's stop
    assert play.stopped[paused_call] == [
        action != FORWARD or other_work != "this frame" for action in ahead[paused_call:]]
    assert play.stopped[:paused_call] == [[False]] * paused_call  # alone, before the work came
    scheduler.shutdown()


def test_an_ask_ahead_waits_for_every_other_job_and_replaces_the_plays_earlier_one():
    gate, done = threading.Event(), []
    scheduler = FrameScheduler()
    scheduler.submit(gate.wait)  # the model is busy while the asks come
    play = CountingPlay()
    scheduler.prepare(play, [FORWARD, RIGHT])
    scheduler.prepare(play, [RIGHT])  # the newest keys are the likely next ones
    jobs = [scheduler.submit(done.append, name) for name in ("a", "b")]
    gate.set()
    assert play.was_prepared.wait(5)
    assert [job.done() for job in jobs] == [True, True] and done == ["a", "b"]
    assert [action for action, _thread in play.prepared] == [RIGHT]
    scheduler.shutdown()


def test_a_driver_whose_stream_is_dropped_plays_nothing_more_and_lets_go():
    scheduler, seat = seated_play(5)

    async def drop_after_first_frame():
        frames = seat.frames(scheduler)
        await anext(frames)
        await frames.aclose()  # what an abandoned async generator gets

    asyncio.run(drop_after_first_frame())
    assert seat.controls.queued == [] and not seat.controls.driving
    assert len(seat.play.actions) <= 2  # the frame shown and at most the one being made
    scheduler.shutdown()
