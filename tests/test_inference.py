"""inference.py end to end: a tiny random MineWorld checkpoint, two clips, every exit status.

The checkpoint has the published layout (``transformer.*`` and ``tokenizer.model.*`` keys in a
``state_dict`` pickle, a YAML config naming the VQGAN's config.json) at toy size: a 2 x 3 grid of
a 64-code VQGAN that halves 4 x 6 pixel frames, and a 4-frame context, so that two context frames
and three generated ones already use the context up and make the strategies evict.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import inference
from mineworld.config import ModelConfig
from mineworld.embedded import load_embedded
from mineworld.metrics import psnr
from mineworld.model import Transformer
from mineworld.tokenizers.vqgan import VQGAN, VQGANConfig
from mineworld.video import read_video, write_video

ROOT = Path(__file__).resolve().parent.parent
ROWS, COLS, CODES = 2, 3, 64
HEIGHT, WIDTH = 2 * ROWS, 2 * COLS  # two VQGAN blocks: 2x downsampling
CONTEXT_FRAMES = 4
FRAME_TOKENS = ROWS * COLS + 11
DEMO, FRAMES = 2, 3
VPT_LINE = {
    "keyboard": {"keys": ["key.keyboard.w"]},
    "mouse": {"dx": 10.0, "dy": 0.0, "buttons": []},
}


def strict_json(text: str):
    """Parse as a strict parser would: ``Infinity`` and ``NaN`` are not JSON."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_records_write_infinities_as_null():
    record = {"psnr": [30.5, float("inf")], "nested": {"x": float("nan")}, "pair": (1, -1e999)}
    text = json.dumps(inference.finite_or_null(record))
    assert strict_json(text) == {"psnr": [30.5, None], "nested": {"x": None}, "pair": [1, None]}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """(config.yaml, model.ckpt); the YAML names vae/config.json relative to its folder."""
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    numbers = dict(
        vocab_size=CODES + 70, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=CONTEXT_FRAMES * FRAME_TOKENS,
    )
    transformer = Transformer(
        ModelConfig(**numbers, image_rows=ROWS, image_cols=COLS, codebook_size=CODES)
    )
    vae = {
        "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1,
        "latent_channels": 4, "num_vq_embeddings": CODES, "norm_num_groups": 4,
    }
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "VQModel", **vae}))
    vqgan = VQGAN(VQGANConfig.from_dict(vae))
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state.update({f"tokenizer.model.{k}": v for k, v in vqgan.state_dict().items()})
    checkpoint = root / "model.ckpt"
    torch.save({"state_dict": state}, checkpoint)
    config = root / "config.yaml"
    tokenizer = {"config_path": "vae/config.json", "ckpt_path": "vae/not-shipped.ckpt"}
    config.write_text(yaml.safe_dump({"model": {"params": {
        "tokenizer_config": {"target": "vae.VAE", "params": tokenizer},
        "transformer_config": {"target": "transformers.LlamaConfig", "params": numbers},
        "layout": {"image_rows": ROWS, "image_cols": COLS, "codebook_size": CODES},
    }}}))
    return config, checkpoint


def write_clip(folder, name, frames=6, lines=6, seed=0):
    rng = np.random.default_rng(seed)
    write_video(folder / f"{name}.mp4", rng.integers(0, 256, (frames, HEIGHT, WIDTH, 3), np.uint8))
    (folder / f"{name}.jsonl").write_text((json.dumps(VPT_LINE) + "\n") * lines)


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    write_clip(root, "clip_0", seed=0)
    write_clip(root, "clip_1", seed=1)
    return root


def run(model_files, data_root, output, *extra):
    config, checkpoint = model_files
    return inference.main([
        "--data_root", str(data_root), "--output_dir", str(output), "--model_ckpt",
        str(checkpoint), "--config", str(config), "--demo_num", str(DEMO), "--frames",
        str(FRAMES), "--device", "cpu", *extra,
    ])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("inference")]


