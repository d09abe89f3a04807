"""benchmarks.run: the budget of every strategy, and a tiny end-to-end run on the embedded model
(11 frames, one budget, the diagonal schedule) whose CSV, summary and plots are checked;
benchmarks.decodings: how a decoding is written; benchmarks.cache_strategies on a tiny model and
the published shapes it takes; benchmarks.players' ways of attending for many players."""

import argparse
import csv
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image

from benchmarks import cache_strategies, decodings, players, run
from cache import STRATEGIES, Layout, Strategy
from mineworld.decoding import Sampling
from mineworld.embedded import load_embedded

FRAMES, BUDGET = 11, 2  # the shortest play that holds the revisit; 4 + 11 frames > the context
BOUNDED = [name for name, cls in STRATEGIES.items() if cls.bounded]
UNBOUNDED = [name for name, cls in STRATEGIES.items() if not cls.bounded]


@pytest.fixture(scope="module")
def embedded():
    return load_embedded()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run.main(["--frames", str(FRAMES), "--seeds", "1", "--budgets", str(BUDGET),
              "--schedules", "diagonal", "--out", str(out)])
    with (out / "frames.csv").open() as handle:
        return out, list(csv.DictReader(handle))


@pytest.mark.parametrize("schedule", ["naive", "diagonal"])
def test_every_strategy_keeps_exactly_the_budget(embedded, schedule):
    """Every budget from 2 frames to the context less one is valid for every strategy, and
    each bounded strategy's cache holds exactly that many tokens."""
    model, tokenizer = embedded
    config = model.config
    refs = 4
    case = run.make_case(run.SEED_BASE, refs, FRAMES, tokenizer.frame_size)
    budgets = list(range(2, config.context_frames))
    runs = run.make_runs(model, tokenizer, case, schedule, list(STRATEGIES), budgets, refs)
    full = [r for r in runs if r.budget_frames is None]
    assert [r.strategy for r in full] == UNBOUNDED
    assert {(r.strategy, r.budget_frames) for r in runs if r not in full} == {
        (name, b) for name in BOUNDED for b in budgets}
    for r in runs:
        capacity = r.session.cache.storage.capacity
        if r in full:
            assert capacity == config.max_position_embeddings
        else:
            assert capacity == r.budget_frames * config.tokens_per_frame, (r.strategy, r.params)


def test_budget_params_are_the_strategys_own_mapping():
    layout = Layout(107, 856)
    assert run.budget_params("frames", 2, layout, 416) == {"sink_frames": 0, "recent_frames": 2}
    assert run.budget_params("frames", 4, layout, 416) == {"sink_frames": 1, "recent_frames": 3}
    assert run.budget_params("h2o", 4, layout, 416) == {"hh_ratio": 0.1, "recent_size": 386}
    assert set(run.colours()) == set(STRATEGIES)

    class Unmapped(Strategy):
        name = "unmapped"

    with pytest.raises(ValueError, match="strategy 'unmapped' declares no budget mapping"):
        Unmapped.for_budget(428, layout)


def test_the_revisit_comes_back_to_the_same_true_view(embedded):
    _, tokenizer = embedded
    case = run.make_case(run.SEED_BASE, 4, FRAMES, tokenizer.frame_size)
    before, back = case.revisit
    assert (before, back) == (FRAMES - 2 * run.TURN_FRAMES - 1, FRAMES - 1)
    yaws = [a["camera"][1] for a in case.actions[before + 1 : back + 1]]
    assert sum(yaws) == pytest.approx(0) and all(yaws)  # away and back, turning every frame
    assert case.true_revisit_psnr > 25  # the world shows (nearly) the same view again
    assert len(case.truth) == len(case.actions) == FRAMES and len(case.context) == 4


