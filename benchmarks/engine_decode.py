"""Per-token decode speed of our engine against a bare static-cache loop (gpt-fast style).

    . .venv/bin/activate
    python -m benchmarks.engine_decode              # 300M_16f, 2776-token context, 48 tokens
    python -m benchmarks.engine_decode --quick      # smoke run: 347-token context, 8 tokens
    python -m benchmarks.engine_decode --profile    # also print where our engine's time goes
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.engine_decode --profile  # on a loaded machine

Both sides run the same random weights of a shipped config (fp32, CPU) under
``torch.inference_mode()``. After a prefill of ``--context`` tokens, one token per forward pass
is decoded by:

* ``ours``: ``model(tok, pos, cache=cache)`` with a ``none`` cache (``mineworld.model`` and
  ``cache.KVCacheManager``);
* ``bare-fold`` / ``bare-gqa``: a ~60-line loop written here, reading the model's parameters
  (QKV and gate/up fused into one matrix each), a preallocated K/V buffer
  ``[layers, kv_heads, max_positions, head_dim]``, RoPE from precomputed cos/sin tables,
  ``F.rms_norm``, SwiGLU, and ``F.scaled_dot_product_attention`` over the filled prefix, either
  with the query heads of a group folded into query rows (``fold``) or with ``enable_gqa=True``.

The yardstick is the faster bare variant. The variants are interleaved token by token (their
order rotates every token) so that load drift on a shared machine hits all of them alike; the
logits of every decoded token are compared (max abs diff must stay below 1e-3). Printed: per-token
ms (median, p90) and the ratio ours / bare (goal: <= 1.15). Timings are noisy: read the ratios.
When ours is slower than the goal (or with ``--profile``) the script profiles both, token by
token, and prints torch ops side by side plus a cProfile of ours.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.common import percentile, print_machine
from mineworld.config import load_config, preset_path
from mineworld.model import Transformer

TOLERANCE = 1e-3
GOAL = 1.15


# -- the yardstick: a bare static-cache decoder ---------------------------------------------


class BareDecoder:
    """LLaMA decode with a static K/V buffer; shares the weights of ``model`` (QKV and gate/up
    side by side, ``[in, out]``). ``gqa``: ``fold`` or ``enable_gqa``."""

    def __init__(self, model: Transformer, gqa: str):
        c = model.config
        self.dim, self.heads = c.hidden_size, c.num_attention_heads
        self.kv_heads = c.num_key_value_heads
        self.head_dim, self.eps, self.gqa = c.head_dim, c.rms_norm_eps, gqa
        self.kv_width = self.kv_heads * self.head_dim
        self.embed, self.lm_head = model.model.embed_tokens.weight, model.lm_head.weight
        self.norm = model.model.norm.weight
        self.layers = []
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            self.layers.append((*norms, a.qkv_weight, a.out_weight, m.gate_up_weight,
                                m.down_weight))
        inv_freq = 1.0 / c.rope_theta ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        )
        angles = torch.arange(c.max_position_embeddings, dtype=torch.float64)[:, None] * inv_freq
        angles = torch.cat((angles, angles), -1)
        dtype, device = self.lm_head.dtype, self.lm_head.device
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)
        shape = (c.num_hidden_layers, self.kv_heads, c.max_position_embeddings, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x [H, T, D]
        half = self.head_dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * self.cos[pos] + rotated * self.sin[pos]

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Logits ``[T, vocab]`` of ``tokens`` (``[T]``) at positions ``start..start+T-1``."""
        T, H, Hk, D, dim = tokens.numel(), self.heads, self.kv_heads, self.head_dim, self.dim
        end, pos = start + T, torch.arange(start, start + T)
        mask = None if T == 1 else torch.arange(end)[None] <= pos[:, None]  # [T, S]
        x = F.embedding(tokens, self.embed)
        for i, (ln1, ln2, wqkv, wo, w13, w2) in enumerate(self.layers):
            qkv = F.rms_norm(x, (dim,), ln1, self.eps) @ wqkv
            qk = qkv[:, : dim + self.kv_width].view(T, H + Hk, D).transpose(0, 1)
            qk = self.rope(qk, pos)
            q, k = qk[:H], qk[H:]
            v = qkv[:, dim + self.kv_width :].view(T, Hk, D).transpose(0, 1)
            self.k_cache[i, :, start:end] = k
            self.v_cache[i, :, start:end] = v
            keys, values = self.k_cache[i, :, :end], self.v_cache[i, :, :end]
            if self.gqa == "fold" and T == 1:  # a group's query heads become query rows
                o = F.scaled_dot_product_attention(q.reshape(1, Hk, H // Hk, D), keys[None],
                                                   values[None])
            else:
                o = F.scaled_dot_product_attention(q[None], keys[None], values[None], mask,
                                                   enable_gqa=True)
            x = x + o.reshape(H, T, D).transpose(0, 1).reshape(T, dim) @ wo
            gate, up = (F.rms_norm(x, (dim,), ln2, self.eps) @ w13).chunk(2, -1)
            x = x + (F.silu(gate) * up) @ w2
        return F.linear(F.rms_norm(x, (dim,), self.norm, self.eps), self.lm_head)


# -- our engine -----------------------------------------------------------------------------


class OursDecoder:
    def __init__(self, model: Transformer, prompt_length: int, total: int, chunk: int):
        self.model = model
        self.cache = model.new_cache("none")
        self.cache.reset(prompt_length=prompt_length, step_tokens=chunk)
        self.cache.reserve(total)

    def forward(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.numel())
        return self.model(tokens[None], positions, cache=self.cache)[0]


# -- driver ---------------------------------------------------------------------------------


def build_model(config_name: str, dtype: torch.dtype, seed: int) -> Transformer:
    config = load_config(Path(config_name) if config_name.endswith(".yaml")
                         else preset_path(config_name))
    torch.manual_seed(seed)
    model = Transformer(config).to(dtype).eval()
    with torch.no_grad():  # LLaMA-like scales: N(0, 0.02) weights, norms near 1
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.02)
    return model


