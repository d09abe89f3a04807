"""The embedded model: the training pipeline's smoke run, the tokenizer, and the shipped assets."""

import json
import os
import re

import numpy as np
import pytest
import torch

from mineworld.controls import CONTROLS
from mineworld.decoding import Sampling
from mineworld.embedded import MODEL_DIR, demo_scene, load_embedded, validation_clips
from mineworld.machine import cpu_model
from mineworld.model import Transformer
from mineworld.session import Session
from mineworld.tokenizers.embedded import EmbeddedTokenizer, FSQAutoencoder, TokenizerConfig
from mineworld.train import (
    SPEED_FIELDS,
    TRAIN_SEED_BASE,
    change_weights,
    digit_loss,
    generate_data,
    main,
    make_batch,
    model_config,
    parse_args,
    play_digest,
    psnr,
    views_off_by,
    widen_mlp,
    window_sampler,
)

SHIPPED = (MODEL_DIR / "model.safetensors").is_file()


def test_smoke_run_gives_a_loadable_model(tmp_path):
    generate_data([TRAIN_SEED_BASE], 24, tmp_path / "data", minutes=5)  # one world cached
    main(["--smoke", "--out", str(tmp_path)])
    model, tokenizer = load_embedded(model_dir=tmp_path / "model")
    assert (tokenizer.grid, tokenizer.codebook_size) == (
        (model.config.image_rows, model.config.image_cols), model.config.codebook_size)
    assert (tmp_path / "MODEL_CARD.md").is_file() and (tmp_path / "strip.png").is_file()
    assert validation_clips(tmp_path / "validation")
    assert (tmp_path / "controls.png").is_file()
    evaluation = json.loads((tmp_path / "training_log.json").read_text())["evaluation"]
    assert set(evaluation["controls"]["greedy"]) == set(CONTROLS)
    assert set(evaluation["structure"]["greedy"]) == {"clip_0"}
    # One controls table, each measure for greedy, then as shipped.
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "followed (greedy / as shipped (greedy, overuse penalty 1))" in card
    assert re.search(r"\| forward \| [01] of 1 \| (\d+%|nan%) / (\d+%|nan%) \|", card), card
    assert json.loads((tmp_path / "training_log.json").read_text())["cached_episodes"] == 1
    assert "1 of the worlds were read from an earlier run's cache" in (
        tmp_path / "MODEL_CARD.md").read_text()

    # --resume trains the same model and the tokenizer's decoder further, here with a
    # refinement added; the encoder, and so the codes, stay.
    before = model.state_dict()
    tokenizer_before = tokenizer.model.state_dict()
    main(["--smoke", "--resume", "--out", str(tmp_path), "--lr", "1e-2", "--decoder-lr", "1e-2",
          "--bf16", "--refine", "4", "1", "--change-weight", "3", "--rare-controls", "2",
          "--self-feed-sampled", "--self-feed-passes", "2", "--mlp-width", "96"])
    resumed, resumed_tokenizer = load_embedded(model_dir=tmp_path / "model")
    assert resumed.config.intermediate_size == 96  # written to its config, loaded back
    config = resumed_tokenizer.config
    assert (config.refine_channels, config.refine_blocks) == (4, 1)
    assert any(not torch.equal(before[k], v) for k, v in resumed.state_dict().items())
    after = resumed_tokenizer.model.state_dict()
    assert all(torch.equal(tokenizer_before[k], v) for k, v in after.items()
               if k.startswith("encoder."))
    assert any(not torch.equal(tokenizer_before[k], v) for k, v in after.items()
               if k in tokenizer_before and k.startswith("decoder."))
    assert "a full-size refinement (4 wide, 1 residual blocks)" in (
        tmp_path / "MODEL_CARD.md").read_text()
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["world_model_steps"] == 6 and log["resumed"] == [
        {"steps": 3, "peak_lr": 0.01, "self_feed": 0.5, "self_feed_sampled": True,
         "self_feed_passes": 2, "change_weight": 3.0, "rare_controls": 2.0,
         "play": play_digest(), "mlp_width": 96}]
    assert log["tokenizer_steps"] == 3 and log["decoder_steps"] == 3
    assert log["precision"] == "bf16 autocast"
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert f"Decoding speed, measured on {cpu_model()} ({os.cpu_count()} cores), load" in card
    assert "| greedy: sneak and sprint drawn at their pace against forward in >= 80 %" in card
    assert "Drawn at its pace (greedy / as shipped (greedy, overuse penalty 1)): the" in card
    # Action following: every script's rollout is closest to exactly one truth (1 world here).
    closest, following = (log["evaluation"][k] for k in (
        "action_following_closest", "action_following_per_probe"))
    assert all(sum(row.values()) == 1 for row in closest.values())
    assert following == {probe: row[probe] for probe, row in closest.items()}
    assert ("6 world-model steps of 4 windows (resumed runs: MLP widened to 96 units, then 3 at "
            "peak LR 0.01, 50% of the frames self-fed (sampled) in 2 passes, codes that changed "
            "weighted 3x, windows holding back, strafe, jump or sneak 3x as likely)") in (
        tmp_path / "MODEL_CARD.md").read_text()

    # Re-measured on a busy host: everything but the speed, which the card says was kept.
    speeds = {name: log["evaluation"][name] for name in SPEED_FIELDS}
    main(["--smoke", "--evaluate-only", "--keep-speed", "--out", str(tmp_path)])
    kept = json.loads((tmp_path / "training_log.json").read_text())["evaluation"]
    assert {name: kept[name] for name in SPEED_FIELDS} == speeds and kept["speed_kept"]
    assert ("kept from an earlier evaluation of the same weights (`--evaluate-only "
            "--keep-speed`), which decoded with greedy, overuse penalty 1.") in (
        tmp_path / "MODEL_CARD.md").read_text()
    # Then the speed alone, on an idle host: every other figure kept, the speed new again.
    strip = (tmp_path / "strip.png").read_bytes()
    main(["--smoke", "--evaluate-only", "--speed-only", "--out", str(tmp_path)])
    measured = json.loads((tmp_path / "training_log.json").read_text())["evaluation"]
    assert "speed_kept" not in measured and measured["fps_diagonal"] != speeds["fps_diagonal"]
    quality = set(kept) - set(SPEED_FIELDS) - {"speed_kept"}
    assert quality and {name: measured[name] for name in quality} == {
        name: kept[name] for name in quality}
    assert (tmp_path / "strip.png").read_bytes() == strip
    assert "kept from an earlier evaluation" not in (tmp_path / "MODEL_CARD.md").read_text()
    for flags in (["--keep-speed"], ["--speed-only"], ["--evaluate-only", "--speed-only",
                                                       "--keep-speed"]):
        with pytest.raises(SystemExit):  # training changes the weights; or both asked
            parse_args(flags)
    with pytest.raises(SystemExit):
        parse_args(["--mlp-width", "96"])  # widens a trained model