@pytest.mark.parametrize("extra", [
    [],
    ["--cache-strategy", "streaming", "--start-size", "2", "--recent-size", "20"],
    ["--accelerate-algo", "image_diagd"],
    ["--accelerate-algo", "published-diagonal"],
], ids=["none", "streaming", "image_diagd", "published-diagonal"])
def test_generates_every_clip(model_files, data_root, tmp_path, capsys, extra):
    output = tmp_path / "out"
    assert run(model_files, data_root, output, *extra) == 0
    summaries = capsys.readouterr().out.splitlines()
    for name in ("clip_0", "clip_1"):
        record = strict_json((output / f"{name}.json").read_text())
        assert record["clip"] == name
        assert (record["context_frames"], record["generated_frames"]) == (DEMO, FRAMES)
        assert np.array(record["tokens"]).shape == (FRAMES, ROWS, COLS)
        assert len(record["stats"]) == FRAMES
        assert {"ms_per_frame", "forward_passes", "live_tokens", "bytes_live", "evicted_tokens",
                "reprefills"} <= set(record["stats"][-1])
        assert record["totals"]["frames_per_second"] > 0
        assert record["model"]["vae_weights"].endswith("(tokenizer.model.*)")
        # The clips have 6 frames: the 3 generated ones are scored against frames 2, 3 and 4;
        # these 4 x 6 frames are below SSIM's 7 x 7 window, so only PSNR is given.
        quality = record["quality"]
        assert quality["frames"] == FRAMES and len(quality["psnr"]) == FRAMES
        finite = [value for value in quality["psnr"] if value is not None]  # null: identical
        assert quality["pooled_psnr"] >= min(finite)
        assert "ssim" not in quality
        video = read_video(output / f"{name}.mp4")
        assert video.shape == (DEMO + FRAMES, HEIGHT, WIDTH, 3)
        assert any(line.startswith(f"{name}: {FRAMES} frames") for line in summaries)
    args, last = record["args"], record["stats"][-1]
    if "streaming" in extra:
        assert args["strategy_params"] == {"start_size": 2, "recent_size": 20}
        assert last["evicted_tokens"] > 0 and last["live_tokens"] <= 22
    elif "--accelerate-algo" in extra:
        schedule = {"image_diagd": "diagonal"}.get(extra[-1], extra[-1])
        assert (args["schedule"], args["window"]) == (schedule, 2)  # the config's default
        assert last["forward_passes"] == COLS + (ROWS - 1) * 2
    else:
        # Two context frames and three new ones overflow the 4-frame context once.
        assert last["reprefills"] == 1
        assert last["forward_passes"] == ROWS * COLS
    assert args["sampling"] == {"temperature": 0.0, "top_k": None, "top_p": None,
                                "repeat_penalty": 1.0, "overuse_penalty": 0.0, "guidance": 1.0}


def test_quality_scores_the_generated_frames_against_the_clip(model_files, data_root, tmp_path):
    """The true frames are the clip's frames after the context: a clip whose mp4 shows those
    frames scores the same PSNR as the metrics module on them; one with none has no quality."""
    output = tmp_path / "out"
    write_clip(data_root, "clip_1", frames=DEMO)  # the context only: nothing to score against
    assert run(model_files, data_root, output) == 0
    assert json.loads((output / "clip_1.json").read_text())["quality"] is None
    record = json.loads((output / "clip_0.json").read_text())
    video = read_video(output / "clip_0.mp4")[DEMO:]  # what was generated (mp4-compressed)
    truth = read_video(data_root / "clip_0.mp4")[DEMO : DEMO + FRAMES]
    assert record["quality"]["frames"] == FRAMES
    for i in range(FRAMES):  # the written mp4 is compressed again: close, not equal
        assert record["quality"]["psnr"][i] == pytest.approx(psnr(video[i], truth[i]), abs=3)


def test_greedy_runs_are_deterministic(model_files, data_root, tmp_path):
    tokens = []
    for output in (tmp_path / "a", tmp_path / "b"):
        assert run(model_files, data_root, output) == 0
        tokens.append(json.loads((output / "clip_1.json").read_text())["tokens"])
    assert tokens[0] == tokens[1]


def test_top_k_samples_at_temperature_one(model_files, data_root, tmp_path):
    assert run(model_files, data_root, tmp_path / "out", "--top_k", "5", "--seed", "3") == 0
    record = json.loads((tmp_path / "out" / "clip_0.json").read_text())
    assert record["args"]["sampling"] == {"temperature": 1.0, "top_k": 5, "top_p": None,
                                          "repeat_penalty": 1.0, "overuse_penalty": 0.0,
                                          "guidance": 1.0}


