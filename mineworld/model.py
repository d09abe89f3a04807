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

from cache import KVCacheManager

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 like the reference, then scale in the input dtype.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding. Rotations compose, R(a) R(b) = R(a + b), which is
    what lets the cache move a stored key to a new position without recomputing it."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        # Angles in fp64 so that a table entry and a re-rotation agree to fp32 rounding.
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def _apply(self, fn, recurse=True):
        # Follow the model to its device but keep the tables' precision when the model
        # is cast to fp16/bf16: re-rotating cached keys needs them exact.
        device = fn(torch.empty(0, device=self.cos.device)).device
        for name in ("inv_freq", "cos", "sin"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (``[..., T, D]``) to ``positions`` (``[T]``)."""
        cos = self.cos[positions].to(x.dtype)
        sin = self.sin[positions].to(x.dtype)
        return x * cos + rotate_half(x) * sin

    def shift(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Move already-rotated ``x`` (``[H, C, D]``) by ``offsets`` (``[H or 1, C]``)."""
        angles = offsets.to(torch.float64).unsqueeze(-1) * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        x32 = x.float()
        rotated = x32 * angles.cos().float() + rotate_half(x32) * angles.sin().float()
        return rotated.to(x.dtype)


def grouped_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    want_weights: bool,
):
    """Attention of ``q`` (``[Hq, T, D]``) over cached ``keys``/``values`` (``[Hkv, S, D]``).

    The query heads that share a kv head are folded into the query rows, so the
    cache is read once per kv head and never repeated in memory. ``mask``
    (``[1 or Hkv, T, S]``) says which keys each query may see.
    Returns the output ``[Hq, T, D]`` and, when asked, the weights ``[Hkv, G*T, S]``.
    """
    heads, tokens, dim = q.shape
    group = heads // keys.shape[0]
    q = q.reshape(keys.shape[0], group * tokens, dim)
    if mask is not None:
        mask = mask.repeat(1, group, 1)
    if want_weights:
        # Scale the few queries, not the many scores; mask in place: this path is hot.
        scores = (q * (1 / math.sqrt(dim))) @ keys.transpose(-1, -2)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        weights = scores.float().softmax(-1)
        out = weights.to(values.dtype) @ values
    else:
        attn_mask = None if mask is None else mask.unsqueeze(0)
        out = F.scaled_dot_product_attention(q[None], keys[None], values[None], attn_mask)[0]
        weights = None
    return out.view(heads, tokens, dim), weights


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

    def forward(self, x, positions, rope: RotaryEmbedding, cache: KVCacheManager | None):
        batch, tokens, width = x.shape
        q = self.q_proj(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, positions), rope(k, positions)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            cache.write(self.layer_index, k[0], v[0])
            keys, values, mask = cache.read(self.layer_index, positions)
            out, weights = grouped_attention(q[0], keys, values, mask, cache.tracks_attention)
            if weights is not None:
                cache.observe(self.layer_index, weights, mask)
            out = out[None]
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

    def forward(self, x, positions, rope, cache):
        x = x + self.self_attn(self.input_layernorm(x), positions, rope, cache)
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
        for layer in self.model.layers:
            x = layer(x, positions, self.rope, cache)
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
            rotate=self.rope.shift,
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
