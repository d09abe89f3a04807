"""Tests of the procedural Minecraft-like world: determinism, physics, rendering, recording, policy.

Physics tests use small hand-built worlds (flat ground, a wall, a pool) so the expected motion is
exact; the rest use generated worlds at small frame sizes to stay fast.
"""

import json

import av
import numpy as np
import pytest

from mineworld.actions import camera_bin_center, quantize_camera, read_actions
from mineworld.world import (
    Game,
    Player,
    World,
    action_statistics,
    action_to_vpt,
    generate_world,
    read_recording,
    record_episode,
    render,
    replay,
    replay_recording,
    scripted_actions,
    vpt_to_action,
)
from mineworld.world.policy import CAMERA_STEPS, action
from mineworld.world.terrain import AIR, GRASS, STONE, WATER, WORLD_HEIGHT, WORLD_SIZE

GROUND = 10  # top block of the hand-built worlds; players stand at y = GROUND + 1
SMALL = (32, 24)


def hand_built_world(edit=None) -> World:
    """Flat grass at y = GROUND everywhere; edit(blocks) may add walls or pools."""
    blocks = np.zeros((WORLD_SIZE, WORLD_HEIGHT, WORLD_SIZE), dtype=np.uint8)
    blocks[:, :GROUND, :] = STONE
    blocks[:, GROUND, :] = GRASS
    if edit:
        edit(blocks)
    heightmap = np.full((WORLD_SIZE, WORLD_SIZE), GROUND)
    clouds = np.zeros((16, 16), dtype=bool)
    highest = int(np.nonzero(blocks.any(axis=(0, 2)))[0].max())
    return World(-1, blocks, heightmap, clouds, (64.5, GROUND + 1.0, 64.5), highest)


def standing_player(world: World, yaw: float = 0.0) -> Player:
    return Player(world, 64.5, GROUND + 1.0, 64.5, yaw=yaw, on_ground=True)


def run(player: Player, actions: list[dict]) -> np.ndarray:
    """Step through actions; the (x, y, z) after each step."""
    positions = []
    for a in actions:
        player.step(a)
        positions.append((player.x, player.y, player.z))
    return np.array(positions)


# ---------------------------------------------------------------- world and determinism


def test_world_generation_is_deterministic_and_spawn_is_on_dry_ground():
    world = generate_world(7)
    again = generate_world.__wrapped__(7)  # bypass the cache: really generate twice
    assert np.array_equal(world.blocks, again.blocks)
    assert world.spawn == again.spawn
    assert not np.array_equal(world.blocks, generate_world(8).blocks)
    x, y, z = (int(np.floor(c)) for c in world.spawn)
    assert world.spawn[1] == y  # feet exactly on the block top
    assert world.block(x, y - 1, z) not in (AIR, WATER)
    assert world.block(x, y, z) == AIR and world.block(x, y + 1, z) == AIR
    kinds = set(np.unique(world.blocks).tolist())
    assert {GRASS, STONE, WATER}.issubset(kinds)


def test_replay_is_deterministic():
    actions = scripted_actions(3, 25)
    frames = replay(3, actions, SMALL)
    assert frames.shape == (25, SMALL[1], SMALL[0], 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, replay(3, actions, SMALL))
    assert len({frame.tobytes() for frame in frames}) > 10  # the view actually changes
    assert not np.array_equal(frames, replay(4, actions, SMALL))


def test_game_matches_replay_and_resumes_from_a_saved_state():
    actions = scripted_actions(5, 16)
    game = Game(5, SMALL)
    frames = [game.frame()] + [game.step(a) for a in actions[:8]]
    resumed = Game(5, SMALL, start=json.loads(json.dumps(game.player.state())))
    frames += [resumed.step(a) for a in actions[8:15]]  # the last action's effect is not shown
    assert np.array_equal(np.stack(frames), replay(5, actions, SMALL))


# ---------------------------------------------------------------- physics


