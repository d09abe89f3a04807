"""A procedurally generated Minecraft-like world that runs offline on CPU.

It stands in for real Minecraft: seeded voxel terrain (terrain), a numpy ray-marching renderer
(render), Minecraft-like player physics driven by MineRL action dicts (player), episodes that are
replayed, recorded as VPT-style mp4 + jsonl and re-created from those files (episode), and a
scripted player that generates balanced training play (policy).
"""

from mineworld.world.episode import (
    Game,
    action_to_vpt,
    read_recording,
    record_episode,
    replay,
    replay_recording,
    vpt_to_action,
)
from mineworld.world.player import FPS, Player
from mineworld.world.policy import ScriptedPolicy, action_statistics, scripted_actions
from mineworld.world.render import render
from mineworld.world.terrain import World, generate_world

__all__ = [
    "FPS", "Game", "Player", "ScriptedPolicy", "World", "action_statistics", "action_to_vpt",
    "generate_world", "read_recording", "record_episode", "render", "replay", "replay_recording",
    "scripted_actions", "vpt_to_action",
]  # fmt: skip
