"""First-person renderer: vectorised voxel ray marching in numpy.

Every pixel's ray is marched through the block grid at once with the Amanatides-Woo DDA: each
iteration moves every still-flying ray into its next cell, looks the cell up, and retires the
rays that hit something or flew past MAX_DISTANCE. Hits are then shaded like Minecraft:
a base colour per block and face, a deterministic 8x8-texel noise texture per block face (hashed
from the cell and the texel, so it sticks to the world as the camera moves), fixed per-face
brightness (top bright, N/S darker, E/W darker still, bottom darkest) and distance fog into a
sky gradient with a square sun and blocky clouds.

Camera convention (Minecraft's): yaw 0 looks south (+z), positive yaw turns right (towards -x),
positive pitch looks down. The vertical field of view is FOV_Y_DEGREES.
"""

from functools import lru_cache

import numpy as np

from mineworld.world import terrain
from mineworld.world.terrain import NUM_BLOCKS, WORLD_HEIGHT, WORLD_SIZE, World

FOV_Y_DEGREES = 70.0
MAX_DISTANCE = 40.0  # blocks; fog reaches the sky colour here
FOG_START = 0.6 * MAX_DISTANCE
TEXELS = 8  # texture resolution per block face, like a (coarser) Minecraft texture
# Rays per pixel along each axis, averaged: anti-aliasing, as Minecraft's mipmaps, so distant
# texels blend instead of shimmering as pixel-level noise that no 96-token frame code can hold.
SUPERSAMPLE = 2
CLOUD_HEIGHT = 72.0

SKY_ZENITH = np.array([110.0, 155.0, 245.0])
SKY_HORIZON = np.array([190.0, 215.0, 250.0])
UNDERWATER_FOG = np.array([30.0, 60.0, 140.0])
SUN_COLOUR = np.array([255.0, 250.0, 215.0])
SUN_DIRECTION = np.array([0.45, 0.75, 0.48]) / np.linalg.norm([0.45, 0.75, 0.48])
SUN_HALF_SIZE = 0.07  # half-width of the square sun, in direction-vector units

# Face brightness by axis: faces facing +-x are darkest of the sides, as in Minecraft.
TOP_LIGHT, BOTTOM_LIGHT, X_SIDE_LIGHT, Z_SIDE_LIGHT = 1.0, 0.5, 0.62, 0.8

# Texture table per block and face kind (0 top, 1 side, 2 bottom): base colour, how much the
# per-texel noise changes brightness, and a speckle colour with the share of texels it covers.
TOP, SIDE, BOTTOM = 0, 1, 2
BASE_COLOUR = np.zeros((NUM_BLOCKS, 3, 3))
CONTRAST = np.zeros((NUM_BLOCKS, 3))
SPECKLE_COLOUR = np.zeros((NUM_BLOCKS, 3, 3))
SPECKLE_SHARE = np.zeros((NUM_BLOCKS, 3))


def set_texture(block, kinds, colour, contrast, speckle=(0, 0, 0), share=0.0):
    for kind in kinds:
        BASE_COLOUR[block, kind] = colour
        CONTRAST[block, kind] = contrast
        SPECKLE_COLOUR[block, kind] = speckle
        SPECKLE_SHARE[block, kind] = share


