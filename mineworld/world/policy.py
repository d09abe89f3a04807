"""A seeded scripted player that makes varied, human-like action sequences for training data.

Play is a string of behaviours, each a few to a few dozen frames long: walk (sometimes
sprinting or sneaking, with small steering jitter), turn (a smooth yaw sweep that eases in and
out), look up or down, glance away and turn back to the same view (a revisit), strafe, step
back, jump in place, stand still, hop along. Every movement key is held for many frames, as a
player holds it, so that each one's effect on the picture is in the data often enough to learn.
Turn directions lean against the left/right imbalance so far, so the data has no turning bias,
and pitch targets stay mostly near the horizon.

The policy is closed-loop: it simulates the player (physics only, no rendering) so it can jump
when walking into a one-block step, turn towards open ground before reaching a wall or water
(frames of a wall filling the view, or of open sea, show little of the world), swim to the
nearest shore when it does end up in water, and keep pitch within [-60, 60].
scripted_actions() returns the actions; replay() then renders them.

Camera deltas come from CAMERA_STEPS (degrees per frame): the centres (to 3 decimals) of the
action codec's four mu-law camera bins nearest zero, so quantising them loses nothing and each
step is its own token; the frames never show a turn the tokens cannot tell apart. Conflicting
keys (forward+back, left+right, jump+sneak, sprint+sneak) are never pressed together, since the
codec would drop both.
"""

from collections import deque

import numpy as np

from mineworld.world.player import Player
from mineworld.world.terrain import SEA_LEVEL, WORLD_SIZE, World, generate_world

CAMERA_STEPS = (2.25, 5.146, 8.874, 13.673)
MAX_PITCH = 60.0
BLOCKED_DISTANCE = 0.02  # horizontal blocks moved in a frame, below which pushing is 'blocked'
SHORE_SEARCH = 24  # blocks around a swimmer searched for land
LOOK_AHEAD = 6.0  # blocks probed for walls and water before walking or turning somewhere
OBSTACLE_DISTANCE = 2.0  # walking stops and turns when a wall or water is closer than this


def is_water_column(world: World, x: float, z: float) -> bool:
    return world.heightmap[int(np.floor(x)) % WORLD_SIZE, int(np.floor(z)) % WORLD_SIZE] < SEA_LEVEL


def action(forward=0, back=0, left=0, right=0, jump=0, sneak=0, sprint=0, pitch=0.0, yaw=0.0):
    """A full MineRL action dict; the inventory, hotbar and mouse-button keys are never used."""
    return {
        "forward": forward, "back": back, "left": left, "right": right, "jump": jump,
        "sneak": sneak, "sprint": sprint, "attack": 0, "use": 0, "drop": 0, "pickItem": 0,
        "swapHands": 0, "inventory": 0, "ESC": 0,
        **{f"hotbar.{n}": 0 for n in range(1, 10)},
        "camera": [float(pitch), float(yaw)],
    }  # fmt: skip


def eased_sweep(angle: float, peak: float) -> list[float]:
    """Per-frame deltas that turn by about |angle| degrees: speed ramps up to peak and down."""
    ramp = [step for step in CAMERA_STEPS if step < peak]
    cruise_frames = max(0, round((abs(angle) - 2 * sum(ramp)) / peak))
    deltas = ramp + [peak] * cruise_frames + ramp[::-1]
    return [float(np.copysign(d, angle)) for d in deltas] or [float(np.copysign(peak, angle))]


