"""The player: position, view direction, velocity, and Minecraft-like physics for one action.

Time: the world runs at FPS = 10 video frames per simulated second. Each frame (one step, one
action) is TICKS_PER_FRAME = 2 physics ticks of 1/20 s, Minecraft's own tick, so the constants
below are Minecraft's per-tick numbers: walking 4.3 blocks/s, gravity 0.08 blocks/tick^2, a jump
that clears one block.

The body is an axis-aligned box 0.6 wide and 1.8 tall whose bottom centre is (x, y, z). Each tick
moves it along y, then x, then z, stopping at the first solid block on each axis separately, so
the player slides along walls, lands on the ground and never ends up inside a block. Water is
not solid: in it gravity is weak, buoyancy holds the head above the surface, and a jump swims up.
The world wraps around in x and z, so x and z are kept in [0, WORLD_SIZE).
"""

import math
from dataclasses import dataclass, field

from mineworld.world.terrain import WATER, WORLD_SIZE, World, generate_world

FPS = 10
TICKS_PER_FRAME = 2

HALF_WIDTH = 0.3
BODY_HEIGHT = 1.8
EYE_HEIGHT = 1.62

WALK_SPEED = 0.216  # blocks per tick (4.3 blocks/s)
SPRINT_FACTOR = 1.3
SNEAK_FACTOR = 0.3
WATER_FACTOR = 0.5
GROUND_GRIP = 0.6  # share of the gap to the wanted horizontal velocity closed per tick
AIR_GRIP = 0.2  # less control in the air, as in Minecraft
GRAVITY = 0.08
AIR_DRAG = 0.98
JUMP_VELOCITY = 0.42
MAX_FALL_PER_TICK = 0.9  # below one block, so a tick can never skip over a floor
WATER_GRAVITY = 0.02
WATER_DRAG = 0.8
BUOYANCY = 0.018  # upward push per tick per block of body below the surface
SWIM_VELOCITY = 0.2
GAP = 1e-7  # how far from a wall a blocked body stops, so it touches without overlapping


def floor_int(value: float) -> int:
    return int(math.floor(value))


def cells_spanned(low: float, high: float) -> range:
    """Integer cells that the open interval (low, high) overlaps."""
    return range(floor_int(low), math.ceil(high))


