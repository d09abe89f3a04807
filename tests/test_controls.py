"""Control measures (mineworld.controls), whether a rollout keeps the scene (contrast and
colour) and self-fed training."""

import cv2
import numpy as np
import pytest
import torch

from mineworld import controls
from mineworld.controls import (
    FROZEN,
    VISIBLE,
    WALL_FRAMES,
    WALL_SCORED,
    WALL_TURN_FRAMES,
    mean_abs,
    score_control,
    summarise,
    wall_starts,
)
from mineworld.decoding import Sampling
from mineworld.metrics import colour_ratio, colourfulness, contrast_ratio, scene_ratio
from mineworld.model import Transformer
from mineworld.train import feed_own_predictions, make_batch, model_config
from tests.test_metrics import textured

FRAMES = 6


def panning(shift_per_frame: int, seed: int = 0) -> np.ndarray:
    """Frames of a picture sliding right by ``shift_per_frame`` pixels a frame (the inner part
    of a wider picture, so nothing wraps in)."""
    wide = textured(seed, (48, 64 + 2 * FRAMES * abs(shift_per_frame) + 16))
    start = 8 + FRAMES * abs(shift_per_frame)
    return np.stack([wide[:, start - k * shift_per_frame:][:, :64] for k in range(FRAMES)])


def test_a_rollout_that_moves_as_the_truth_is_followed_and_never_frozen():
    true, true_still = panning(2), np.repeat(panning(2)[:1], FRAMES, 0)
    result = score_control(true.copy(), true_still.copy(), true, true_still, "dx")
    assert result["visible"] and result["closer"] and result["distinct"]
    assert result["moving_frames"] == FRAMES - 1
    assert result["matched_frames"] == FRAMES - 1 and result["frozen_frames"] == 0


def test_a_frozen_rollout_is_neither_followed_nor_moving():
    true, true_still = panning(2), np.repeat(panning(2)[:1], FRAMES, 0)
    frozen = np.repeat(true[:1], FRAMES, 0)
    result = score_control(frozen, frozen.copy(), true, true_still, "dx")
    assert result["visible"] and not result["distinct"]
    assert result["matched_frames"] == 0 and result["frozen_frames"] == FRAMES - 1
    summary = summarise([result])
    assert summary == {"starts": 1, "cases": 1, "followed": 0.0, "moving_frames": FRAMES - 1,
                       "moves_like_truth": 0.0, "frozen": 1.0}


def test_motion_the_wrong_way_does_not_count():
    true, true_still = panning(2), np.repeat(panning(2)[:1], FRAMES, 0)
    result = score_control(panning(-2), true_still, true, true_still, "dx")
    assert result["moving_frames"] == FRAMES - 1 and result["matched_frames"] == 0


def test_a_control_that_does_not_move_the_truth_is_no_case():
    still = np.repeat(panning(2)[:1], FRAMES, 0)
    summary = summarise([score_control(still, still, still, still, "zoom")])
    assert summary["cases"] == 0 and summary["moving_frames"] == 0
    assert np.isnan(summary["followed"]) and np.isnan(summary["frozen"])


def test_sneaking_drawn_as_walking_is_not_drawn_at_its_pace(tmp_path):
    walk, sneak, sprint = panning(3), panning(1), panning(5)
    still = np.repeat(walk[:1], FRAMES, 0)
    truths = dict.fromkeys(controls.CONTROLS, walk) | {"sneak": sneak, "sprint": sprint}

    def scored(drawn: dict, strip_path=None) -> dict:
        rolled = {name: (drawn.get(name, truths[name]), truths[name]) for name in truths}
        return controls.score_controls([(still, still, rolled)], strip_path)

    own_pace = scored({}, tmp_path / "strip.png")
    assert own_pace["sneak"]["pace"] == {"against": "forward", "cases": 1, "drawn": 1.0}
    rows = len(controls.CONTROLS)  # each control's truth above its rollout, twice the size
    assert cv2.imread(str(tmp_path / "strip.png")).shape[0] == rows * 2 * 2 * 48 + (rows - 1) * 4
    as_walking = scored({"sneak": walk, "sprint": walk})
    assert as_walking["sneak"]["pace"]["drawn"] == as_walking["sprint"]["pace"]["drawn"] == 0