ALL_FACES = (TOP, SIDE, BOTTOM)
set_texture(terrain.BEDROCK, ALL_FACES, (80, 80, 80), 0.6, (30, 30, 30), 0.3)
set_texture(terrain.STONE, ALL_FACES, (128, 128, 128), 0.25)
set_texture(terrain.DIRT, ALL_FACES, (134, 96, 67), 0.3, (100, 70, 50), 0.1)
set_texture(terrain.GRASS, (TOP,), (95, 160, 60), 0.3)
set_texture(terrain.FLOWERS, (TOP,), (95, 160, 60), 0.3, (230, 60, 50), 0.08)
set_texture(terrain.GRASS, (SIDE, BOTTOM), (134, 96, 67), 0.3, (100, 70, 50), 0.1)
set_texture(terrain.FLOWERS, (SIDE, BOTTOM), (134, 96, 67), 0.3, (100, 70, 50), 0.1)
set_texture(terrain.SAND, ALL_FACES, (219, 207, 163), 0.12, (190, 175, 130), 0.1)
set_texture(terrain.WATER, ALL_FACES, (50, 90, 200), 0.1, (80, 125, 225), 0.06)
set_texture(terrain.LOG, (SIDE,), (102, 81, 50), 0.35)
set_texture(terrain.LOG, (TOP, BOTTOM), (170, 135, 85), 0.15)
set_texture(terrain.LEAVES, ALL_FACES, (60, 125, 40), 0.45, (30, 70, 20), 0.25)
set_texture(terrain.COAL_ORE, ALL_FACES, (128, 128, 128), 0.25, (35, 35, 35), 0.18)
set_texture(terrain.IRON_ORE, ALL_FACES, (128, 128, 128), 0.25, (215, 175, 140), 0.18)
GRASS_GREEN = BASE_COLOUR[terrain.GRASS, TOP]
LOG_BARK = BASE_COLOUR[terrain.LOG, SIDE]