def test_a_widened_mlp_computes_what_the_model_did_and_trains_its_new_units():
    config = model_config(1000, (2, 3), smoke=True)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    wide = widen_mlp(model, 96)
    assert wide.config.intermediate_size == 96 and wide.model.layers[0].mlp.down_weight.shape == (
        96, config.hidden_size)
    tokens = torch.randint(0, config.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(wide(tokens), model(tokens))
    # The new units' output weights start at zero but are not stuck there.
    wide.train()(tokens).logsumexp(-1).sum().backward()
    assert wide.model.layers[0].mlp.down_weight.grad[64:].abs().sum() > 0
    with pytest.raises(ValueError, match="--mlp-width 32 is narrower than the model's MLP"):
        widen_mlp(model, 32)


def test_change_weights_weigh_the_codes_that_differ_from_the_frame_before():
    # Two frames of 3 tokens (2 image + 1 action, whose target is -100), as make_batch shifts them.
    targets = torch.tensor([[5, 6, -100, 5, 7, -100, 8, 7]])
    assert change_weights(targets, 3, 4.0).tolist() == [[1, 1, 0, 1, 4, 0, 4, 1]]
    assert change_weights(targets, 3, 1.0).tolist() == [[1, 1, 0, 1, 1, 0, 1, 1]]


def test_digit_loss_sums_the_odds_of_the_codes_sharing_each_digit():
    levels = (4, 3, 2)  # 24 codes; code id = d0 + 4 * d1 + 12 * d2
    logits = torch.randn(2, 3, 30)  # 6 more tokens (actions) that the image odds leave out
    targets = torch.tensor([[0, 23, -100], [7, 13, 18]])
    odds = logits[..., :24].softmax(-1)
    digits = [(torch.arange(24) // place) % level for place, level in ((1, 4), (4, 3), (12, 2))]
    expected = torch.zeros(2, 3)
    for b, j in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]:
        code = int(targets[b, j])
        expected[b, j] = -sum(odds[b, j][d == d[code]].sum().log() for d in digits)
    assert torch.allclose(digit_loss(logits, targets, levels), expected, atol=1e-5)
    # Sure of the true code: nothing to pay on any digit.
    sure = torch.full((1, 1, 24), -30.0)
    sure[0, 0, 17] = 30.0
    assert digit_loss(sure, torch.tensor([[17]]), levels).item() == pytest.approx(0, abs=1e-6)


def test_a_near_miss_is_the_true_view_with_the_camera_moved():
    from mineworld.world import replay, scripted_actions

    actions = scripted_actions(TRAIN_SEED_BASE, 6)
    true_view = replay(TRAIN_SEED_BASE, actions)[-1]  # after the first five actions
    same, turned, turned_more, moved = views_off_by(
        TRAIN_SEED_BASE, actions[:5], [(0, 0), (1, 0), (5, 0), (0, 0.1)])
    assert np.array_equal(same, true_view)
    assert not np.array_equal(moved, true_view)
    assert 30 > psnr(turned, true_view) > psnr(turned_more, true_view)


def test_windows_holding_rare_controls_are_drawn_more_often(tmp_path):
    # One episode of 6 frames and the 6 actions after each: back held after the 2nd and 3rd,
    # jump after the 5th; the action after the last frame drives no frame of the episode.
    held = [{}, {"back": 1}, {"back": 1, "forward": 1}, {"forward": 1}, {"jump": 1}, {"left": 1}]
    (tmp_path / "ep.json").write_text(json.dumps(held))
    stem = str(tmp_path / "ep")
    assert window_sampler([stem], 3, 0.0) is None
    # Windows of 3 frames start at 0..3, each driven by 2 actions: shares 1/2, 1, 1/2, 1/2.
    assert window_sampler([stem], 3, 2.0).tolist() == [2, 5, 7, 9]
    # Drawn in those odds: window 1 (frames 1-3) about 3 times in 9.
    ids = torch.arange(6)[:, None]
    episodes = [(ids, torch.zeros(6, 1, dtype=torch.long))]
    rng = np.random.default_rng(0)
    firsts = [int(make_batch(episodes, 3, 1, rng, window_sampler([stem], 3, 2.0))[0][0, 0])
              for _ in range(900)]
    assert np.bincount(firsts, minlength=4)[:4] == pytest.approx([200, 300, 200, 200], abs=45)


def test_data_generation_tells_rendered_worlds_from_cached_ones(tmp_path):
    stems, rendered = generate_data([1, 2], 2, tmp_path, minutes=5)
    assert rendered == 2 and [np.load(f"{s}.npy").shape[0] for s in stems] == [2, 2]
    assert generate_data([1, 2, 3], 2, tmp_path, minutes=5)[1] == 1  # only world 3 is new
    # A spent budget stops rendering, not reading: every cached world, then nothing new.
    stems, rendered = generate_data([1, 2, 3, 4], 2, tmp_path, minutes=0)
    assert (len(stems), rendered) == (3, 0) and not (tmp_path / "ep_4.npy").exists()


def test_tokenizer_round_trips_shapes(tmp_path):
    config = TokenizerConfig(channels=16)
    tokenizer = EmbeddedTokenizer(config)
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    ids = tokenizer.encode(frames)
    assert ids.shape == (3, 6, 16) and int(ids.min()) >= 0 and int(ids.max()) < 1000
    assert tokenizer.decode(ids).shape == frames.shape
    # FSQ ids <-> codes is a bijection on the grid of levels.
    every = torch.arange(config.codebook_size).view(1, 1, -1)
    assert torch.equal(tokenizer.model.fsq.codes_to_ids(tokenizer.model.fsq.ids_to_codes(every)),
                       every)
    tokenizer.save(tmp_path)
    loaded = EmbeddedTokenizer.load(tmp_path / "tokenizer.json")
    assert torch.equal(loaded.encode(frames), ids)


def test_a_new_refinement_leaves_a_trained_decoder_as_it_was():
    plain = FSQAutoencoder(TokenizerConfig(channels=16)).eval()
    refined = FSQAutoencoder(TokenizerConfig(channels=16, refine_channels=8)).eval()
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("decoder.") for k in missing)
    images = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(refined(images), plain(images))


@pytest.mark.skipif(not SHIPPED, reason="no embedded model in assets/ yet")
def test_shipped_model_plays_and_matches_its_card():
    model, tokenizer = load_embedded()
    frames, actions = demo_scene()
    session = Session(model, tokenizer, reference_frames=4, schedule="diagonal")
    session.start(frames[:4], actions[:3])
    frame, stats = session.step(actions[3])
    assert frame.shape == (*tokenizer.frame_size[::-1], 3) and stats["frame"] == 1
    card = (MODEL_DIR.parent / "MODEL_CARD.md").read_text()
    # The card was measured with the decoding the model plays with.
    assert f"its default decoding: {Sampling.model_default(model.config)} (" in card
    claimed = float(re.search(r"first 16 frames of the demo scene \| ([0-9.]+) dB", card).group(1))
    scene = frames[:16]
    # The same frames and weights: only float differences between machines move the figure.
    assert psnr(tokenizer.decode(tokenizer.encode(scene)), scene) >= claimed - 0.5
