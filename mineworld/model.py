"""The LLaMA-style decoder of MineWorld, readable top to bottom.

RMSNorm, rotary positions (theta 10000, rotate-half layout), SwiGLU MLP,
grouped-query attention, no biases. Module names follow ``transformers``'
``LlamaForCausalLM`` so published checkpoints load without renaming.

Without a cache the model runs a causal forward over a whole sequence (training,
tests). With a cache manager (:mod:`cache`), each attention layer writes its new
keys and values into the cache and attends to the live slots the cache hands back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cache import KVCacheManager, StepMask

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like the reference (one call, bit for bit the same
        # arithmetic as the spelled-out formula), then scale in the input dtype.
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


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        kv_width = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x, positions, rotary, cache: KVCacheManager | None):
        """``rotary``: the ``cos``, ``sin`` tables at ``positions``."""
        batch, tokens, width = x.shape
        q = self.q_proj(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, rotated = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is None:
            out = F.scaled_dot_product_attention(q, rotated, v, is_causal=True, enable_gqa=True)
        else:
            cache.write(self.layer_index, rotated[0], v[0], k[0])
            keys, values, mask = cache.read(self.layer_index, positions)
            out, weights = grouped_attention(q, keys, values, mask, cache.tracks_attention)
            if weights is not None:
                cache.observe(self.layer_index, weights, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, rotary, cache):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        layers = range(config.num_hidden_layers)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    """``model.*`` and ``lm_head`` as in ``LlamaForCausalLM``; one sequence at a time
    when a cache is set up (a world model session is one player)."""

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
        ``[B, T]`` at ``positions`` ``[T]`` (default ``0..T-1``).

        ``cache``: the caller's own cache (sessions share one read-only model);
        defaults to the one attached by :meth:`setup_cache_manager`, if any."""
        if positions is None:
            positions = torch.arange(tokens.shape[-1], device=tokens.device)
        cache = cache if cache is not None else self.cache
        if cache is not None:
            cache.begin_step(positions)
        x = self.model.embed_tokens(tokens)
        rotary = self.rope.tables(positions, x.dtype)
        for layer in self.model.layers:
            x = layer(x, positions, rotary, cache)
        if cache is not None:
            cache.end_step()
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))

    def new_cache(self, strategy="none", **params) -> KVCacheManager:
        """A KV cache with the given strategy (see :mod:`cache`), bound to this model."""
        manager = KVCacheManager(strategy, **params)
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

    def setup_cache_manager(self, strategy="none", **params) -> KVCacheManager:
        """Attach a default cache to the model (the one-user Python API) and return it."""
        self.cache = self.new_cache(strategy, **params)
        return self.cache

    def disable_cache_manager(self) -> None:
        self.cache = None