def test_flag_the_strategy_does_not_take(model_files, data_root, tmp_path, capsys):
    code = run(model_files, data_root, tmp_path / "out", "--cache-strategy", "streaming",
               "--hh-ratio", "0.5")
    assert code == 2
    assert error_lines(capsys) == [
        "inference.py: error: --hh-ratio is not a parameter of strategy 'streaming' "
        "(it takes: start_size, recent_size, pos_shift)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--top_p", "0", "must be a number in (0, 1], got 0"),
    ("--top_p", "1.5", "must be a number in (0, 1], got 1.5"),
    ("--temperature", "inf", "must be a number in [0, 100], got inf"),
    ("--seed", "1.5", "must be a whole number in [0, 9223372036854775807], got 1.5"),
])
def test_a_bad_sampling_flag_is_named_before_the_model_loads(flag, value, message, tmp_path,
                                                             capsys):
    with pytest.raises(SystemExit) as stopped:
        inference.main(["--output_dir", str(tmp_path / "out"), flag, value])
    assert stopped.value.code == 2
    assert f"inference.py: error: argument {flag}: {message}" in capsys.readouterr().err


def test_bad_strategy_value(model_files, data_root, tmp_path, capsys):
    code = run(model_files, data_root, tmp_path / "out", "--cache-strategy", "h2o",
               "--hh-ratio", "2")
    assert code == 2
    [line] = error_lines(capsys)
    assert line.startswith("inference.py: error:") and "hh_ratio" in line and "[0, 1]" in line


@pytest.mark.parametrize("extra, budget", [
    (["--cache-strategy", "tests.stand_ins:StartRecentKVCache"], 32),  # its own cache_size
    (["--cache-strategy", "tests.stand_ins:UnsizedStartRecent", "--budget", "40"], 40),
], ids=["its-size", "--budget"])
def test_a_protocol_class_by_its_path(model_files, data_root, tmp_path, extra, budget):
    output = tmp_path / "out"
    assert run(model_files, data_root, output, *extra) == 0
    record = strict_json((output / "clip_0.json").read_text())
    assert record["cache"] == {"policy": extra[1].split(":")[1], "budget": budget}
    assert record["stats"][-1]["evicted_tokens"] > 0
    assert record["stats"][-1]["live_tokens"] <= budget


@pytest.mark.parametrize("extra, message", [
    (["--cache-strategy", "tests.stand_ins:UnsizedStartRecent"],
     r"how many tokens does it keep\? Pass budget=N \(--budget N\)"),
    (["--cache-strategy", "tests.stand_ins:NeedsArguments"], "cannot be made without arguments"),
    (["--cache-strategy", "tests.stand_ins:StartRecentKVCache", "--start-size", "2"],
     "--start-size is not a parameter of strategy 'tests.stand_ins:StartRecentKVCache'"),
], ids=["no-size", "needs-arguments", "flag-it-does-not-take"])
def test_a_bad_protocol_class_is_one_line(model_files, data_root, tmp_path, capsys, extra,
                                          message):
    assert run(model_files, data_root, tmp_path / "out", *extra) == 2
    [line] = error_lines(capsys)
    assert line.startswith("inference.py: error:") and re.search(message, line), line


def test_missing_data_root(model_files, tmp_path, capsys):
    assert run(model_files, tmp_path / "nowhere", tmp_path / "out") == 2
    [line] = error_lines(capsys)
    assert line.startswith("inference.py: error: --data_root") and "nowhere" in line


def test_short_clip_is_skipped_and_reported(model_files, data_root, tmp_path, capsys):
    write_clip(data_root, "clip_1", lines=DEMO - 1 + FRAMES - 1)
    output = tmp_path / "out"
    assert run(model_files, data_root, output) == 0  # a clip was written
    lines = error_lines(capsys)
    assert any(
        "skipped clip_1" in line and f"needs {DEMO} frames and {DEMO - 1 + FRAMES} action lines"
        in line and f"has {DEMO} frames and {DEMO - 2 + FRAMES} lines" in line for line in lines
    ), lines
    assert lines[-1] == "inference.py: 1 of 2 clips skipped: clip_1"
    assert (output / "clip_0.json").is_file() and (output / "clip_0.mp4").is_file()
    assert not (output / "clip_1.json").exists()