def test_thresholds_are_levels_a_player_sees():
    assert 0 < FROZEN < VISIBLE <= 4


def test_contrast_ratio_is_one_for_the_truth_and_zero_for_flat_colour():
    true = panning(1)
    assert contrast_ratio(true, true) == pytest.approx(np.ones(FRAMES))
    flat = np.full_like(true, 128)
    assert contrast_ratio(flat, true) == pytest.approx(np.zeros(FRAMES))


def sky_over_grass(frames: int = 3) -> np.ndarray:
    """Blue sky over green grass over brown dirt, a little different each frame."""
    picture = np.zeros((frames, 48, 64, 3), np.uint8)
    picture[:, :20] = (110, 160, 240)
    picture[:, 20:34] = (70, 150, 60)
    picture[:, 34:] = (120, 85, 50)
    picture[:, :, ::8] += np.arange(frames, dtype=np.uint8)[:, None, None, None]
    return picture


def test_colourfulness_is_zero_for_grey_and_white_and_scales_with_a_haze():
    true = sky_over_grass()
    assert colourfulness(np.full((48, 64, 3), 255, np.uint8)) == 0
    assert colour_ratio(true, true) == pytest.approx(np.ones(3))
    # 70 % of the way to white: every opponent channel, so the colourfulness, keeps 0.3
    haze = (0.3 * true.astype(float) + 0.7 * 255).round().astype(np.uint8)
    assert colour_ratio(haze, true) == pytest.approx(np.full(3, 0.3), abs=0.01)


def test_a_grey_picture_keeps_its_contrast_but_not_the_scene():
    true = sky_over_grass()
    grey = np.repeat(cv2.cvtColor(true.reshape(-1, 64, 3), cv2.COLOR_RGB2GRAY)
                     .reshape(3, 48, 64, 1), 3, -1)
    assert contrast_ratio(grey, true) == pytest.approx(np.ones(3), abs=0.01)
    assert scene_ratio(grey, true) == pytest.approx(np.zeros(3))
    assert scene_ratio(true, true) == pytest.approx(np.ones(3))


def tiny_model_and_batch():
    """A random tiny model, and a batch of 3 windows of 4 frames of random tokens; the mask of
    the input positions whose token a self-fed frame may replace (image tokens after the first
    frame)."""
    config = model_config(16, (2, 3), smoke=True)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    episodes = [(torch.randint(0, 16, (10, 6)), torch.randint(16, 80, (10, 11))) for _ in range(2)]
    tokens, targets = make_batch(episodes, 4, 3, np.random.default_rng(0))
    image = targets[:, :-1] != -100  # input position j + 1 holds an image token
    image[:, :config.tokens_per_frame - 1] = False  # the first frame stays real
    return model, tokens, targets, image


def test_self_feeding_replaces_image_tokens_with_the_models_own_greedy_predictions():
    model, tokens, targets, image = tiny_model_and_batch()
    rng = np.random.default_rng(0)
    assert torch.equal(feed_own_predictions(model, tokens, targets, 0.0, rng), tokens)

    fed = feed_own_predictions(model, tokens, targets, 1.0, rng)
    with torch.no_grad():
        predicted = model(tokens)[..., :model.config.codebook_size].argmax(-1)
    assert torch.equal(fed[:, 1:][image], predicted[:, :-1][image])
    assert torch.equal(fed[:, 1:][~image], tokens[:, 1:][~image])  # actions, first frame
    assert torch.equal(fed[:, 0], tokens[:, 0])


def test_a_second_self_feeding_pass_predicts_from_the_first_passes_frames():
    model, tokens, targets, image = tiny_model_and_batch()
    first = feed_own_predictions(model, tokens, targets, 1.0, np.random.default_rng(1))
    second = feed_own_predictions(model, tokens, targets, 1.0, np.random.default_rng(1),
                                  passes=2)
    with torch.no_grad():
        again = model(first)[..., :model.config.codebook_size].argmax(-1)
    assert torch.equal(second[:, 1:][image], again[:, :-1][image])
    assert torch.equal(second[:, 1:][~image], tokens[:, 1:][~image])
    assert not torch.equal(second, first)  # made from the model's frames, not the true ones