def test_standing_still_stays_on_the_ground():
    player = standing_player(hand_built_world())
    positions = run(player, [action()] * 20)
    assert np.all(positions[:, 1] == GROUND + 1) and player.on_ground


def test_jump_rises_above_one_block_then_lands():
    player = standing_player(hand_built_world())
    heights = run(player, [action(jump=1)] + [action()] * 12)[:, 1] - (GROUND + 1)
    top = int(np.argmax(heights))
    assert 1.0 < heights[top] < 1.4
    assert np.all(np.diff(heights[: top + 1]) > 0)
    assert heights[-1] == 0 and player.on_ground


def test_jump_only_from_the_ground():
    player = standing_player(hand_built_world())
    heights = run(player, [action(jump=1)] * 3)[:, 1]
    assert np.all(np.diff(heights) > 0)  # holding jump in the air does not jump again mid-air
    assert heights[-1] < GROUND + 1 + 1.4


@pytest.mark.parametrize(
    ("yaw", "keys", "direction"),
    [
        (0, {"forward": 1}, (0, 1)),  # yaw 0 faces south, +z
        (90, {"forward": 1}, (-1, 0)),  # turned right to face west, -x
        (180, {"forward": 1}, (0, -1)),
        (0, {"back": 1}, (0, -1)),
        (0, {"right": 1}, (-1, 0)),  # facing +z, the right hand points to -x
        (0, {"left": 1}, (1, 0)),
    ],
)
def test_movement_follows_the_facing_direction(yaw, keys, direction):
    player = standing_player(hand_built_world(), yaw=yaw)
    start = np.array([player.x, player.z])
    run(player, [action(**keys)] * 10)
    moved = np.array([player.x, player.z]) - start
    assert np.linalg.norm(moved) > 2.0
    assert np.dot(moved / np.linalg.norm(moved), direction) > 0.999


def test_sprint_is_faster_and_sneak_slower_than_walking():
    def distance(**keys):
        player = standing_player(hand_built_world())
        run(player, [action(forward=1, **keys)] * 20)
        return player.z - 64.5

    walk, sprint, sneak = distance(), distance(sprint=1), distance(sneak=1)
    assert sneak < 0.5 * walk < walk < sprint
    assert 7 < walk < 10  # about 4.3 blocks per second for 2 seconds at 10 frames per second


def test_camera_turns_and_pitch_is_clamped():
    player = standing_player(hand_built_world())
    run(player, [action(pitch=12, yaw=-8)] * 10)
    assert player.pitch == 90 and player.yaw == pytest.approx(280)
    run(player, [action(pitch=-12)] * 20)
    assert player.pitch == -90


def test_a_wall_stops_the_player_and_a_one_block_step_can_be_jumped():
    def wall(height):
        def edit(blocks):
            blocks[:, GROUND + 1 : GROUND + 1 + height, 68] = STONE

        return hand_built_world(edit)

    player = standing_player(wall(2))
    run(player, [action(forward=1, jump=1)] * 30)
    assert player.z == pytest.approx(68 - 0.3, abs=1e-6)  # touching the wall face
    assert not player.overlaps_solid(player.x, player.y, player.z)

    player = standing_player(wall(1))
    run(player, [action(forward=1, jump=1)] * 10 + [action()] * 10)
    assert player.z > 68 and player.y == GROUND + 2 and player.on_ground  # up on the step


def test_player_floats_with_its_head_above_water_and_swims_ashore():
    def pool(blocks):  # its water surface is level with the ground around it, like a beach
        blocks[50:80, 4 : GROUND + 1, 50:80] = WATER

    player = standing_player(hand_built_world(pool))
    player.y = GROUND + 4.0
    run(player, [action()] * 40)
    surface = GROUND + 1
    assert player.y < surface < player.eye[1]
    run(player, [action(forward=1, jump=1)] * 80 + [action()] * 10)
    assert player.z > 80 and player.y == GROUND + 1 and player.on_ground