def test_next_alignment_needs_one_line_more(model_files, data_root, tmp_path, capsys):
    for name in ("clip_0", "clip_1"):
        write_clip(data_root, name, lines=DEMO - 1 + FRAMES)
    assert run(model_files, data_root, tmp_path / "out", "--action-alignment", "next") == 1
    lines = error_lines(capsys)
    for name in ("clip_0", "clip_1"):  # each clip says why
        assert any(f"skipped {name}" in line and f"needs {DEMO} frames and {DEMO + FRAMES} "
                   "action lines" in line for line in lines), lines
    assert lines[-1] == "inference.py: 2 of 2 clips skipped: clip_0, clip_1"


def test_no_model_flags_run_the_embedded_model_on_its_validation_clips(tmp_path):
    output = tmp_path / "out"
    assert inference.main(["--output_dir", str(output), "--frames", "2"]) == 0
    written = sorted(p.name for p in output.glob("clip_*.json"))
    assert written and len(written) == len(list((ROOT / "assets" / "validation").glob("*.jsonl")))
    record = strict_json((output / written[0]).read_text())
    assert record["generated_frames"] == 2 and record["args"]["demo_num"] == 4
    quality = record["quality"]  # 64 x 48 frames: PSNR and SSIM of both generated frames
    assert quality["frames"] == 2 and len(quality["ssim"]) == 2
    assert 0 < quality["pooled_psnr"] < 60 and -1 <= quality["mean_ssim"] <= 1


def test_a_strategy_with_no_flags_plays_its_defaults_for_the_embedded_model(tmp_path):
    """The frame window's own 1 + 7 frames would fill the embedded model's 8-frame context:
    its defaults for that model are 1 + 6 (played here with action guidance, which forks the
    cache each frame, past the first eviction)."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for suffix in (".mp4", ".jsonl"):
        shutil.copy(ROOT / "assets" / "validation" / f"clip_0{suffix}", clips)
    output = tmp_path / "out"
    assert inference.main(["--output_dir", str(output), "--data_root", str(clips),
                           "--cache-strategy", "frames", "--frames", "6",
                           "--guidance", "1.5"]) == 0
    record = strict_json((output / "clip_0.json").read_text())
    assert record["cache"] == {"frame_tokens": 107, "sink_frames": 1, "recent_frames": 6}
    assert record["args"]["sampling"]["guidance"] == 1.5
    assert record["stats"][-1]["evicted_tokens"] > 0


def test_data_root_is_required_with_model_flags(model_files, tmp_path, capsys):
    config, checkpoint = model_files
    code = inference.main(["--model_ckpt", str(checkpoint), "--config", str(config),
                           "--output_dir", str(tmp_path / "out")])
    assert code == 2
    assert "--data_root is required" in error_lines(capsys)[0]


SHIPPED_FILES = ["--model_ckpt", str(ROOT / "assets" / "model" / "model.safetensors"),
                 "--config", str(ROOT / "assets" / "model" / "config.yaml")]
# The seed's three lines, with the shipped model's files and flag values that fit its context.
SEED_LINES = {
    "none": [],
    "streaming": ["--cache-strategy", "streaming", "--start-size", "4", "--recent-size", "512"],
    "h2o": ["--cache-strategy", "h2o", "--hh-ratio", "0.1"],
}


@pytest.mark.parametrize("strategy", SEED_LINES)
def test_the_seeds_lines_run_a_prompt_longer_than_the_context(strategy, tmp_path, capsys):
    """``--demo_num 10`` on the shipped 8-frame model (``--frames 100`` is cut to 3 here for
    time; the clips are long enough for 100, below): bounded strategies prefill all ten frames
    through eviction, ``none`` the newest seven that fit, and says so in one line."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for suffix in (".mp4", ".jsonl"):
        shutil.copy(ROOT / "assets" / "validation" / f"clip_0{suffix}", clips)
    output = tmp_path / "out"
    assert inference.main([
        "--data_root", str(clips), *SHIPPED_FILES, "--output_dir", str(output),
        "--demo_num", "10", "--frames", "3", *SEED_LINES[strategy],
    ]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("inference")]
    [summary] = [line for line in captured.out.splitlines() if line.startswith("clip_0:")]
    record = strict_json((output / "clip_0.json").read_text())
    assert (record["context_frames"], record["generated_frames"]) == (10, 3)
    assert record["model"]["tokenizer"].endswith("tokenizer.json")
    first = record["stats"][0]
    if strategy == "none":
        assert notes == ["inference.py: note: --demo_num 10 is more than strategy none's 8-frame "
                         "context holds with a frame to make; the newest 7 context frames are "
                         "prefilled"]
        # 7 frames and the actions after them, then the new frame but its last token.
        assert first["evicted_tokens"] == 0 and first["live_tokens"] == 7 * 107 + 96 - 1
    else:
        assert notes == []
        assert first["evicted_tokens"] > 0 and first["reprefills"] == 0  # during the prefill
        assert first["live_tokens"] <= first["capacity_tokens"] < 8 * 107
    last = record["stats"][-1]
    hit_rate, by_role = last["attention_hit_rate"], last["attention_hit_rate_by_role"]
    if strategy == "h2o":  # tracked where attention is, and split by the kept tokens' role
        assert 0 < hit_rate < 1 and list(by_role) == ["heavy_hitters", "recent"]
        assert sum(by_role.values()) == pytest.approx(hit_rate)
        split = f"heavy hitters {by_role['heavy_hitters']:.3f}, recent {by_role['recent']:.3f}"
        assert f"(attention hit rate {hit_rate:.3f}: {split})" in summary
    else:
        assert hit_rate is None and by_role is None and "hit rate" not in summary


