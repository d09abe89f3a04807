"""Deterministic Minecraft-like voxel terrain from an integer seed.

The world is a 128 x 48 x 128 block grid indexed blocks[x, y, z] (x east, y up, z south) that
wraps around in x and z: every noise field is periodic, so the map is a seamless torus with no
edge to fall off or to stare at. The player and the rays simply take coordinates modulo the size.

Generation, top to bottom: a fractal value-noise heightmap; stone under dirt under grass; sand on
beaches and sea floors (every shore is a beach level with the water, so a swimmer can always
climb out); water up to SEA_LEVEL; coal and iron ore scattered through the stone;
flower patches on grass; oak-like trees (log trunk, leaf blob); a bedrock floor at y = 0 so no ray
or player ever leaves the bottom. A small periodic cloud map for the sky lives here too, since it
is part of what the seed decides.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

WORLD_SIZE = 128  # columns along x and along z; a power of two so wrapping is a bit mask
WORLD_HEIGHT = 48
SEA_LEVEL = 20  # the highest water block; the water surface is at y = SEA_LEVEL + 1
CLOUD_CELL = 8  # blocks per cloud cell, so the cloud map has the same period as the world

# Block ids. AIR must be 0: renderer and physics treat "nonzero" as "something is there".
AIR, BEDROCK, STONE, DIRT, GRASS, FLOWERS, SAND, WATER, LOG, LEAVES, COAL_ORE, IRON_ORE = range(12)
NUM_BLOCKS = 12

# Blocks the player cannot walk through (water and air can be entered).
SOLID = np.ones(NUM_BLOCKS, dtype=bool)
SOLID[[AIR, WATER]] = False


@dataclass(frozen=True)
class World:
    """The generated blocks plus what the sky and the spawn point need."""

    seed: int
    blocks: np.ndarray  # uint8 [WORLD_SIZE, WORLD_HEIGHT, WORLD_SIZE], read-only
    heightmap: np.ndarray  # int [WORLD_SIZE, WORLD_SIZE]: y of the top terrain block per column
    clouds: np.ndarray  # bool [16, 16]: which CLOUD_CELL-wide squares of the sky are cloud
    spawn: tuple[float, float, float]  # feet position of a standing player on dry land
    highest_block: int  # y of the highest non-air block: rays going up above it see only sky

    def block(self, x: int, y: int, z: int) -> int:
        """Block id at integer cell (x, y, z); x and z wrap, below the world is bedrock."""
        if y < 0:
            return BEDROCK
        if y >= WORLD_HEIGHT:
            return AIR
        return int(self.blocks[x % WORLD_SIZE, y, z % WORLD_SIZE])

    def is_solid(self, x: int, y: int, z: int) -> bool:
        return bool(SOLID[self.block(x, y, z)])


def periodic_value_noise(rng: np.random.Generator, lattice_cells: int) -> np.ndarray:
    """Smooth noise in [0, 1] on the WORLD_SIZE^2 grid, periodic so the torus has no seam.

    Random values on a coarse lattice_cells^2 lattice, smoothstep-interpolated between them.
    """
    lattice = rng.random((lattice_cells, lattice_cells))
    coords = np.arange(WORLD_SIZE) * lattice_cells / WORLD_SIZE
    i0 = np.floor(coords).astype(int)
    i1 = (i0 + 1) % lattice_cells
    f = coords - i0
    s = f * f * (3 - 2 * f)  # smoothstep hides the lattice's straight lines
    along_x = lattice[i0] * (1 - s)[:, None] + lattice[i1] * s[:, None]
    return along_x[:, i0] * (1 - s)[None, :] + along_x[:, i1] * s[None, :]


def fractal_noise(rng: np.random.Generator, lattice_sizes: tuple[int, ...]) -> np.ndarray:
    """Octaves of value noise, coarse ones weighted most; normalised to [0, 1]."""
    total = np.zeros((WORLD_SIZE, WORLD_SIZE))
    for octave, cells in enumerate(lattice_sizes):
        total += periodic_value_noise(rng, cells) * 0.5**octave
    return (total - total.min()) / (total.max() - total.min())


def make_heightmap(rng: np.random.Generator) -> np.ndarray:
    """Rolling hills with some water and the odd taller hill: y of the top block per column."""
    hills = fractal_noise(rng, (4, 8, 16, 32))
    mountains = periodic_value_noise(rng, 4) ** 2  # rare, broad bumps on top of the hills
    height = SEA_LEVEL - 8 + hills * 18 + mountains * 12
    height = np.clip(np.round(height), 2, WORLD_HEIGHT - 10).astype(int)
    # Every shore is a beach level with the water for two blocks, so a swimmer can climb out.
    near_water = height < SEA_LEVEL
    for _ in range(2):
        near_water = near_water | np.roll(near_water, 1, 0) | np.roll(near_water, -1, 0)
        near_water = near_water | np.roll(near_water, 1, 1) | np.roll(near_water, -1, 1)
    return np.where(near_water, np.minimum(height, SEA_LEVEL), height)


def fill_columns(heightmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stone, dirt, grass / sand and water for every column."""
    y = np.arange(WORLD_HEIGHT)[None, :, None]
    top = heightmap[:, None, :]
    blocks = np.zeros((WORLD_SIZE, WORLD_HEIGHT, WORLD_SIZE), dtype=np.uint8)
    blocks[y <= top] = STONE
    blocks[(y > top - 4) & (y < top)] = DIRT
    beach = top <= SEA_LEVEL + 1  # beaches and sea floors are sand, drier land grows grass
    blocks[(y == top) & ~beach] = GRASS
    blocks[(y > top - 3) & (y <= top) & beach] = SAND
    blocks[(y > top) & (y <= SEA_LEVEL)] = WATER
    stone = blocks == STONE
    ore_roll = rng.random(blocks.shape)
    blocks[stone & (ore_roll < 0.02)] = COAL_ORE
    blocks[stone & (ore_roll > 0.992)] = IRON_ORE
    blocks[:, 0, :] = BEDROCK
    return blocks


