"""The true world beside a play: the frame the world renders for the actions played.

``TrueWorld`` replays a recorded scene's world to its start frame and then steps with the
played actions. ``WorldProcess`` keeps true worlds in a process of their own and steps them
there (``RemoteWorld``, the same ``step`` and ``fork``): ray marching is many small numpy calls,
each holding the interpreter lock, so that a world stepped on a thread beside the model slowed
the model's frame by about 40 % (33 -> 47 ms on the 2-core host); in its own process it takes
only its core time.

    python -m mineworld.world.truth      # the process's side: requests on stdin, answers on stdout
"""

from __future__ import annotations

import copy
import itertools
import pickle
import subprocess
import sys
import threading
import weakref
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from mineworld.world.episode import Game


class TrueWorld:
    """The procedural world of a recorded scene, replayed to frame ``start`` and then driven by
    the played actions: the frame the model should have drawn."""

    def __init__(self, world: tuple[dict, list[dict]], start: int, frame_size: tuple[int, int]):
        sidecar, actions = world
        self.game = Game(
            sidecar["seed"], tuple(sidecar["size"]), sidecar.get("supersample", 1),
            sidecar["start"],
        )
        for action in actions[:start]:  # the player's state only: no frame is rendered
            self.game.player.step(action)
        self.frame_size = frame_size

    def fork(self) -> TrueWorld:
        """A copy that steps on from here without moving this one (the world's blocks, which
        no step changes, shared)."""
        return copy.deepcopy(self, {id(self.game.world): self.game.world})

    def step(self, action: dict) -> np.ndarray:
        frame = self.game.step(action)
        if frame.shape[1::-1] != self.frame_size:
            frame = cv2.resize(frame, self.frame_size, interpolation=cv2.INTER_AREA)
        return frame


class WorldProcessEnded(RuntimeError):
    """The process holding a true world ended (killed, out of memory): the world is lost."""


class WorldProcess:
    """True worlds kept and stepped in a child process, one request at a time (any thread may
    ask), started by the first. ``open`` gives a ``RemoteWorld``; a world is dropped there once
    its handle goes. When the process has ended, the request raises ``WorldProcessEnded`` and a
    new process takes the next ones (the worlds that were in the old one are lost)."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self.generation = 0  # processes started before this one: their worlds are lost
        self._lock = threading.Lock()
        self._keys = itertools.count()
        self._dropped: deque[int] = deque()  # handles gone: their worlds go with the next call
        self._closed = False

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mineworld.world.truth"], cwd=Path(__file__).parents[2],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def open(self, world: tuple[dict, list[dict]], start: int,
             frame_size: tuple[int, int]) -> RemoteWorld:
        """A ``TrueWorld(world, start, frame_size)`` in the process (its errors raised here)."""
        return self._handle(self.call("open", next(self._keys), world, start, frame_size))

    def fork(self, world: RemoteWorld) -> RemoteWorld:
        """A copy of ``world`` in the process that steps on without moving it."""
        return self._handle(self.call("fork", world.key, next(self._keys),
                                      generation=world.generation))

    def call(self, *request, generation: int | None = None):
        """Send ``request``, return the answer (or raise the error it raised there); about a
        world of the process ``generation``, when given."""
        with self._lock:
            if self._closed:
                raise WorldProcessEnded("the true world's process was closed")
            if generation not in (None, self.generation):
                raise WorldProcessEnded("the true world's process ended, and this world with it")
            dropped = [self._dropped.popleft() for _ in range(len(self._dropped))]
            if self._process is None:
                self._process = self._start()
            try:
                pickle.dump((dropped, request), self._process.stdin)
                self._process.stdin.flush()
                ok, answer = pickle.load(self._process.stdout)
            except (OSError, ValueError, EOFError):  # a closed pipe, or the process gone
                ended, self._process = self._process, None
                self.generation += 1
                ended.kill()
                raise WorldProcessEnded(f"the true world's process ended (status "
                                        f"{ended.wait()})") from None
        if not ok:
            raise answer
        return answer

    def _handle(self, key: int) -> RemoteWorld:
        world = RemoteWorld(self, key, self.generation)
        weakref.finalize(world, self._dropped.append, key)
        return world

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._process is not None:
                self._process.stdin.close()
                self._process.wait()


class RemoteWorld:
    """A ``TrueWorld`` in a ``WorldProcess``: the same ``step`` and ``fork``."""

    def __init__(self, process: WorldProcess, key: int, generation: int):
        self.process, self.key, self.generation = process, key, generation

    def step(self, action: dict) -> np.ndarray:
        return self.process.call("step", self.key, action, generation=self.generation)

    def fork(self) -> RemoteWorld:
        return self.process.fork(self)


def serve(requests, answers) -> None:
    """The process's side: answer each ``(dropped keys, request)`` until ``requests`` ends."""
    worlds: dict[int, TrueWorld] = {}
    while True:
        try:
            dropped, (verb, key, *args) = pickle.load(requests)
        except EOFError:
            return
        for gone in dropped:
            worlds.pop(gone, None)
        try:
            if verb == "open":
                worlds[key], answer = TrueWorld(*args), key
            elif verb == "fork":
                [answer] = args
                worlds[answer] = worlds[key].fork()
            else:
                answer = worlds[key].step(*args)
            reply = (True, answer)
        except Exception as error:  # the caller's to raise
            reply = (False, error)
        pickle.dump(reply, answers)
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