class ScriptedPolicy:
    """act(player) -> the next action dict. Seeded: the same seed and world give the same play."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.plan: deque[dict] = deque()
        self.last_position = (0.0, 0.0)
        self.pushing = False  # did the last action walk forward (so not moving means blocked)?
        self.blocked_frames = 0
        self.yaw_balance = 0  # frames turned right minus frames turned left, so far
        self.swimming = False

    def act(self, player: Player) -> dict:
        self.update_blocked(player)
        in_water = player.submerged_depth() > 0
        if in_water != self.swimming:  # fell in: head for the shore; climbed out: carry on
            self.swimming = in_water
            self.plan.clear()
            if in_water:
                self.swim_ashore(player)
        if self.blocked_frames >= 4:  # a jump did not help: go somewhere else
            self.plan.clear()
            self.blocked_frames = 0
            self.turn_to_open_ground(player)
        while not self.plan:  # a look towards where the player already looks adds nothing
            self.choose_behaviour(player)
        walking_on = self.plan[0]["forward"] and not in_water
        if walking_on and self.clear_distance(player, player.yaw) < OBSTACLE_DISTANCE:
            self.plan.clear()
            self.turn_to_open_ground(player)
        next_action = self.plan.popleft()
        if self.blocked_frames and next_action["forward"] and not next_action["sneak"]:
            next_action["jump"] = 1  # walked into a step: hop up it, as a player would
        self.pushing = bool(next_action["forward"] and not next_action["sneak"])
        self.yaw_balance += int(np.sign(next_action["camera"][1]))
        return next_action

    def clear_distance(self, player: Player, yaw: float) -> float:
        """How far the player could walk towards yaw, climbing one-block steps, before a wall or
        a low ceiling stops it or water begins."""
        heading = np.radians(yaw)
        world = player.world
        feet = int(np.floor(player.y))
        for distance in np.arange(0.6, LOOK_AHEAD, 0.6):
            x = player.x - distance * np.sin(heading)
            z = player.z + distance * np.cos(heading)
            if is_water_column(world, x, z):
                return float(distance)
            cx, cz = int(np.floor(x)), int(np.floor(z))
            if world.is_solid(cx, feet, cz):  # a step up: fine if there is room above it
                feet += 1
            if world.is_solid(cx, feet, cz) or world.is_solid(cx, feet + 1, cz):
                return float(distance)
            while feet > 1 and not world.is_solid(cx, feet - 1, cz):  # walking downhill
                feet -= 1
        return LOOK_AHEAD

    def turn_to_open_ground(self, player: Player) -> None:
        """Turn, standing, to the heading with the most room ahead, preferring small turns."""
        side = self.turn_side()
        angles = [sign * side * angle for angle in (45, 90, 135) for sign in (1, -1)] + [side * 180]
        best = max(angles, key=lambda angle: self.clear_distance(player, player.yaw + angle))
        for yaw in eased_sweep(best, CAMERA_STEPS[2]):
            self.plan.append(action(yaw=yaw))

    def swim_ashore(self, player: Player) -> None:
        """Turn towards the nearest land and swim there, holding jump to keep afloat."""
        offsets = np.arange(-SHORE_SEARCH, SHORE_SEARCH + 1)
        xs = (int(player.x) + offsets) % WORLD_SIZE
        zs = (int(player.z) + offsets) % WORLD_SIZE
        land = player.world.heightmap[np.ix_(xs, zs)] >= SEA_LEVEL
        if land.any():
            dx, dz = np.meshgrid(offsets, offsets, indexing="ij")
            nearest = np.argmin(np.where(land, dx**2 + dz**2, np.inf))
            heading = np.degrees(np.arctan2(-dx.flat[nearest], dz.flat[nearest]))
            turn = (heading - player.yaw + 180) % 360 - 180
            if abs(turn) > CAMERA_STEPS[0]:
                for yaw in eased_sweep(turn, CAMERA_STEPS[2]):
                    self.plan.append(action(yaw=yaw))
        for _ in range(40):
            self.plan.append(action(forward=1, jump=1))

    def update_blocked(self, player: Player) -> None:
        """Count the frames in a row in which walking forward got the player nowhere."""
        position = (player.x, player.z)
        if self.pushing:
            moved = np.hypot(*np.subtract(position, self.last_position))
            self.blocked_frames = self.blocked_frames + 1 if moved < BLOCKED_DISTANCE else 0
        self.last_position = position

    def choose_behaviour(self, player: Player) -> None:
        if abs(player.pitch) > 35 and self.rng.random() < 0.6:
            self.look(player, target=self.rng.uniform(-10, 10))
            return
        behaviours = {
            self.walk: 0.26,
            self.turn: 0.13,
            self.look: 0.14,
            self.revisit: 0.05,
            self.strafe: 0.16,
            self.stand: 0.05,
            self.hop: 0.05,
            self.jump: 0.05,
            self.look_around: 0.04,
            self.step_back: 0.10,
        }
        choices = list(behaviours)
        odds = np.array(list(behaviours.values()))
        choices[self.rng.choice(len(choices), p=odds / odds.sum())](player)

    def side(self) -> float:
        return 1.0 if self.rng.random() < 0.5 else -1.0

    def turn_side(self) -> float:
        """Right (+1) or left (-1), leaning against the turns so far so neither side dominates."""
        right_odds = 0.5 - np.clip(self.yaw_balance / 200, -0.35, 0.35)
        return 1.0 if self.rng.random() < right_odds else -1.0

    def walk(self, player: Player) -> None:
        frames = int(self.rng.integers(10, 50))
        sprint = int(self.rng.random() < 0.3)
        sneak = int(not sprint and self.rng.random() < 0.2)
        for _ in range(frames):
            yaw = pitch = 0.0
            if self.rng.random() < 0.2:  # steering jitter
                yaw = self.side() * CAMERA_STEPS[0]
            if self.rng.random() < 0.15:  # glancing at the ground ahead or up at the trees
                pitch = self.side() * CAMERA_STEPS[0]
            jump = int(not sneak and self.rng.random() < 0.03)
            self.plan.append(
                action(forward=1, sprint=sprint, sneak=sneak, jump=jump, pitch=pitch, yaw=yaw)
            )

    def turn(self, player: Player, angle_range=(15, 180), while_walking=None) -> None:
        """A smooth yaw sweep; half the time the mouse also drifts a little up or down."""
        angle = self.turn_side() * self.rng.uniform(*angle_range)
        peak = float(self.rng.choice(CAMERA_STEPS[1:]))
        walking = self.rng.random() < 0.7 if while_walking is None else while_walking
        drift = 0.0
        if self.rng.random() < 0.5:  # drift towards the horizon, or either way when level
            drift = -np.sign(player.pitch) if abs(player.pitch) > 10 else self.side()
        for i, yaw in enumerate(eased_sweep(angle, peak)):
            pitch = drift * CAMERA_STEPS[0] if i % 2 else 0.0
            self.plan.append(action(forward=int(walking), pitch=pitch, yaw=yaw))

    def look(self, player: Player, target: float | None = None) -> None:
        """Pitch towards a target angle, mostly near the horizon (positive is down)."""
        if target is None:
            target = float(np.clip(self.rng.normal(0.0, 25.0), -MAX_PITCH, MAX_PITCH))
        peak = float(self.rng.choice(CAMERA_STEPS[:3]))
        walking = int(self.rng.random() < 0.3)
        if abs(target - player.pitch) < 2:
            return
        for pitch in eased_sweep(target - player.pitch, peak):
            self.plan.append(action(forward=walking, pitch=pitch))

    def revisit(self, player: Player) -> None:
        """Turn away, pause, and turn back by exactly the same amount to the view from before."""
        peak = float(self.rng.choice(CAMERA_STEPS[1:]))
        away = eased_sweep(self.turn_side() * self.rng.uniform(45, 180), peak)
        for yaw in away:
            self.plan.append(action(yaw=yaw))
        for _ in range(int(self.rng.integers(2, 10))):
            self.plan.append(action())
        for yaw in away:
            self.plan.append(action(yaw=-yaw))

    def strafe(self, player: Player) -> None:
        left = int(self.rng.random() < 0.5)
        forward = int(self.rng.random() < 0.3)
        for _ in range(int(self.rng.integers(6, 25))):
            self.plan.append(action(forward=forward, left=left, right=1 - left))

    def stand(self, player: Player) -> None:
        for _ in range(int(self.rng.integers(3, 15))):
            self.plan.append(action())

    def hop(self, player: Player) -> None:
        """Sprint-jumping along, the fastest way around in Minecraft."""
        for _ in range(int(self.rng.integers(8, 20))):
            self.plan.append(action(forward=1, sprint=1, jump=1))

    def look_around(self, player: Player) -> None:
        """Small pans left and right, as when taking in the surroundings."""
        for _ in range(int(self.rng.integers(2, 4))):
            for yaw in eased_sweep(self.turn_side() * self.rng.uniform(10, 40), CAMERA_STEPS[1]):
                self.plan.append(action(yaw=yaw))

    def jump(self, player: Player) -> None:
        """Jumping on the spot: the view rises and falls with nothing else moving."""
        for _ in range(int(self.rng.integers(6, 20))):
            self.plan.append(action(jump=1))

    def step_back(self, player: Player) -> None:
        for _ in range(int(self.rng.integers(5, 20))):
            self.plan.append(action(back=1))


def scripted_actions(
    seed: int, num_frames: int, policy_seed: int | None = None, start: dict | None = None
) -> list[dict]:
    """num_frames actions of scripted play in the world of seed, from spawn or from start.

    policy_seed (default: seed) picks the play, so one world can give many different episodes.
    """
    world = generate_world(seed)
    player = Player.from_state(seed, start) if start else Player.spawn(world)
    policy = ScriptedPolicy(seed if policy_seed is None else policy_seed)
    actions = []
    for _ in range(num_frames):
        next_action = policy.act(player)
        player.step(next_action)
        actions.append(next_action)
    return actions


def action_statistics(actions: list[dict]) -> dict[str, float]:
    """Share of frames with each kind of input, to check the play is balanced."""
    camera = np.array([a.get("camera", (0.0, 0.0)) for a in actions], dtype=float)
    pitch, yaw = camera[:, 0], camera[:, 1]

    def share(key):
        return float(np.mean([a.get(key, 0) for a in actions]))

    moving_keys = ("forward", "back", "left", "right", "jump")
    still = np.array([not any(a.get(k, 0) for k in moving_keys) for a in actions])
    return {
        "turn_right": float(np.mean(yaw > 0)),
        "turn_left": float(np.mean(yaw < 0)),
        "look_down": float(np.mean(pitch > 0)),
        "look_up": float(np.mean(pitch < 0)),
        "any_camera": float(np.mean((yaw != 0) | (pitch != 0))),
        "mean_abs_yaw": float(np.mean(np.abs(yaw))),
        "net_yaw": float(yaw.sum()),
        "max_abs_camera": float(np.abs(camera).max()),
        **{
            key: share(key)
            for key in ("forward", "back", "left", "right", "jump", "sprint", "sneak")
        },
        "no_movement": float(np.mean(still)),
        "standing_still": float(np.mean(still & (camera == 0).all(axis=1))),
    }