def test_csv_has_a_sane_row_per_strategy_and_frame(bench):
    _, rows = bench
    assert len(rows) == len(STRATEGIES) * FRAMES
    assert {r["strategy"] for r in rows} == set(STRATEGIES)
    for r in rows:
        for key in ("ms_per_frame", "forward_passes", "bytes_allocated", "bytes_live",
                    "rss_mib", "psnr_truth", "ssim_truth"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0, (key, r)
        assert -1 <= float(r["ssim_truth"]) <= 1
        assert r["schedule"] == "diagonal"
    last = {r["strategy"]: r for r in rows if int(r["frame"]) == FRAMES}
    for name in UNBOUNDED:
        assert int(last[name]["reprefills"]) > 0  # the horizon is longer than the context
    for name in BOUNDED:
        assert int(last[name]["reprefills"]) == 0 and int(last[name]["evicted_tokens"]) > 0
        assert last[name]["psnr_none"] != "" and last[name]["budget_frames"] == str(BUDGET)
        assert int(last[name]["live_tokens"]) <= int(last[name]["budget_tokens"])
    assert all(last[name]["revisit_psnr_self"] != "" for name in STRATEGIES)
    # The attention hit rate: from the strategies that score attention, a share below 1.
    for name in ("h2o", "hybrid"):
        assert 0 < float(last[name]["attention_hit_rate"]) < 1
    assert last["none"]["attention_hit_rate"] == ""


def test_summary_and_plots(bench):
    out, _ = bench
    summary = (out / "summary.md").read_text()
    for name in STRATEGIES:
        assert f"| {name} |" in summary
    assert "## Who wins" in summary and f"diagonal, {BUDGET} frames: PSNR vs truth" in summary
    for name in ("quality.png", "ms_per_frame.png", "kv_memory.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 200
            assert len(image.getcolors(1 << 16) or range(1 << 16)) > 5  # lines, not blank


@pytest.mark.parametrize("text, expected", [
    ("0", Sampling()),
    ("0:3", Sampling(repeat_penalty=3.0)),
    ("0.7/20", Sampling(0.7, top_k=20)),
    ("1/5:2.5", Sampling(1.0, top_k=5, repeat_penalty=2.5)),
    ("0@1.5", Sampling(guidance=1.5)),
    ("0.7/20:2@2", Sampling(0.7, top_k=20, repeat_penalty=2.0, guidance=2.0)),
    ("0.7/20~2", Sampling(0.7, top_k=20, overuse_penalty=2.0)),
    ("0:3~0.5@2", Sampling(repeat_penalty=3.0, overuse_penalty=0.5, guidance=2.0)),
])
def test_a_decoding_is_read_as_written(text, expected):
    assert decodings.decoding(text) == expected


@pytest.mark.parametrize("text", ["warm", "0.7/x", "0:0.5", "-1", "0@-1", "0@x", "0~-1", "0~x"])
def test_a_bad_decoding_says_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"TEMPERATURE\[/TOP_K\]"):
        decodings.decoding(text)


def test_cache_strategies_plays_each_strategy_and_checks_agreement(capsys):
    cache_strategies.main(["--quick", "--width", "64", "--mlp", "128", "--layers", "2",
                           "--strategies", "none,frames", "--no-baseline", "--agreement",
                           "--device", "cpu", "--dtype", "float32", "--threads", "1"])
    out = capsys.readouterr().out
    # The same weights in the same precision on the same device: every token agrees.
    assert "first frame, greedy, against fp32 on the CPU: 100.0% of the tokens agree" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| none |")
            or line.startswith("| frames |")]
    assert [row[0] for row in rows] == ["| none", "| frames"]
    assert all(float(row[4]) > 0 for row in rows)  # fps
    assert "1 re-prefills in 12 frames" in out  # none's context (16 frames) fills once
    assert "peak device memory" not in out  # CUDA only


def test_a_preset_gives_the_published_shapes():
    config = cache_strategies.model_config(argparse.Namespace(preset="300M_16f"))
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.num_key_value_heads) == (1024, 4096, 20, 16, 4)
    assert (config.tokens_per_frame, config.context_frames) == (347, 16)


def test_the_ways_of_attending_for_many_players_attend_alike(embedded):
    model, _tokenizer = embedded
    outputs = [call() for call in players.attention_calls(model.config, 3).values()]
    config = model.config
    assert outputs[0].shape == (3, config.num_key_value_heads, config.image_rows
                                * config.num_attention_heads // config.num_key_value_heads,
                                config.head_dim)
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0])


def test_players_split_over_processes_evenly_each_once():
    assert players.split_players(8, 2) == [(4, 0), (4, 4)]
    assert players.split_players(5, 2) == [(3, 0), (2, 3)]
    assert players.split_players(1, 2) == [(1, 0)]  # no process without a player


def test_players_over_processes_print_a_rate_each_way(capsys):
    assert players.main(["--players", "2", "--frames", "1", "--threads", "2",
                         "--processes", "2"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    _players, one, split, _ratio = (cell.strip() for cell in row.strip("|").split("|"))
    assert _players == "2" and float(one) > 0 and float(split) > 0


def test_the_page_benchmark_passes_the_flags_after_a_double_dash_to_app_py():
    from benchmarks import page_latency

    args = page_latency.parse_args(["--taps", "3", "--", "--prepare-next", "0", "--taps"])
    assert args.taps == 3 and args.app_flags == ["--prepare-next", "0", "--taps"]
    assert page_latency.parse_args(["--hold", "2"]).app_flags == []
    with pytest.raises(SystemExit):  # a page already served takes no app.py flags
        page_latency.parse_args(["--url", "http://127.0.0.1:7860/", "--", "--threads", "2"])


def test_the_page_benchmark_reads_proc_stat_lines():
    from benchmarks import page_latency

    ticks = page_latency.CLOCK_TICKS
    # A name may hold spaces and parentheses; utime and stime are the 14th and 15th fields.
    stat = f"4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 {3 * ticks} {ticks} 0 0 20 0 1"
    assert page_latency.read_stat(stat) == ("a (b) c", 1, 4.0)
    # user nice system idle iowait irq softirq steal ...: idle, I/O waits and steal not busy
    machine = f"cpu  {ticks} {ticks} {ticks} 100 100 {ticks} {ticks} 100 0 0\ncpu0 1 2 3 4"
    assert page_latency.machine_busy_seconds(machine) == 5.0


def test_the_page_benchmark_finds_the_busiest_thread_and_a_child_process_of_the_app():
    from benchmarks import page_latency

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    go, burnt, finish, burner = threading.Event(), threading.Event(), threading.Event(), []

    def burn():  # a thread on a core for 0.3 s of its own CPU time, alive when measured
        burner.append(threading.get_native_id())
        go.wait()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        burnt.set()
        finish.wait()

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        before = page_latency.cpu_snapshot(os.getpid())
        go.set()
        burnt.wait()
        after = page_latency.cpu_snapshot(os.getpid())
    finally:
        finish.set()
        thread.join()
        child.kill()
        child.wait()
    spent = after["threads"][burner[0]] - before["threads"].get(burner[0], 0.0)
    cores = page_latency.cores_used(before, after)
    assert spent >= 0.2
    assert cores["busiest thread"] == pytest.approx(spent / (after["time"] - before["time"]))
    assert cores["app.py"] >= cores["busiest thread"]
    assert child.pid in after["children"] and child.pid not in after["chromium"]