def test_scripted_play_never_ends_up_inside_a_block_and_stays_mostly_on_land():
    for seed in (1, 8):
        world = generate_world(seed)
        player = Player.spawn(world)
        swimming = 0
        for a in scripted_actions(seed, 400):
            player.step(a)
            assert not player.overlaps_solid(player.x, player.y, player.z)
            assert 0 <= player.x < WORLD_SIZE and 0 <= player.z < WORLD_SIZE
            swimming += player.submerged_depth() > 0
        assert swimming < 40


# ---------------------------------------------------------------- rendering


def horizontal_shift(before: np.ndarray, after: np.ndarray, max_shift: int = 12) -> int:
    """s such that after[:, c] best matches before[:, c + s] (s > 0: content moved left)."""
    before, after = before.astype(float), after.astype(float)
    width = before.shape[1]

    def error(s):
        if s >= 0:
            return np.mean((after[:, : width - s] - before[:, s:]) ** 2)
        return np.mean((after[:, -s:] - before[:, : width + s]) ** 2)

    return min(range(-max_shift, max_shift + 1), key=error)


def test_turning_right_moves_the_picture_left_and_looking_down_moves_it_up():
    world = generate_world(1)
    eye = Player.spawn(world).eye
    for yaw in (0, 90, 180, 270):
        before = render(world, eye, yaw, 0, (96, 64))
        assert horizontal_shift(before, render(world, eye, yaw + 5, 0, (96, 64))) > 2
        assert horizontal_shift(before, render(world, eye, yaw - 5, 0, (96, 64))) < -2
        down = render(world, eye, yaw, 5, (96, 64))
        vertical = horizontal_shift(before.transpose(1, 0, 2), down.transpose(1, 0, 2))
        assert vertical > 2


def test_the_world_wraps_around_without_a_seam():
    world = generate_world(1)
    for x in (0.3, 127.7):  # looking across the x = 0 seam, from either side
        yaw = 90 if x < 64 else 270
        eye = (x, world.highest_block + 1.5, 64.5)
        seen = render(world, eye, yaw, 30, (48, 32))
        assert np.array_equal(seen, render(world, (x + WORLD_SIZE, *eye[1:]), yaw, 30, (48, 32)))
        assert np.array_equal(seen, render(world, (x - WORLD_SIZE, *eye[1:]), yaw, 30, (48, 32)))


