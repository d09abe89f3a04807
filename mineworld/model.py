"""The LLaMA-style decoder of MineWorld, readable top to bottom.

RMSNorm, rotary positions (theta 10000, rotate-half layout), SwiGLU MLP,
grouped-query attention, no biases. State dicts use ``transformers``'
``LlamaForCausalLM`` names, so published checkpoints load as they are; inside, the
linear layers that read the same input (q/k/v, gate/up) are one matrix each, which
a decoding step of a few tokens runs faster on a CPU (see :func:`side_by_side`).

Without a cache the model runs a causal forward over a whole sequence (training,
tests). With a cache manager (:mod:`cache`), each attention layer writes its new
keys and values into the cache and attends to the live slots the cache hands back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cache import DEFAULT_STRATEGY, KVCacheManager, Layout, StepMask

from .config import ModelConfig


@dataclass
class Feed:
    """Tokens ``[T]`` to feed at ``positions`` ``[T]`` into ``cache``; ``last_only``: only
    the last one's logits are wanted; ``unwritten`` ``[T]``: how many slots holding zero keys
    and values each query also sees (see :func:`with_zero_slots`). ``seconds``, once a forward
    pass ran it: its share of that pass's time (see :meth:`Transformer.forward_feeds`)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    cache: KVCacheManager
    last_only: bool = False
    unwritten: torch.Tensor | None = None
    seconds: float = 0.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the arithmetic below, bit for bit, in one call
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in fp32 like the reference (bit for bit the same arithmetic as the
        # spelled-out formula), then scale in the input dtype.
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return self.weight * normed.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with rotate-half's sign folded into ``sin``
    (see :meth:`RotaryEmbedding.tables`): two halves swapped by one roll."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding. The cache moves a key to a new position by rotating
    its pre-RoPE form with this same module, so a moved key is exactly the key the
    model computes at that position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        # Angles in fp64, rounded once into the fp32 tables. rotate_half(x) is x with its
        # halves swapped and the first negated: that sign lives in the first half of sin.
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("cos", torch.cat((cos, cos), -1).float(), persistent=False)
        self.register_buffer("sin", torch.cat((-sin, sin), -1).float(), persistent=False)

    def _apply(self, fn, recurse=True):
        # Follow the model to its device but keep the tables' precision when the model
        # is cast to fp16/bf16 (positions in the thousands need fp32 angles).
        device = fn(torch.empty(0, device=self.cos.device)).device
        for name in ("cos", "sin"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def tables(self, positions: torch.Tensor, dtype: torch.dtype):
        """``cos``, ``sin`` (sign folded in) at ``positions``, for :func:`apply_rotary`;
        a forward pass looks them up once for every layer."""
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (``[..., T, D]``) to ``positions`` (``[T]``, or per row ``[..., T]``)."""
        return apply_rotary(x, *self.tables(positions, x.dtype))


def grouped_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: StepMask | None,
    want_weights: bool,
):
    """Attention of ``q`` (``[1, Hq, T, D]``) over cached ``keys``/``values`` (``[Hkv, S, D]``).

    The query heads that share a kv head are folded into the query rows, so the
    cache is read once per kv head and never repeated in memory. ``mask`` (see
    :class:`cache.manager.StepMask`) says which keys each query may not see.
    Returns the output ``[1, Hq, T, D]`` and, when asked, the weights ``[Hkv, G*T, S]``.
    """
    _, heads, tokens, dim = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    q = q.reshape(kv_heads, group * tokens, dim)
    if want_weights:
        # Scale the few queries, not the many scores; mask in place: this path is hot.
        scores = (q * (1 / math.sqrt(dim))) @ keys.transpose(-1, -2)
        if mask is not None:  # the same mask for every head of a group
            scores.view(kv_heads, group, tokens, -1).add_(mask.additive.unsqueeze(1))
        weights = scores.float().softmax(-1)
        out = weights.to(values.dtype) @ values
    else:
        attn_mask = None if mask is None else mask.folded(group)[None]
        out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask)
        weights = None
    return out.view(1, heads, tokens, dim), weights


def with_zero_slots(keys: torch.Tensor, values: torch.Tensor, mask: StepMask | None,
                    counts: torch.Tensor):
    """``keys``, ``values`` (``[Hkv, S, D]``) and ``mask`` as if each query also saw
    ``counts`` (``[T]``) slots of zero keys and values, as the published code's queries see
    the unwritten slots of its zero-initialised cache. One zero slot stands for them all: its
    score, 0 raised by ``log(count)``, weighs ``count`` x ``exp(0)`` in the softmax, and it
    adds nothing to the output (a count of 0 hides it)."""
    kv_heads, slots, dim = keys.shape
    zero = keys.new_zeros(kv_heads, 1, dim)
    if mask is None:
        hidden = torch.zeros(1, len(counts), slots + 1, dtype=torch.bool, device=keys.device)
    else:
        hidden = torch.cat((mask.hidden, mask.hidden.new_zeros(*mask.hidden.shape[:2], 1)), -1)
    joined = StepMask(hidden, keys.dtype)
    joined.additive[..., -1] = counts.to(keys.dtype).log()
    return torch.cat((keys, zero), 1), torch.cat((values, zero), 1), joined


def side_by_side(in_features: int, *out_features: int) -> nn.Parameter:
    """The weights of bias-free linear layers that read the same input, stored side by side
    as one ``[in, sum(out)]`` matrix: one matmul instead of several, and ``x @ w`` on this
    layout is about a third faster on a CPU than ``F.linear`` on ``[out, in]`` for a few
    rows (a decoding step's). Initialised as each ``nn.Linear`` would be, in order (the
    same random draws)."""
    parts = [nn.Linear(in_features, n, bias=False).weight for n in out_features]
    return nn.Parameter(torch.cat([part.detach().t() for part in parts], 1))


def join_linear_weights(module: nn.Module, state: dict, prefix: str, *_) -> None:
    """``transformers``' linear weights of ``module`` in ``state`` -> our side-by-side ones,
    in place (the load hook of :class:`SideBySideLinears`)."""
    for ours, parts in module.linear_parts.items():
        names = [prefix + part + ".weight" for part in parts]
        if all(name in state for name in names):
            state[prefix + ours] = torch.cat([state.pop(name).t() for name in names], 1)


def split_linear_weights(module: nn.Module, state: dict, prefix: str, _) -> None:
    """The reverse, as views (the state-dict hook of :class:`SideBySideLinears`)."""
    for ours, parts in module.linear_parts.items():
        pieces = state.pop(prefix + ours).split(list(parts.values()), 1)
        for part, piece in zip(parts, pieces, strict=True):
            state[prefix + part + ".weight"] = piece.t()


class SideBySideLinears(nn.Module):
    """A module whose linear weights are :func:`side_by_side` matrices; state dicts in and
    out of it use ``transformers``' separate ``nn.Linear`` names, so checkpoints are theirs."""

    def __init__(self):
        super().__init__()
        self.linear_parts: dict[str, dict[str, int]] = {}  # ours -> {theirs: width}
        self.register_load_state_dict_pre_hook(join_linear_weights)
        self.register_state_dict_post_hook(split_linear_weights)

    def add_linears(self, name: str, in_features: int, **parts: int) -> None:
        """Parameter ``name``: the linears ``parts`` (their name -> output width) side by side."""
        self.linear_parts[name] = parts
        self.register_parameter(name, side_by_side(in_features, *parts.values()))


class Attention(SideBySideLinears):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        width = config.hidden_size
        self.add_linears("qkv_weight", width, q_proj=width, k_proj=kv_width, v_proj=kv_width)
        self.add_linears("out_weight", width, o_proj=width)

    def forward(self, x, positions, rotary, feeds: list[Feed] | None):
        """``x``: ``[B, T, hidden]``; ``rotary``: the ``cos``, ``sin`` tables at
        ``positions``, ``[T, 1, head_dim]``. Without ``feeds``, causal attention over ``x``;
        with them (``B`` = 1), each feed's rows attend over its own cache."""
        batch, tokens, width = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = (x @ self.qkv_weight).view(batch, tokens, heads + 2 * kv_heads, self.head_dim)
        qk = apply_rotary(qkv[:, :, : heads + kv_heads], *rotary)  # q and k in one go
        # [B, H, T, D] from here on: heads first, as attention and the cache take them.
        q, k = qk.transpose(1, 2).split((heads, kv_heads), 1)
        raw_k, v = qkv[:, :, heads:].transpose(1, 2).split((kv_heads, kv_heads), 1)
        if feeds is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            outs, begin = [], 0
            for feed in feeds:
                begun = time.perf_counter()
                rows, cache = slice(begin, begin + len(feed.positions)), feed.cache
                begin = rows.stop
                cache.write(self.layer_index, k[0, :, rows], v[0, :, rows], raw_k[0, :, rows])
                keys, values, mask = cache.read(self.layer_index, feed.positions)
                cached, cache_mask = keys.shape[1], mask
                if feed.unwritten is not None:
                    keys, values, mask = with_zero_slots(keys, values, mask, feed.unwritten)
                out, weights = grouped_attention(q[:, :, rows], keys, values, mask,
                                                 cache.tracks_attention)
                if weights is not None:  # of the cache's own slots
                    cache.observe(self.layer_index, weights[..., :cached], cache_mask)
                outs.append(out)
                feed.seconds += time.perf_counter() - begun
            out = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        return out.transpose(1, 2).reshape(batch, tokens, width) @ self.out_weight


class MLP(SideBySideLinears):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        self.add_linears("gate_up_weight", width, gate_proj=inner, up_proj=inner)
        self.add_linears("down_weight", inner, down_proj=width)

    def forward(self, x):
        gate, up = (x @ self.gate_up_weight).chunk(2, -1)
        return (F.silu(gate) * up) @ self.down_weight


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, rotary, feeds):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, feeds)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        layers = range(config.num_hidden_layers)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def cache_layout(config: ModelConfig) -> Layout:
    """What a cache strategy knows of a model: a frame and its action tokens make one block,
    and the context is its trained positions."""
    return Layout(config.tokens_per_frame, config.max_position_embeddings)