@lru_cache(maxsize=16)
def camera_plane(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel offsets along the camera's right and up axes for a unit forward vector."""
    half_height = np.tan(np.radians(FOV_Y_DEGREES) / 2)
    half_width = half_height * width / height
    right = ((np.arange(width) + 0.5) / width * 2 - 1) * half_width
    up = (1 - (np.arange(height) + 0.5) / height * 2) * half_height
    right, up = np.meshgrid(right, up)
    return right.ravel(), up.ravel()


def ray_directions(yaw: float, pitch: float, width: int, height: int) -> np.ndarray:
    """Unit ray direction per pixel, [height * width, 3], row-major from the top-left."""
    yaw, pitch = np.radians(yaw), np.radians(pitch)
    forward = np.array([-np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    right = np.array([-np.cos(yaw), 0.0, -np.sin(yaw)])
    up = np.cross(right, forward)
    along_right, along_up = camera_plane(width, height)
    directions = forward + along_right[:, None] * right + along_up[:, None] * up
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def march_rays(world: World, origin: np.ndarray, directions: np.ndarray, see_water: bool):
    """Amanatides-Woo DDA for all rays at once.

    Returns per ray: distance to the hit (inf for a miss), the hit cell [N, 3] (not wrapped, so
    it lines up with the ray), the axis of the face that was crossed (0 x, 1 y, 2 z) and the
    block id.
    """
    opaque = np.ones(NUM_BLOCKS, dtype=bool)
    opaque[terrain.AIR] = False
    opaque[terrain.WATER] = see_water  # from inside water we look through it, tinted by the fog
    flat_blocks = world.blocks.ravel()
    num_rays = len(directions)
    # A zero direction component would divide by zero; a tiny one never reaches the boundary.
    directions = np.where(np.abs(directions) < 1e-9, 1e-9, directions).T  # [3, N]
    start_cell = np.floor(origin).astype(np.int32)[:, None]
    step = np.where(directions > 0, 1, -1).astype(np.int8)
    t_delta = np.abs(1.0 / directions)
    origin = origin[:, None]
    to_boundary = np.where(directions > 0, start_cell + 1 - origin, origin - start_cell)

    hit_distance = np.full(num_rays, np.inf)
    hit_cell = np.zeros((3, num_rays), dtype=np.int32)
    hit_axis = np.zeros(num_rays, dtype=np.int64)
    hit_block = np.zeros(num_rays, dtype=np.int64)

    # The rays still in the arrays, stacked per axis so that each iteration is a few numpy ops.
    ray = np.arange(num_rays)
    cell = np.repeat(start_cell, num_rays, axis=1)
    t_next = to_boundary * t_delta  # distance at which each axis's next boundary is crossed
    alive = np.ones(num_rays, dtype=bool)
    mask = WORLD_SIZE - 1
    while ray.size:
        tx, ty, tz = t_next
        cross_x = (tx <= ty) & (tx <= tz)
        cross_y = ~cross_x & (ty <= tz)
        crossing = np.stack([cross_x, cross_y, ~(cross_x | cross_y)])
        distance = np.minimum(np.minimum(tx, ty), tz)
        cell += step * crossing.view(np.int8)
        t_next += t_delta * crossing
        cx, cy, cz = cell
        index = ((cx & mask) * WORLD_HEIGHT + np.minimum(cy, WORLD_HEIGHT - 1)) * WORLD_SIZE
        block = flat_blocks.take(index + (cz & mask))
        above_blocks = cy > world.highest_block  # cy < 0 is impossible: there is bedrock
        hit = alive & opaque[block] & ~above_blocks
        if hit.any():
            hits = ray[hit]
            hit_distance[hits] = distance[hit]
            hit_cell[:, hits] = cell[:, hit]
            hit_axis[hits] = np.argmax(crossing[:, hit], axis=0)
            hit_block[hits] = block[hit]
        alive &= ~hit & (distance < MAX_DISTANCE) & ~(above_blocks & (step[1] > 0))
        # Dropping finished rays costs a copy of every array, so only do it once many are done.
        if np.count_nonzero(alive) < 0.75 * ray.size:
            keep = np.flatnonzero(alive)
            ray, alive, cell, t_next = ray[keep], alive[keep], cell[:, keep], t_next[:, keep]
            step, t_delta = step[:, keep], t_delta[:, keep]
    return hit_distance, hit_cell.T, hit_axis, hit_block


def texel_noise(key: np.ndarray) -> np.ndarray:
    """Deterministic uint32 hash (a murmur-style finaliser) of integer keys."""
    h = key.astype(np.uint32) * np.uint32(0x9E3779B1)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def shade_hits(origin, directions, distance, cell, axis, block, crossed_up) -> np.ndarray:
    """Textured, face-lit colour [N, 3] of the hit points (before fog)."""
    point = origin + distance[:, None] * directions
    local = np.clip(point - cell, 0.0, 0.9999)  # position inside the hit block, in [0, 1)
    # Face coordinates (u across, v up for sides) and texel indices.
    u = np.where(axis == 0, local[:, 2], local[:, 0])
    v = np.where(axis == 1, local[:, 2], local[:, 1])
    tu = (u * TEXELS).astype(np.int64)
    tv = (v * TEXELS).astype(np.int64)
    kind = np.where(axis != 1, SIDE, np.where(crossed_up, BOTTOM, TOP))

    is_log_side = (block == terrain.LOG) & (kind == SIDE)
    tv_for_hash = np.where(is_log_side, 0, tv)  # bark is vertical stripes: same hash up a column
    wrapped = cell & (WORLD_SIZE - 1)  # the same block seen across the wrap has the same texture
    cell_key = (wrapped[:, 0] * WORLD_HEIGHT + cell[:, 1]) * WORLD_SIZE + wrapped[:, 2]
    key = ((cell_key * 3 + axis) * TEXELS + tu) * TEXELS + tv_for_hash
    noise = texel_noise(key)
    brightness_noise = (noise & np.uint32(0xFFFF)) / 65535.0 - 0.5
    speckle_roll = (noise >> np.uint32(16)) / 65535.0

    colour = BASE_COLOUR[block, kind] * (1 + CONTRAST[block, kind] * brightness_noise)[:, None]
    speckled = speckle_roll < SPECKLE_SHARE[block, kind]
    colour[speckled] = SPECKLE_COLOUR[block[speckled], kind[speckled]]

    # Grass block sides: a green fringe one or two texels deep hanging from the top edge.
    fringe_depth = 1 + (speckle_roll > 0.5)
    grass_side = np.isin(block, (terrain.GRASS, terrain.FLOWERS)) & (kind == SIDE)
    fringe = grass_side & (TEXELS - 1 - tv < fringe_depth)
    colour[fringe] = GRASS_GREEN * (1 + 0.3 * brightness_noise[fringe, None])
    # Log ends: square growth rings inside a ring of bark.
    ring = (np.maximum(np.abs(u - 0.5), np.abs(v - 0.5)) * TEXELS).astype(np.int64)
    log_end = (block == terrain.LOG) & (kind != SIDE)
    colour[log_end & (ring % 2 == 1)] *= 0.8
    colour[log_end & (ring == TEXELS // 2 - 1)] = LOG_BARK

    light = np.select([axis == 0, axis == 2, kind == TOP], [X_SIDE_LIGHT, Z_SIDE_LIGHT, TOP_LIGHT])
    light = np.where(kind == BOTTOM, BOTTOM_LIGHT, light)
    return colour * light[:, None]


def sky_gradient(directions: np.ndarray) -> np.ndarray:
    """Pale at the horizon, deeper blue overhead, [N, 3]: also the colour fog fades into."""
    elevation = np.clip(directions[:, 1], 0.0, 1.0)
    return SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(elevation)[:, None]


def sky_colour(world: World, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The gradient plus a square sun and a flat layer of blocky clouds, [N, 3]."""
    sky = sky_gradient(directions)
    # The sun is square, as in Minecraft: a box in a frame around the sun direction.
    sun_u = np.cross(SUN_DIRECTION, [0.0, 1.0, 0.0])
    sun_u /= np.linalg.norm(sun_u)
    sun_v = np.cross(sun_u, SUN_DIRECTION)
    toward_sun = directions @ SUN_DIRECTION
    in_sun = (
        (toward_sun > 0)
        & (np.abs(directions @ sun_u) < SUN_HALF_SIZE)
        & (np.abs(directions @ sun_v) < SUN_HALF_SIZE)
    )
    sky[in_sun] = SUN_COLOUR
    # Clouds: where an upward ray meets the cloud plane over a cloud cell, fading with distance.
    upward = directions[:, 1] > 0.02
    to_clouds = (CLOUD_HEIGHT - origin[1]) / np.where(upward, directions[:, 1], 1.0)
    cloud_xz = origin[[0, 2]] + to_clouds[:, None] * directions[:, [0, 2]]
    cloud_cell = np.floor(cloud_xz / terrain.CLOUD_CELL).astype(np.int64) % len(world.clouds)
    cloudy = upward & world.clouds[cloud_cell[:, 0], cloud_cell[:, 1]]
    cloud_opacity = np.clip(1.3 - to_clouds / 250.0, 0.0, 0.9)[:, None]
    sky = np.where(cloudy[:, None], sky + (255.0 - sky) * cloud_opacity, sky)
    return sky


def render(
    world: World,
    eye: tuple[float, float, float],
    yaw: float,
    pitch: float,
    size: tuple[int, int] = (64, 48),
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """The view from eye (yaw, pitch in degrees) as a uint8 [height, width, 3] RGB image.

    supersample=k renders k*k rays per pixel and averages them (smoother edges, k^2 slower).
    """
    width, height = size
    origin = np.asarray(eye, dtype=np.float64)
    directions = ray_directions(yaw, pitch, width * supersample, height * supersample)
    eye_cell = np.floor(origin).astype(np.int64)
    eye_in_water = world.block(*eye_cell) == terrain.WATER
    distance, cell, axis, block = march_rays(world, origin, directions, see_water=not eye_in_water)

    hit = np.isfinite(distance)
    colour = np.empty((len(directions), 3))
    colour[~hit] = sky_colour(world, origin, directions[~hit])
    crossed_up = directions[hit, 1] > 0  # a ray going up meets a block's bottom face
    surface = shade_hits(
        origin, directions[hit], distance[hit], cell[hit], axis[hit], block[hit], crossed_up
    )
    fog = np.clip((distance[hit] - FOG_START) / (MAX_DISTANCE - FOG_START), 0.0, 1.0)[:, None]
    colour[hit] = surface + (sky_gradient(directions[hit]) - surface) * fog
    if eye_in_water:
        murk = np.clip(0.35 + np.nan_to_num(distance, posinf=1e3) / 16.0, 0.0, 0.95)[:, None]
        colour = colour + (UNDERWATER_FOG - colour) * murk

    image = colour.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