def prefill(decoder, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    logits = None
    for begin in range(0, tokens.numel(), chunk):
        logits = decoder.forward(tokens[begin : begin + chunk], begin)
    return logits[-1]


def profile_engines(ours: OursDecoder, bare: BareDecoder, tokens: list[int], start: int,
                    top: int) -> None:
    """Where one decode token's time goes: torch ops of ours next to the bare loop's (profiled
    token by token, alternating, so load drift hits both alike), then ours' Python functions
    (cProfile), so that a gap can be pinned to an op and a file."""
    from torch.profiler import ProfilerActivity, profile

    n = len(tokens)
    print(f"\n## Profile: {n} decode tokens each, positions {start}..{start + n - 1}\n")
    ops: dict[str, dict[str, list[float]]] = {"ours": {}, "bare": {}}
    for i, tok in enumerate(tokens):
        pair = [("ours", ours), ("bare", bare)]
        for name, decoder in pair if i % 2 == 0 else pair[::-1]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                decoder.forward(torch.tensor([tok]), start + i)
            for e in prof.key_averages():
                acc = ops[name].setdefault(e.key, [0.0, 0.0])
                acc[0] += e.self_cpu_time_total / 1000 / n
                acc[1] += e.count / n
    mine, theirs = ops["ours"], ops["bare"]
    total_ours = sum(ms for ms, _ in mine.values())
    total_bare = sum(ms for ms, _ in theirs.values())
    print(f"self CPU per token (profiler on): ours {total_ours:.1f} ms, "
          f"bare ({bare.gqa}) {total_bare:.1f} ms\n")
    print("| torch op | ours ms/token | ours calls/token | bare ms/token | bare calls/token |")
    print("|---|---:|---:|---:|---:|")
    none = (0.0, 0.0)
    keys = sorted(set(mine) | set(theirs),
                  key=lambda k: -max(mine.get(k, none)[0], theirs.get(k, none)[0]))
    for key in keys[:top]:
        (a, ca), (b, cb) = mine.get(key, none), theirs.get(key, none)
        print(f"| {key} | {a:.2f} | {ca:.0f} | {b:.2f} | {cb:.0f} |")
    profiler = cProfile.Profile()
    profiler.enable()
    for i, tok in enumerate(tokens):
        ours.forward(torch.tensor([tok]), start + n + i)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of ours, {n} tokens (tottime = own time, cumtime = with callees):")
    print(out.getvalue().split("\n", 3)[-1].rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="300M_16f", help="preset name or YAML path")
    parser.add_argument("--context", type=int, default=2776, help="prefilled tokens (8 frames)")
    parser.add_argument("--tokens", type=int, default=48, help="timed decode tokens")
    parser.add_argument("--warmup", type=int, default=4, help="untimed decode tokens first")
    parser.add_argument("--chunk", type=int, default=347, help="prefill chunk (tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: context 347, 8 tokens")
    parser.add_argument("--profile", action="store_true",
                        help="profile ours after timing (always done when ratio > 1.15)")
    parser.add_argument("--no-auto-profile", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.context, args.tokens = 347, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.config, torch.float32, args.seed)
    c = model.config
    total = args.context + args.warmup + args.tokens
    if total > c.max_position_embeddings:
        parser.error(f"context + warmup + tokens = {total} > {c.max_position_embeddings}")
    params = sum(p.numel() for p in model.parameters())
    print_machine("engine_decode")
    print(f"config {args.config}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, MLP "
          f"{c.intermediate_size}, {c.num_attention_heads} heads / {c.num_key_value_heads} kv, "
          f"vocab {c.vocab_size}, {params / 1e6:.0f}M params, float32")
    print(f"context {args.context}, warmup {args.warmup}, timed tokens {args.tokens}\n")

    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, c.vocab_size, (args.context,), generator=g)
    stream = torch.randint(0, c.vocab_size, (args.warmup + args.tokens,), generator=g).tolist()

    with torch.inference_mode():
        ours = OursDecoder(model, args.context, total, args.chunk)
        bare = BareDecoder(model, "fold")
        started = time.perf_counter()
        last_ours = prefill(ours, prompt, args.chunk)
        seconds_ours = time.perf_counter() - started
        started = time.perf_counter()
        last_bare = prefill(bare, prompt, args.chunk)
        seconds_bare = time.perf_counter() - started
        gqa = BareDecoder(model, "enable_gqa")  # same weights; copy the prefilled K/V
        gqa.k_cache.copy_(bare.k_cache)
        gqa.v_cache.copy_(bare.v_cache)
        prefill_diff = (last_ours - last_bare).abs().max().item()
        print(f"prefill (one after the other): ours {seconds_ours:.1f} s, bare "
              f"{seconds_bare:.1f} s; "
              f"last-token logits max abs diff {prefill_diff:.2e}")

        decoders = {"ours": ours, "bare-fold": bare, "bare-gqa": gqa}
        names = list(decoders)
        times: dict[str, list[float]] = {name: [] for name in names}
        max_diff = 0.0
        for i in tqdm(range(args.warmup + args.tokens), desc="decode", unit="tok"):
            position = args.context + i
            token = torch.tensor([stream[i]])
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate: drift cancels
            logits = {}
            for name in order:
                started = time.perf_counter()
                logits[name] = decoders[name].forward(token, position)
                elapsed = time.perf_counter() - started
                if i >= args.warmup:
                    times[name].append(1000 * elapsed)
            for name in names[1:]:
                max_diff = max(max_diff, (logits["ours"][-1] - logits[name][-1]).abs().max().item())
            if i == 0 and max_diff >= TOLERANCE:
                sys.exit(f"logits differ by {max_diff:.2e} >= {TOLERANCE}: not the same model")

    medians = {name: statistics.median(values) for name, values in times.items()}
    yardstick = min(names[1:], key=medians.get)
    print(f"\nlogits max abs diff over all decoded tokens (ours vs bare): {max_diff:.2e} "
          f"({'OK' if max_diff < TOLERANCE else 'FAIL'}, tolerance {TOLERANCE})\n")
    print("| decoder | ms/token p50 | ms/token p90 | ratio p50 vs " + yardstick + " |")
    print("|---|---:|---:|---:|")
    for name in names:
        ratio = medians[name] / medians[yardstick]
        print(f"| {name} | {medians[name]:.2f} | {percentile(times[name], 90):.2f} | "
              f"{ratio:.3f} |")
    # Per-token ratios (same token, same moment) are the least noisy estimate.
    paired = [a / b for a, b in zip(times["ours"], times[yardstick], strict=True)]
    ratio = medians["ours"] / medians[yardstick]
    print(f"\nours / bare ({yardstick}): {ratio:.3f} (median of per-token ratios "
          f"{statistics.median(paired):.3f}); goal <= {GOAL}: "
          f"{'met' if ratio <= GOAL else 'NOT met'}")

    if args.profile or (ratio > GOAL and not args.no_auto_profile):
        count = min(16, (c.max_position_embeddings - total) // 2)
        if count < 1:
            print("no positions left to profile; lower --context")
            return
        with torch.inference_mode():
            profile_engines(ours, decoders[yardstick], stream[:count], total, top=20)

if __name__ == "__main__":
    main()