class Transformer(nn.Module):
    """``model.*`` and ``lm_head`` as in ``LlamaForCausalLM``. With caches, one sequence per
    cache (a world model session is one player); ``forward_feeds`` runs several players'
    sequences, each with its own cache, in one pass."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta
        )
        self.cache: KVCacheManager | None = None

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        cache: KVCacheManager | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` (``[B, 1, vocab]`` with ``last_only``) for ``tokens``
        ``[B, T]`` at ``positions`` ``[T]`` (default: the next ``T`` positions of the cache,
        so that successive calls continue one sequence; ``0..T-1`` without a cache).

        ``cache``: the caller's own cache (sessions share one read-only model);
        defaults to the one attached by :meth:`setup_cache_manager`, if any."""
        cache = cache if cache is not None else self.cache
        if positions is None:
            first = 0 if cache is None else cache.reserve(tokens.shape[-1])
            positions = first + torch.arange(tokens.shape[-1], device=tokens.device)
        if cache is not None:
            [logits] = self.forward_feeds([Feed(tokens[0], positions, cache, last_only)])
            return logits[None]
        x = self._hidden(tokens, positions, None)
        return self.lm_head(self.model.norm(x[:, -1:] if last_only else x))

    def forward_feeds(self, feeds: list[Feed]) -> list[torch.Tensor]:
        """Logits ``[T, vocab]`` (``[1, vocab]`` with ``last_only``) for each of ``feeds``:
        sequences with caches of their own (players of one model). The linear layers run on
        the rows of all of them at once, attention on each over its own cache.

        Each feed's ``seconds`` is then its share of the pass: the time of its own cache's work
        and attention, and of the rest (the linear layers, shared) its rows' share, so that
        players stepping together each see what their own frames cost (a strategy's evictions
        or costlier attention are its own, not its neighbour's; work between passes, such as a
        re-prefill, is counted by ``decoding.CostClock``). On a GPU the kernels run
        asynchronously, so their time falls in the shared part."""
        started = time.perf_counter()
        for feed in feeds:
            begun = time.perf_counter()
            feed.cache.begin_step(feed.positions)
            feed.seconds = time.perf_counter() - begun
        tokens = torch.cat([feed.tokens for feed in feeds])
        x = self._hidden(tokens[None], torch.cat([feed.positions for feed in feeds]), feeds)[0]
        for feed in feeds:
            begun = time.perf_counter()
            feed.cache.end_step()
            feed.seconds += time.perf_counter() - begun
        rows, end = [], 0  # the rows whose logits are asked for
        for feed in feeds:
            end += len(feed.positions)
            rows.extend([end - 1] if feed.last_only else range(end - len(feed.positions), end))
        logits = self.lm_head(self.model.norm(x[rows] if len(rows) < len(x) else x))
        if logits.is_cuda:  # the pass's kernels done, so that its time is in it (sampling,
            torch.cuda.synchronize(logits.device)  # next, would wait for them anyway)
        shared = time.perf_counter() - started - sum(feed.seconds for feed in feeds)
        for feed in feeds:
            feed.seconds += shared * len(feed.positions) / len(tokens)
        return list(logits.split([1 if feed.last_only else len(feed.positions)
                                  for feed in feeds]))

    def _hidden(self, tokens, positions, feeds: list[Feed] | None) -> torch.Tensor:
        """The last layer's output ``[B, T, hidden]`` (see ``Attention.forward``)."""
        x = self.model.embed_tokens(tokens)
        cos, sin = self.rope.tables(positions, x.dtype)
        rotary = cos[:, None], sin[:, None]  # [T, 1, D]: the same for every head
        for layer in self.model.layers:
            x = layer(x, positions, rotary, feeds)
        return x

    def new_cache(self, strategy=None, **params) -> KVCacheManager:
        """A KV cache with the given strategy (see :mod:`cache`), bound to this model; the
        parameters not given are the strategy's defaults for this model's layout. With no
        ``strategy``: the attached manager's (:meth:`setup_cache_manager`), with its
        settings, else ``none``."""
        if strategy is None and self.cache is not None:
            if params:
                raise ValueError("parameters need a strategy: the attached manager's are set")
            strategy, params = self.cache.strategy, {"prompt_len": self.cache.prompt_len}
        strategy = DEFAULT_STRATEGY if strategy is None else strategy
        manager = KVCacheManager(strategy, layout=cache_layout(self.config), **params)
        weight = self.lm_head.weight
        config = self.config
        manager.bind(
            num_layers=config.num_hidden_layers,
            num_kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            max_positions=config.max_position_embeddings,
            rotate=self.rope,
            dtype=weight.dtype,
            device=weight.device,
        )
        return manager

    def setup_cache_manager(self, strategy=DEFAULT_STRATEGY, **params) -> KVCacheManager:
        """Attach a default cache to the model (the one-user Python API) and return it, empty
        and ready: the next call of the model starts its sequence at position 0 (``reset``
        starts another). Sessions made on the model with no strategy of their own play this
        one, each on a cache of its own."""
        manager = self.new_cache(strategy, **params)
        # Checked as a session will use it: a frame's positions reserved at a time.
        manager.reset(reserve_tokens=self.config.tokens_per_frame)
        self.cache = manager
        return manager

    def disable_cache_manager(self) -> None:
        self.cache = None