def test_sampled_self_feeding_draws_among_the_likeliest_codes_and_top_1_is_greedy():
    model, tokens, targets, image = tiny_model_and_batch()
    greedy = feed_own_predictions(model, tokens, targets, 1.0, np.random.default_rng(1))
    top_1 = feed_own_predictions(model, tokens, targets, 1.0, np.random.default_rng(1),
                                 sampling=Sampling(0.7, top_k=1))
    assert torch.equal(top_1, greedy)

    fed = feed_own_predictions(model, tokens, targets, 1.0, np.random.default_rng(1),
                               sampling=Sampling(5.0, top_k=3))
    with torch.no_grad():
        likeliest = model(tokens)[..., :model.config.codebook_size].topk(3, dim=-1).indices
    drawn = fed[:, 1:][image]
    assert (likeliest[:, :-1][image] == drawn[:, None]).any(-1).all()
    assert not torch.equal(drawn, greedy[:, 1:][image])  # a hot draw is not the likeliest


def test_a_truth_starts_from_the_context_and_equals_replaying_the_whole_play():
    from mineworld.controls import CONTROLS, ROLLOUT, START_PLAY, starts, truth
    from mineworld.train import FRAME_SIZE
    from mineworld.world import replay, scripted_actions

    start = starts(1, 2)[0]
    lead = scripted_actions(start.seed, START_PLAY + 2)[: START_PLAY + 1]
    held = CONTROLS["forward"][0]
    whole = replay(start.seed, lead + [held] * (ROLLOUT + 1), FRAME_SIZE)[len(lead) + 1 :]
    assert np.array_equal(truth(start, held), whole)


def test_walking_into_a_wall_starts_moving_ends_pressed_against_it_then_turns_away():
    [(seed, context, true, turned)] = wall_starts(1)
    assert (len(context), len(true), len(turned)) == (4, WALL_FRAMES, WALL_TURN_FRAMES)
    assert mean_abs(context[0], true[0]) >= VISIBLE  # walking towards it
    assert mean_abs(true[-WALL_SCORED], true[-1]) < FROZEN  # stopped by it
    assert mean_abs(true[-1], turned[0]) >= VISIBLE  # turning from the first frame on
    # Half a turn: the wall that filled the view is behind the player by the end.
    assert mean_abs(true[-1], turned[-1]) > mean_abs(true[-1], turned[0])
    assert seed == wall_starts(1)[0][0]  # the same start every time


def test_the_wall_measure_scores_the_walk_and_the_turn_against_the_world():
    """The rollout's frames line up with the world's: the walk's last frames and the turn's,
    the picture held still as the turn's baseline."""
    from mineworld.controls import walk_into_walls
    from mineworld.embedded import load_embedded
    from mineworld.metrics import psnr

    model, tokenizer = load_embedded()
    found = walk_into_walls(model, tokenizer, 1, Sampling())
    [(_seed, _context, walked, turned)] = wall_starts(1)
    assert found["starts"] == 1 and len(found["per_start_turn"]) == 1
    assert found["turn_still_psnr"] == psnr(np.repeat(walked[-1:], len(turned), 0), turned)
    assert 10 < found["psnr"] < 40 and 5 < found["turn_psnr"] < 40


@pytest.mark.parametrize("flags, named", [
    (["--overuse-penalty", "-1"], "--overuse-penalty: must be a number in [0, 10], got -1"),
    (["--repeat-penalty", "0.5"], "--repeat-penalty: must be a number in [1, 1000000], got 0.5"),
    (["--temperature", "0", "-0.7"], "--temperature: must be a number in [0, 100], got -0.7"),
    (["--top-k", "0"], "--top-k: must be a whole number >= 1, got 0"),
    (["--walls", "0"], "--walls: must be a whole number >= 1, got 0"),
])
def test_bad_flags_are_named_before_the_model_loads(flags, named, capsys, monkeypatch):
    monkeypatch.setattr("mineworld.embedded.load_embedded", None)  # never reached
    with pytest.raises(SystemExit) as stopped:
        controls.main(flags)
    assert stopped.value.code == 2 and named in capsys.readouterr().err