def plant_flowers(blocks: np.ndarray, heightmap: np.ndarray, rng: np.random.Generator) -> None:
    """Patches of flowery grass where a low-frequency mask says 'meadow'."""
    meadow = periodic_value_noise(rng, 8) > 0.7
    columns = meadow & (rng.random(heightmap.shape) < 0.35)
    xs, zs = np.nonzero(columns)
    ys = heightmap[xs, zs]
    is_grass = blocks[xs, ys, zs] == GRASS
    blocks[xs[is_grass], ys[is_grass], zs[is_grass]] = FLOWERS


def plant_trees(blocks: np.ndarray, heightmap: np.ndarray, rng: np.random.Generator) -> None:
    """Oak-like trees on grass: a 4-6 block trunk and a leaf blob, denser in forests."""
    forest = periodic_value_noise(rng, 4)
    chance = np.where(forest > 0.6, 0.05, 0.004)
    candidates = np.argwhere(rng.random(heightmap.shape) < chance)
    trunks: list[tuple[int, int]] = []
    for x, z in candidates:
        ground = heightmap[x, z]
        if blocks[x, ground, z] != GRASS or ground + 8 >= WORLD_HEIGHT:
            continue
        # Keep trunks 3 blocks apart (torus distance) so canopies do not merge into walls.
        if any(
            min(abs(x - tx), WORLD_SIZE - abs(x - tx)) < 3
            and min(abs(z - tz), WORLD_SIZE - abs(z - tz)) < 3
            for tx, tz in trunks
        ):
            continue
        trunks.append((x, z))
        trunk_top = ground + int(rng.integers(4, 7))
        for y in range(trunk_top - 2, trunk_top + 2):
            radius = 2 if y < trunk_top else 1
            for dx in range(-radius, radius + 1):
                for dz in range(-radius, radius + 1):
                    corner = abs(dx) == radius and abs(dz) == radius
                    if corner and (y == trunk_top + 1 or rng.random() < 0.5):
                        continue  # rounded, slightly ragged canopy like Minecraft's oaks
                    cell = ((x + dx) % WORLD_SIZE, y, (z + dz) % WORLD_SIZE)
                    if blocks[cell] == AIR:
                        blocks[cell] = LEAVES
        blocks[x, ground, z] = DIRT  # a trunk grows out of dirt, not grass
        blocks[x, ground + 1 : trunk_top + 1, z] = LOG


def make_clouds(rng: np.random.Generator) -> np.ndarray:
    """Clumps of cloud cells: smooth noise sampled once per cell, roughened a little."""
    smooth = periodic_value_noise(rng, 4)[::CLOUD_CELL, ::CLOUD_CELL]
    return smooth + 0.3 * rng.random(smooth.shape) > 0.75


def find_spawn(blocks: np.ndarray, heightmap: np.ndarray) -> tuple[float, float, float]:
    """The dry grass column nearest the map centre with three free blocks above it."""
    xs, zs = np.meshgrid(np.arange(WORLD_SIZE), np.arange(WORLD_SIZE), indexing="ij")
    top = blocks[xs, heightmap, zs]
    headroom = [blocks[xs, np.minimum(heightmap + k, WORLD_HEIGHT - 1), zs] for k in (1, 2, 3)]
    dry = np.isin(top, (GRASS, FLOWERS)) & (np.stack(headroom) == AIR).all(axis=0)
    distance = (xs - WORLD_SIZE / 2) ** 2 + (zs - WORLD_SIZE / 2) ** 2
    distance = np.where(dry, distance, np.inf)
    x, z = (int(i) for i in np.unravel_index(np.argmin(distance), distance.shape))
    return (x + 0.5, float(heightmap[x, z] + 1), z + 0.5)


@lru_cache(maxsize=8)
def generate_world(seed: int) -> World:
    """The world for a seed. Cached (and read-only) because episodes re-use worlds a lot."""
    rng = np.random.default_rng(seed)
    heightmap = make_heightmap(rng)
    blocks = fill_columns(heightmap, rng)
    plant_flowers(blocks, heightmap, rng)
    plant_trees(blocks, heightmap, rng)
    clouds = make_clouds(rng)
    spawn = find_spawn(blocks, heightmap)
    highest_block = int(np.nonzero(blocks.any(axis=(0, 2)))[0].max())
    for array in (blocks, heightmap, clouds):
        array.flags.writeable = False
    return World(seed, blocks, heightmap, clouds, spawn, highest_block)