def test_render_sizes_and_supersampling():
    world = generate_world(2)
    eye = Player.spawn(world).eye
    plain = render(world, eye, 30, 10, (64, 48), supersample=1)
    smooth = render(world, eye, 30, 10, (64, 48))  # the default: 2 x 2 rays a pixel
    assert plain.shape == smooth.shape == (48, 64, 3) and smooth.dtype == np.uint8
    assert 0 < np.abs(plain.astype(int) - smooth.astype(int)).mean() < 20
    # Anti-aliasing smooths: neighbouring pixels differ less than in the one-ray image.
    def roughness(image):
        return np.abs(np.diff(image.astype(int), axis=1)).mean()

    assert roughness(smooth) < roughness(plain)
    # Each pixel is the mean of its 2 x 2 rays: the one-ray image at twice the size, averaged.
    double = render(world, eye, 30, 10, (128, 96), supersample=1).astype(float)
    pooled = double.reshape(48, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(pooled - smooth).max() <= 1
    assert render(world, eye, 30, 10, (96, 64)).shape == (64, 96, 3)
    sky = render(world, eye, 0, -90, (16, 12))  # straight up: sky (or cloud) colours
    assert sky[..., 2].min() > 200


# ---------------------------------------------------------------- recording


def test_vpt_jsonl_round_trip():
    original = action(forward=1, left=1, jump=1, sprint=1, pitch=-3.0, yaw=12.0)
    original.update({"attack": 1, "hotbar.4": 1, "ESC": 1, "swapHands": 1})
    record = json.loads(json.dumps(action_to_vpt(original)))
    assert set(record["keyboard"]["keys"]) == {
        "key.keyboard.w", "key.keyboard.a", "key.keyboard.space", "key.keyboard.left.control",
        "key.keyboard.4", "key.keyboard.escape", "key.keyboard.f",
    }  # fmt: skip
    assert record["mouse"]["dx"] == pytest.approx(12.0 * 2400 / 360)
    assert record["mouse"]["dy"] == pytest.approx(-3.0 * 2400 / 360)
    assert record["mouse"]["buttons"] == [0]
    assert vpt_to_action(record) == original
    assert vpt_to_action(action_to_vpt({"camera": [0.123, 1.5]}))["camera"] == [0.123, 1.5]


def test_record_episode_writes_mp4_jsonl_and_sidecar_that_replay(tmp_path):
    actions = scripted_actions(6, 12, policy_seed=60)
    stem = tmp_path / "episode.006"  # a dot in the name must not lose the stem
    frames = record_episode(6, actions, stem, size=(64, 48))

    with av.open(str(tmp_path / "episode.006.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (12, 48, 64, 3)
    # yuv420p halves the colour resolution, which alone costs a few levels on 64x48 frames;
    # the H.264 compression on top of that must cost almost nothing.
    subsampled = np.stack(
        [
            av.VideoFrame.from_ndarray(f, format="rgb24")
            .reformat(format="yuv420p")
            .to_ndarray(format="rgb24")
            for f in frames
        ]
    )
    subsampling_error = np.abs(subsampled.astype(int) - frames).mean()
    assert np.abs(decoded.astype(int) - frames).mean() < subsampling_error + 1.0

    sidecar, recorded_actions = read_recording(stem)
    assert sidecar["seed"] == 6 and sidecar["num_frames"] == 12 and sidecar["size"] == [64, 48]
    assert recorded_actions == actions
    lines = (tmp_path / "episode.006.jsonl").read_text().splitlines()
    assert len(lines) == 12 and set(json.loads(lines[0])) == {"keyboard", "mouse"}
    assert np.array_equal(replay_recording(stem), frames)
    # The project's clip reader sees the same actions.
    for read, original in zip(read_actions(tmp_path / "episode.006.jsonl"), actions, strict=True):
        assert read["camera"] == pytest.approx(original["camera"])
        assert {**read, "camera": None} == {**original, "camera": None}

    with pytest.raises(ValueError):
        record_episode(6, actions, tmp_path / "odd", size=(63, 48))


# ---------------------------------------------------------------- policy


def test_scripted_policy_is_deterministic_and_balanced():
    assert scripted_actions(4, 50) == scripted_actions(4, 50)
    assert scripted_actions(4, 50) != scripted_actions(4, 50, policy_seed=5)
    actions = scripted_actions(1, 700) + scripted_actions(2, 700)
    stats = action_statistics(actions)
    assert stats["turn_left"] > 0.15 and stats["turn_right"] > 0.15
    assert abs(stats["turn_left"] - stats["turn_right"]) < 0.08
    assert stats["look_up"] > 0.03 and stats["look_down"] > 0.03
    assert stats["forward"] > 0.4 and stats["jump"] > 0.02 and stats["sprint"] > 0.05
    assert stats["left"] + stats["right"] > 0.01
    assert 0.01 < stats["standing_still"] < 0.2
    allowed = {0.0} | set(CAMERA_STEPS) | {-step for step in CAMERA_STEPS}
    assert {c for a in actions for c in a["camera"]} <= allowed
    conflicts = [("forward", "back"), ("left", "right"), ("jump", "sneak"), ("sprint", "sneak")]
    assert not any(a[k1] and a[k2] for a in actions for k1, k2 in conflicts)


def test_camera_steps_are_lossless_for_the_action_codec():
    bins = [quantize_camera(step) for step in CAMERA_STEPS]
    assert len(set(bins)) == len(bins)  # every step is its own token
    for step, index in zip(CAMERA_STEPS, bins, strict=True):
        assert camera_bin_center(index) == pytest.approx(step, abs=1e-3)
        assert quantize_camera(-step) == 20 - index