@dataclass
class Player:
    """Where the player is, where it looks and how it moves; step(action) advances one frame."""

    world: World = field(repr=False, compare=False)
    x: float
    y: float
    z: float
    yaw: float = 0.0  # degrees; 0 looks south (+z), positive turns right
    pitch: float = 0.0  # degrees in [-90, 90]; positive looks down
    vx: float = 0.0  # velocity in blocks per tick
    vy: float = 0.0
    vz: float = 0.0
    on_ground: bool = False

    @classmethod
    def spawn(cls, world: World) -> "Player":
        x, y, z = world.spawn
        return cls(world, x, y, z, on_ground=True)

    @property
    def eye(self) -> tuple[float, float, float]:
        return (self.x, self.y + EYE_HEIGHT, self.z)

    def state(self) -> dict:
        """Everything but the world, as plain floats: enough to resume or replay from here."""
        names = ("x", "y", "z", "yaw", "pitch", "vx", "vy", "vz", "on_ground")
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_state(cls, world_seed: int, state: dict) -> "Player":
        return cls(generate_world(world_seed), **state)

    def overlaps_solid(self, x: float, y: float, z: float) -> bool:
        """Would the body standing at (x, y, z) overlap any solid block?"""
        return any(
            self.world.is_solid(cx, cy, cz)
            for cx in cells_spanned(x - HALF_WIDTH, x + HALF_WIDTH)
            for cy in cells_spanned(y, y + BODY_HEIGHT)
            for cz in cells_spanned(z - HALF_WIDTH, z + HALF_WIDTH)
        )

    def submerged_depth(self) -> float:
        """How much of the body is below a water surface, in blocks (0 on land)."""
        feet_cell = floor_int(self.y)
        for cy in range(feet_cell, floor_int(self.y + BODY_HEIGHT) + 1):
            if self.world.block(floor_int(self.x), cy, floor_int(self.z)) != WATER:
                return max(0.0, min(BODY_HEIGHT, cy - self.y)) if cy > feet_cell else 0.0
        return BODY_HEIGHT

    def step(self, action: dict) -> None:
        """Apply one MineRL-style action dict for one frame (missing keys mean 0)."""
        pitch_delta, yaw_delta = action.get("camera", (0.0, 0.0))
        self.pitch = min(90.0, max(-90.0, self.pitch + float(pitch_delta)))
        self.yaw = (self.yaw + float(yaw_delta)) % 360.0

        forward = action.get("forward", 0) - action.get("back", 0)
        strafe = action.get("right", 0) - action.get("left", 0)
        speed = WALK_SPEED
        if action.get("sneak", 0):
            speed *= SNEAK_FACTOR
        elif action.get("sprint", 0) and forward > 0:
            speed *= SPRINT_FACTOR
        if forward and strafe:
            speed /= math.sqrt(2)  # diagonal walking is no faster
        yaw = math.radians(self.yaw)
        # Facing (-sin yaw, cos yaw) in (x, z); the right-hand side is (-cos yaw, -sin yaw).
        wanted_vx = speed * (-math.sin(yaw) * forward - math.cos(yaw) * strafe)
        wanted_vz = speed * (math.cos(yaw) * forward - math.sin(yaw) * strafe)

        for _ in range(TICKS_PER_FRAME):
            self.tick(wanted_vx, wanted_vz, jump=bool(action.get("jump", 0)))

    def tick(self, wanted_vx: float, wanted_vz: float, jump: bool) -> None:
        submerged = self.submerged_depth()
        if submerged > 0:
            wanted_vx *= WATER_FACTOR
            wanted_vz *= WATER_FACTOR
        grip = GROUND_GRIP if self.on_ground or submerged > 0 else AIR_GRIP
        self.vx += (wanted_vx - self.vx) * grip
        self.vz += (wanted_vz - self.vz) * grip

        if jump and submerged > 0:
            self.vy = max(self.vy, SWIM_VELOCITY)
        elif jump and self.on_ground:
            self.vy = JUMP_VELOCITY

        # Move first, then accelerate, in Minecraft's order (that is what makes a jump 1.25 high).
        self.move_y()
        self.x = self.move_horizontal(self.x, self.vx, axis=0) % WORLD_SIZE
        self.z = self.move_horizontal(self.z, self.vz, axis=2) % WORLD_SIZE

        if submerged > 0:
            self.vy = (self.vy - WATER_GRAVITY + BUOYANCY * submerged) * WATER_DRAG
        else:
            self.vy = (self.vy - GRAVITY) * AIR_DRAG
        self.vy = max(-MAX_FALL_PER_TICK, min(MAX_FALL_PER_TICK, self.vy))

    def move_y(self) -> None:
        new_y = self.y + self.vy
        self.on_ground = False
        if not self.overlaps_solid(self.x, new_y, self.z):
            self.y = new_y
            return
        if self.vy < 0:  # landed: stand on top of the block under the feet
            self.y = float(floor_int(new_y) + 1)
            self.on_ground = True
        else:  # bumped the head: stop just under the ceiling
            self.y = math.ceil(new_y + BODY_HEIGHT) - 1 - BODY_HEIGHT - GAP
        self.vy = 0.0

    def move_horizontal(self, position: float, velocity: float, axis: int) -> float:
        """New x (axis 0) or z (axis 2) after moving by velocity, stopped by solid blocks."""
        new_position = position + velocity
        x, z = (new_position, self.z) if axis == 0 else (self.x, new_position)
        if not self.overlaps_solid(x, self.y, z):
            return new_position
        if axis == 0:
            self.vx = 0.0
        else:
            self.vz = 0.0
        if velocity > 0:  # touch the west / north face of the blocking cell
            return math.ceil(new_position + HALF_WIDTH) - 1 - HALF_WIDTH - GAP
        return floor_int(new_position - HALF_WIDTH) + 1 + HALF_WIDTH + GAP