def test_the_shipped_validation_clips_hold_the_seeds_100_frames_after_10(tmp_path):
    args = inference.parse_args(["--output_dir", str(tmp_path), "--demo_num", "10",
                                 "--frames", "100"])
    for clip in inference.list_clips(ROOT / "assets" / "validation"):
        frames, actions = inference.read_inputs(clip, args, None)
        assert (len(frames), len(actions)) == (110, 109)


def test_the_shipped_model_loads_by_its_files(tmp_path):
    """``--model_ckpt`` / ``--config`` naming the shipped files: the same model as no flags."""
    args = inference.parse_args(["--output_dir", str(tmp_path), *SHIPPED_FILES])
    model, tokenizer, files = inference.load_model(args, {}, "cpu", torch.float32)
    shipped, shipped_tokenizer = load_embedded()
    for (name, ours), theirs in zip(model.state_dict().items(), shipped.state_dict().values(),
                                    strict=True):
        assert torch.equal(ours, theirs), name
    frame = np.zeros((1, 48, 64, 3), np.uint8)
    assert torch.equal(tokenizer.encode(frame), shipped_tokenizer.encode(frame))
    assert files["config"] == SHIPPED_FILES[3]


def tokens_of(output: Path) -> dict:
    return {path.stem: strict_json(path.read_text())["tokens"]
            for path in sorted(output.glob("clip_*.json"))}


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    """The shipped validation clips, 2 frames each, one clip at a time in one process."""
    output = tmp_path_factory.mktemp("alone")
    assert inference.main(["--output_dir", str(output), "--frames", "2",
                           "--cache-strategy", "h2o"]) == 0
    return output


def test_clips_decoded_together_make_the_tokens_each_makes_alone(one_at_a_time, tmp_path):
    assert inference.main(["--output_dir", str(tmp_path), "--frames", "2",
                           "--cache-strategy", "h2o", "--batch-size", "3"]) == 0
    assert tokens_of(tmp_path) == tokens_of(one_at_a_time) and len(tokens_of(tmp_path)) == 4
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert summary["batch_size"] == 3 and summary["processes"] == 1
    assert [clip["clip"] for clip in summary["clips"]] == ["clip_0", "clip_1", "clip_2", "clip_3"]
    assert all(clip["attention_hit_rate"] is not None for clip in summary["clips"])  # h2o's
    assert all(set(clip["attention_hit_rate_by_role"]) == {"heavy_hitters", "recent"}
               for clip in summary["clips"])


