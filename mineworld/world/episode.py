"""Episodes: play actions in a world, get frames, record them as VPT-style mp4 + jsonl, replay.

Frame alignment (VPT's, and mineworld.actions.read_actions' default "same"): actions[i] is the
action taken after seeing frames[i], so frames[i + 1] shows its effect. An episode of T actions
has T frames: frames[0] is the start view, and the last action's effect is not in the video.

record_episode(seed, actions, "dir/name") writes three files:
  dir/name.mp4    H.264 yuv420p at FPS frames per second, nearly lossless (crf 10);
  dir/name.jsonl  one VPT contractor line per frame: {"keyboard": {"keys": [...]},
                  "mouse": {"dx": ..., "dy": ..., "buttons": [...]}}, dx/dy in mouse units where
                  one unit is 360/2400 of a degree;
  dir/name.json   what the jsonl cannot say: world seed, start state of the player, frame size,
                  supersampling, fps. replay_recording("dir/name") re-renders the frames from
                  the jsonl and this sidecar; they equal the recorded ones (before compression).
"""

import itertools
import json
from pathlib import Path

import av
import numpy as np

from mineworld.world.player import FPS, Player
from mineworld.world.render import SUPERSAMPLE, render
from mineworld.world.terrain import generate_world

DEGREES_PER_MOUSE_UNIT = 360 / 2400
# MineRL action keys that are keyboard keys, and their VPT key names. attack, use and pickItem
# are mouse buttons 0, 1 and 2 instead.
KEY_NAMES = {
    "forward": "key.keyboard.w",
    "back": "key.keyboard.s",
    "left": "key.keyboard.a",
    "right": "key.keyboard.d",
    "jump": "key.keyboard.space",
    "sneak": "key.keyboard.left.shift",
    "sprint": "key.keyboard.left.control",
    "drop": "key.keyboard.q",
    "swapHands": "key.keyboard.f",
    "inventory": "key.keyboard.e",
    "ESC": "key.keyboard.escape",
    **{f"hotbar.{n}": f"key.keyboard.{n}" for n in range(1, 10)},
}
MOUSE_BUTTONS = {"attack": 0, "use": 1, "pickItem": 2}


class Game:
    """One world, one player, one camera: step(action) returns the next frame."""

    def __init__(
        self,
        seed: int,
        size: tuple[int, int] = (64, 48),
        supersample: int = SUPERSAMPLE,
        start: dict | None = None,
    ):
        self.seed = seed
        self.size = size
        self.supersample = supersample
        self.world = generate_world(seed)
        self.player = Player.from_state(seed, start) if start else Player.spawn(self.world)

    def frame(self) -> np.ndarray:
        """What the player sees now, uint8 [height, width, 3]."""
        p = self.player
        return render(self.world, p.eye, p.yaw, p.pitch, self.size, self.supersample)

    def step(self, action: dict) -> np.ndarray:
        """Take the action and return the frame it leads to."""
        self.player.step(action)
        return self.frame()


def replay(
    seed: int,
    actions: list[dict],
    size: tuple[int, int] = (64, 48),
    supersample: int = SUPERSAMPLE,
    start: dict | None = None,
) -> np.ndarray:
    """The true frames for an action sequence, uint8 [T, height, width, 3]; no files written.

    frames[i] is what the player sees when it takes actions[i] (see the module doc).
    Deterministic: the same seed, start and actions give the same frames, bit for bit.
    """
    game = Game(seed, size, supersample, start)
    frames = np.empty((len(actions), size[1], size[0], 3), dtype=np.uint8)
    for i in range(len(actions)):
        frames[i] = game.frame() if i == 0 else game.step(actions[i - 1])
    return frames


def action_to_vpt(action: dict) -> dict:
    """MineRL action dict -> one VPT contractor jsonl record."""
    pitch, yaw = action.get("camera", (0.0, 0.0))
    return {
        "keyboard": {"keys": [name for key, name in KEY_NAMES.items() if action.get(key, 0)]},
        "mouse": {
            "dx": float(yaw) / DEGREES_PER_MOUSE_UNIT,
            "dy": float(pitch) / DEGREES_PER_MOUSE_UNIT,
            "buttons": [button for key, button in MOUSE_BUTTONS.items() if action.get(key, 0)],
        },
    }


def vpt_to_action(record: dict) -> dict:
    """VPT contractor jsonl record -> MineRL action dict (every key present).

    Camera degrees are rounded to 1e-6 so that values like 1.5 survive the trip through mouse
    units exactly, which keeps replays from files bit-exact.
    """
    keys = set(record["keyboard"]["keys"])
    buttons = set(record["mouse"]["buttons"])
    action = {key: int(name in keys) for key, name in KEY_NAMES.items()}
    action.update({key: int(button in buttons) for key, button in MOUSE_BUTTONS.items()})
    pitch = round(record["mouse"]["dy"] * DEGREES_PER_MOUSE_UNIT, 6)
    yaw = round(record["mouse"]["dx"] * DEGREES_PER_MOUSE_UNIT, 6)
    action["camera"] = [pitch, yaw]
    return action


def with_extension(path_stem: str | Path, extension: str) -> Path:
    """path_stem plus an extension; unlike Path.with_suffix it keeps dots in the stem."""
    return Path(f"{path_stem}{extension}")


def write_mp4(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """H.264 yuv420p mp4 at high quality; frame width and height must be even."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def record_episode(
    seed: int,
    actions: list[dict],
    path_stem: str | Path,
    size: tuple[int, int] = (64, 48),
    supersample: int = SUPERSAMPLE,
    start: dict | None = None,
) -> np.ndarray:
    """Play actions and write path_stem.mp4, .jsonl and .json (see module doc); returns frames."""
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {size}")
    Path(path_stem).parent.mkdir(parents=True, exist_ok=True)
    start = start or Player.spawn(generate_world(seed)).state()
    frames = replay(seed, actions, size, supersample, start)
    write_mp4(frames, with_extension(path_stem, ".mp4"))
    with open(with_extension(path_stem, ".jsonl"), "w") as f:
        for action in actions:
            f.write(json.dumps(action_to_vpt(action)) + "\n")
    sidecar = {
        "seed": seed,
        "start": start,
        "size": list(size),
        "supersample": supersample,
        "fps": FPS,
        "num_frames": len(actions),
    }
    with_extension(path_stem, ".json").write_text(json.dumps(sidecar, indent=1))
    return frames


def read_recording(path_stem: str | Path, max_actions: int | None = None,
                   ) -> tuple[dict, list[dict]]:
    """The sidecar metadata and the action dicts of a recorded episode (its first
    ``max_actions`` lines only, when given: the rest of the file is not read)."""
    sidecar = json.loads(with_extension(path_stem, ".json").read_text())
    with open(with_extension(path_stem, ".jsonl")) as f:
        lines = itertools.islice(f, max_actions)
        actions = [vpt_to_action(json.loads(line)) for line in lines if line.strip()]
    return sidecar, actions


def replay_recording(path_stem: str | Path) -> np.ndarray:
    """Re-render a recorded episode's frames from its jsonl and sidecar json."""
    sidecar, actions = read_recording(path_stem)
    size = tuple(sidecar["size"])
    return replay(sidecar["seed"], actions, size, sidecar["supersample"], sidecar["start"])
