"""Real-time play, without any UI: what a player's keys ask for, and who runs the model.

``Controls`` is one play's input: the keys held now and the presses not yet played. A press is
never lost: one that starts and ends within a frame still makes its frame, presses made while a
frame is being drawn wait in a bounded, visible queue, and each frame combines the oldest press
with every key held (W held + a tap of an arrow turns while walking). ``stop()`` empties both at
once. One caller at a time "drives" a play (asks for its frames until nothing is left to play);
every other input only adds to what the driver will play next.

A ``Seat`` is one player's place at the model (a tab of the page): the play it is in now,
replaced when it restarts, and its controls, which outlive a restart. ``Seat.frames`` drives.

``FrameScheduler`` owns the model's time: one thread runs every piece of model work (a frame, a
prefill, a close) in the order asked, except that a client the previous pass served lets
another client's waiting work go first, and makes the frames of every player waiting together,
in the same forward passes, one frame of each client at most. A driver has at most one frame
asked for beyond the one being shown, so nobody's held key blocks another's, and a client with
many plays (sessions are free to invent) gets a frame a pass, as one with a single play does.
When nothing waits, it makes the frames a waiting player's likely next keys would make
(``FrameScheduler.prepare``), given up as soon as other work comes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import NamedTuple

from mineworld.actions import CAMERA_MAX_DEG

MAX_QUEUED = 64  # presses waiting per play; more are refused, and the refusal says so
MAX_TOGETHER = 16  # frames of different players made in the same forward passes
# A waiting player's likely next actions (their newest different ones, then the usual keys) whose
# next frames are made ahead; each keeps a copy of each side's cache until the player's next frame.
PREPARED_ACTIONS = 6
MAX_PREPARED_ACTIONS = 16
PREPARED_CACHE_MB = 64  # the copies one side of a play may keep by default


def prepared_actions_that_fit(cache_bytes: int) -> int:
    """How many actions to make ahead by default for a model whose cache holds ``cache_bytes``
    a side when full: ``PREPARED_ACTIONS``, fewer when their copies would pass
    ``PREPARED_CACHE_MB`` (a published model's cache is hundreds of MB)."""
    return min(PREPARED_ACTIONS, PREPARED_CACHE_MB * 2**20 // max(cache_bytes, 1))


def combine(actions: list[dict]) -> dict:
    """One action doing all of ``actions`` at once: every button pressed in any, and the camera
    moves added (left and right cancel), within the camera's range."""
    combined: dict = {}
    pitch = yaw = 0.0
    for action in actions:
        for name, value in action.items():
            if name == "camera":
                pitch, yaw = pitch + value[0], yaw + value[1]
            elif value:
                combined[name] = value
            else:
                combined.setdefault(name, value)
    combined["camera"] = [_clamp(pitch), _clamp(yaw)]
    return combined


def _clamp(degrees: float) -> float:
    return max(-CAMERA_MAX_DEG, min(CAMERA_MAX_DEG, degrees))


class Controls:
    """Held keys and queued presses of one play; every method is safe from any thread."""

    def __init__(self, max_queued: int = MAX_QUEUED):
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._held: dict[str, dict] = {}  # control -> its action, in the order pressed
        self._newest: dict[str, int] = {}  # control -> number of its newest key event
        self._queued: deque[tuple[str, dict]] = deque()
        self._driving = False

    def press(self, control: str, action: dict, times: int = 1) -> int:
        """Queue ``times`` presses of ``control``; returns how many did not fit (refused)."""
        with self._lock:
            fits = max(0, min(times, self.max_queued - len(self._queued)))
            self._queued.extend([(control, action)] * fits)
            return times - fits

    def hold(self, control: str, action: dict, number: int = 0) -> int:
        """Key down: a press (so that a tap shorter than a frame still plays) and a held key.

        ``number`` orders a key's events as the page sent them: a key down that arrives after
        its own key up (events may overtake each other) is a tap, not a key held forever."""
        refused = self.press(control, action)
        with self._lock:
            if self._newer(control, number):
                self._held[control] = action
        return refused

    def release(self, control: str, number: int = 0) -> None:
        with self._lock:
            if self._newer(control, number):
                self._held.pop(control, None)

    def _newer(self, control: str, number: int) -> bool:
        """Whether ``number`` is the newest event of ``control`` yet (and note it)."""
        if number < self._newest.get(control, 0):
            return False
        self._newest[control] = number
        return True

    def stop(self) -> None:
        """Forget every held key and queued press: no new frame starts after this."""
        with self._lock:
            self._held.clear()
            self._queued.clear()

    def claim(self) -> bool:
        """Become the driver of this play; False when another caller already is."""
        with self._lock:
            if self._driving:
                return False
            self._driving = True
            return True

    def next_action(self) -> dict | None:
        """For the driver: the next frame's action, or None (and the driver's turn ends) when
        nothing is queued or held. One lock for both, so that a press arriving meanwhile is
        either taken here or finds no driver and drives itself."""
        with self._lock:
            if self._queued:
                control, action = self._queued.popleft()
                others = [held for name, held in self._held.items() if name != control]
                return combine([action, *others])
            if self._held:
                return combine(list(self._held.values()))
            self._driving = False
            return None

    def resign(self) -> None:
        """The driver stops early (its play closed); another caller may drive."""
        with self._lock:
            self._driving = False

    @property
    def driving(self) -> bool:
        """Whether a driver is playing frames now."""
        with self._lock:
            return self._driving

    @property
    def queued(self) -> list[str]:
        with self._lock:
            return [control for control, _action in self._queued]

    @property
    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)


class Frame(NamedTuple):
    """A frame just made: its number in the play, each side's image, and the seconds its
    making took when it was made ahead, before it was asked for (0: made when asked)."""

    number: int
    images: list
    ahead_seconds: float = 0.0


class Job(NamedTuple):
    """Model work asked for: ``fn(*args)``, or a frame (``fn`` None, ``args`` the play and its
    action) of ``client``'s (None: a client of its own)."""

    future: Future
    fn: Callable | None
    args: tuple
    client: str | None = None


class FrameScheduler:
    """One thread for all model work, first asked first run but for a client just served
    (see the module docstring).

    Frames asked for while others wait are made together: when the thread takes a frame, it
    takes the oldest frame waiting of every other client too (at most ``max_together``), and
    their forward passes run as one (``mineworld.decoding.run_together``): N players share
    each pass's fixed cost, and get the frames each would get alone. One frame a client, so
    that a pass, and so another client's wait, grows with the clients playing, not with the
    plays one client keeps going."""

    def __init__(self, max_together: int = MAX_TOGETHER, prepare_next: int = PREPARED_ACTIONS):
        self.max_together = max_together
        self.prepare_next = prepare_next
        self._jobs: deque[Job] = deque()
        self._idle_jobs: deque[Job] = deque()  # prepare()'s, run while nothing else waits
        self._last_clients: set[str] = set()  # whose work the previous pass did
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="model", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, client: str | None = None) -> Future:
        """Run ``fn(*args)`` on the model's thread, as ``client``'s work (see ``step``); its
        Future."""
        return self._put(fn, args, client)

    def step(self, play, action: dict, client: str | None = None) -> Future:
        """Step ``play`` with ``action`` on the model's thread, with other clients' frames
        waiting; a Future of the Frame made (None if the play had closed). ``client``: who
        asks (an address; None: a client of its own); frames of the same client are made in
        separate passes, and a client's work waits for another's that is waiting, once."""
        return self._put(None, (play, action), client)

    def prepare(self, play, actions: list[dict]) -> None:
        """While nothing else waits, make the frames ``play`` would make next with the first
        ``prepare_next`` of ``actions`` (``play.prepare``), so that they are ready when asked
        for: the first two alone, the likeliest (a key again, or two keys in turn), then the
        others together (their forward passes as one, in less time than one by one). Given up
        between passes as soon as other work comes, but for the very frames that work asks
        for; replaces the play's earlier asks."""
        def others_wait(action: dict) -> bool:
            with self._ready:
                return self._closed or any(
                    job.fn is not None or job.args[0] is not play or job.args[1] != action
                    for job in self._jobs)

        chosen = actions[: self.prepare_next]
        with self._ready:
            self._idle_jobs = deque(job for job in self._idle_jobs if job.args[0] is not play)
            self._idle_jobs.extend(Job(Future(), _prepare, (play, group, others_wait))
                                   for group in (chosen[:1], chosen[1:2], chosen[2:]) if group)
            self._ready.notify()

    def call(self, fn: Callable, *args, client: str | None = None):
        """Run ``fn(*args)`` on the model's thread and wait for its result (or exception)."""
        return self.submit(fn, *args, client=client).result()

    def shutdown(self) -> None:
        with self._ready:
            self._closed = True
            for job in [*self._jobs, *self._idle_jobs]:
                job.future.cancel()
            self._jobs.clear()
            self._idle_jobs.clear()
            self._ready.notify()

    def _put(self, fn: Callable | None, args: tuple, client: str | None = None) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the frame scheduler has shut down")
            self._jobs.append(Job(future, fn, args, client))
            self._ready.notify()
        return future

    def _next_jobs(self) -> list[Job] | None:
        """The oldest job of a client the previous pass did not serve (else the oldest job),
        with the oldest frame waiting of every other client when it is a frame; with none
        waiting, the oldest idle job; None once shut down."""
        with self._ready:
            while not self._jobs and not self._idle_jobs and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            if not self._jobs:
                return [self._idle_jobs.popleft()]
            first = next((job for job in self._jobs if job.client not in self._last_clients),
                         self._jobs[0])
            self._jobs.remove(first)
            self._last_clients = {first.client} - {None}
            if first.fn is not None:
                return [first]
            frames, clients = [first], {first.client}
            for job in self._jobs:
                if len(frames) == self.max_together:
                    break
                if job.fn is None and (job.client is None or job.client not in clients):
                    frames.append(job)
                    clients.add(job.client)
            for job in frames[1:]:
                self._jobs.remove(job)
            self._last_clients = clients - {None}
            return frames

    def _run(self) -> None:
        while (jobs := self._next_jobs()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            try:
                if len(jobs) == 1 and jobs[0].fn is not None:
                    jobs[0].future.set_result(jobs[0].fn(*jobs[0].args))
                else:
                    frames = step_together([job.args for job in jobs])
                    for job, frame in zip(jobs, frames, strict=True):
                        job.future.set_result(frame)
            except Exception as error:  # the callers' to see, not the thread's end
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)