def test_torchrun_shards_the_clips_and_the_first_process_writes_the_summary(one_at_a_time,
                                                                            tmp_path):
    """Two processes on CPU (gloo): every clip written once, by one of them, as alone."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "inference.py"), "--output_dir", str(tmp_path), "--frames", "2",
         "--cache-strategy", "h2o"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    # All of stderr, progress bars collapsed: a rank's own error comes before torchrun's
    # summary of it (a rank once died of SIGABRT in a CI run, its own message cut off).
    shown = "\n".join(line.rsplit("\r", 1)[-1] for line in done.stderr.splitlines())
    assert done.returncode == 0, shown
    assert tokens_of(tmp_path) == tokens_of(one_at_a_time)
    summary = strict_json((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2
    assert [(clip["clip"], clip["process"]) for clip in summary["clips"]] == [
        ("clip_0", 0), ("clip_1", 1), ("clip_2", 0), ("clip_3", 1)]


def test_a_crash_names_the_clips_it_was_making(tmp_path, monkeypatch):
    def crash(model, runs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(inference, "generate", crash)
    with pytest.raises(RuntimeError, match=r"^clip_0, clip_1: out of memory$"):
        inference.main(["--output_dir", str(tmp_path), "--frames", "1", "--batch-size", "2"])


def test_a_kv_budget_in_megabytes_picks_parameters_that_fit_it(tmp_path):
    """0.8 MiB on the shipped model: 3 copies (keys, raw keys, values) x 4 layers x 2 kv heads
    x 32 dims x 4 bytes = 3 KiB a token, so 273 tokens: two whole frames and no sink for
    ``frames``. The strategy's own flags win over the budget's."""
    from cache import STRATEGIES
    from mineworld.model import cache_layout

    model, _tokenizer = load_embedded()
    budget = STRATEGIES["frames"].for_budget(273, cache_layout(model.config))
    assert inference.main(["--output_dir", str(tmp_path), "--frames", "2", "--cache-strategy",
                           "frames", "--kv-budget-mb", "0.8"]) == 0
    record = strict_json((tmp_path / "clip_0.json").read_text())
    assert record["cache"] == {"frame_tokens": 107, **budget} and budget["recent_frames"] == 2
    assert record["args"]["kv_budget_mb"] == 0.8
    assert max(step["bytes_allocated"] for step in record["stats"]) <= 0.8 * 2**20
    assert inference.main(["--output_dir", str(tmp_path), "--frames", "1", "--cache-strategy",
                           "h2o", "--kv-budget-mb", "1", "--normalize"]) == 0
    assert strict_json((tmp_path / "clip_0.json").read_text())["cache"]["normalize"] is True


@pytest.mark.parametrize("strategy, megabytes, message", [
    ("none", "1", "--kv-budget-mb: strategy none keeps the whole context (1.67 MiB on this "
                  "model); choose a bounded strategy"),
    ("h2o", "0.2", "--kv-budget-mb 0.2 holds 68 tokens, less than one frame (107 tokens); "
                   "give at least 0.31"),
])
def test_a_kv_budget_that_cannot_be_kept_is_one_line(tmp_path, capsys, strategy, megabytes,
                                                      message):
    assert inference.main(["--output_dir", str(tmp_path), "--cache-strategy", strategy,
                           "--kv-budget-mb", megabytes]) == 2
    assert error_lines(capsys) == [f"inference.py: error: {message}"]


def test_a_target_rate_picks_the_largest_budget_that_meets_it(tmp_path, capsys):
    """A rate any candidate meets: the whole context's room (1 + 6 frames on the shipped
    model), with the schedule asked for; one no candidate meets: the fastest, said so."""
    assert inference.main(["--output_dir", str(tmp_path), "--frames", "1", "--cache-strategy",
                           "frames", "--accelerate-algo", "image_diagd",
                           "--target-fps", "0.01"]) == 0
    fit = strict_json((tmp_path / "clip_0.json").read_text())["args"]["target_fps"]
    assert fit["met"] and fit["schedule"] == "diagonal" and fit["fps"] > 0.01
    assert fit["params"] == {"sink_frames": 1, "recent_frames": 6}
    assert "--target-fps 0.01: diagonal decoding, sink_frames=1 recent_frames=6" in (
        capsys.readouterr().err)
    assert inference.main(["--output_dir", str(tmp_path), "--frames", "1", "--cache-strategy",
                           "frames", "--recent-frames", "2", "--target-fps", "100000"]) == 0
    fit = strict_json((tmp_path / "clip_0.json").read_text())["args"]["target_fps"]
    assert not fit["met"] and fit["params"]["recent_frames"] == 2  # the flag given wins
    assert "(not met: the fastest candidate is used)" in capsys.readouterr().err