def _prepare(play, actions: list[dict], stop: Callable[[dict], bool]) -> None:
    play.prepare(actions, stop)


def step_together(steps: list[tuple]) -> list[Frame | None]:
    """Step each ``(play, action)``, their forward passes as one; each Frame made, or None for
    a play that has closed (a restart or a closed tab came first)."""
    from mineworld.decoding import run_together  # torch: app.py reads the limits above first

    open_steps = [(index, play, action) for index, (play, action) in enumerate(steps)
                  if play is not None and not play.closed]
    players = [play.side_steps(action) for _index, play, action in open_steps]
    made = run_together(open_steps[0][1].model, [passes for sides in players
                                                 for passes in sides]) if players else []
    frames: list[Frame | None] = [None] * len(steps)
    for (index, play, action), sides in zip(open_steps, players, strict=True):
        own, made = made[: len(sides)], made[len(sides):]
        images = play.record(action, own)
        ahead_ms = max((stats.get("made_ahead_ms", 0.0) for _image, stats in own), default=0.0)
        frames[index] = Frame(play.frames_played, images, ahead_ms / 1000)
    return frames


class Seat:
    """One player's current play (``mineworld.play.PlaySession`` or None) and controls, and
    who plays it (``client``, an address: the scheduler makes one frame a client a pass)."""

    def __init__(self, usual_actions: Sequence[dict] = ()):
        self.play = None
        self.controls = Controls()
        self.client: str | None = None
        self.shown = None  # what the page's plots show
        self.show_truth = True  # the true world's frame beside the generated one
        # The newest different actions played, the newest last, then ``usual_actions`` (the
        # keys most played): the likely next ones, whose frames are made ahead.
        self.recent_actions: deque[dict] = deque(maxlen=MAX_PREPARED_ACTIONS)
        self.usual_actions = tuple(usual_actions)

    def __deepcopy__(self, memo) -> Seat:
        """A fresh seat: Gradio's State copies its first value for every user."""
        return Seat(self.usual_actions)

    async def frames(self, scheduler: FrameScheduler,
                     ahead: Callable | None = None) -> AsyncIterator[Frame]:
        """Drive the play: step it with each action the controls give, on ``scheduler``, and
        yield each frame, until nothing is held or queued. Yields nothing when another caller
        drives; it plays what was asked.

        The next frame is being made while the caller shows this one (sending a frame to a
        page costs about as much as making it), so frames come at the slower of the two
        rates, not at their sum. A frame made ahead is yielded at once, and the next one is
        asked for as long after as its making took, as if it had been made when asked: a tap
        makes as many frames either way. ``ahead(play, number, action)``, when given, is work
        for frame ``number`` done while the model makes it, off the model's thread (the true
        world's frame, the scores of the frames before), and done before that frame is
        yielded."""
        if not self.controls.claim():
            return
        finished = False
        making = self._next_frame(scheduler, ahead)
        try:
            while making is not None:
                made = await making
                if made is not None and made.ahead_seconds:
                    yield made
                    await asyncio.sleep(made.ahead_seconds)
                    making = self._next_frame(scheduler, ahead)
                    continue
                making = self._next_frame(scheduler, ahead)
                if made is not None:
                    yield made
                elif self.play is None or self.play.closed:
                    self.controls.stop()  # the tab closed: nothing to play on
            finished = True
        finally:
            if not finished:  # its page went (a stream stops only then): play nothing more
                self.controls.stop()
                self.controls.resign()
        self.prepare_next(scheduler)

    def prepare_next(self, scheduler: FrameScheduler) -> None:
        """Ask ``scheduler`` to make ahead the frames of the actions likely played next: the
        newest different ones (the newest first), then the usual ones."""
        if self.play is None or self.play.closed:
            return
        likely = list(reversed(self.recent_actions))
        likely += [action for action in self.usual_actions if action not in likely]
        if likely:
            scheduler.prepare(self.play, likely)

    def _next_frame(self, scheduler: FrameScheduler,
                    ahead: Callable | None = None) -> asyncio.Future | None:
        """The next frame asked of ``scheduler`` (None once made if the play had closed), with
        ``ahead``'s work for it; or None when nothing is held or queued (the driver's turn then
        ends)."""
        action = self.controls.next_action()
        if action is None:
            return None
        if action in self.recent_actions:
            self.recent_actions.remove(action)
        self.recent_actions.append(action)
        frame = asyncio.wrap_future(scheduler.step(self.play, action, self.client))
        if ahead is None:
            return frame
        work = asyncio.ensure_future(
            asyncio.to_thread(ahead, self.play, self.play.frames_played + 1, action))
        return asyncio.ensure_future(_both(frame, work))


async def _both(frame: asyncio.Future, work: asyncio.Future):
    """``frame``'s result, once ``work`` is done too."""
    made = await frame
    await work
    return made

