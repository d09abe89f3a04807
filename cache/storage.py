"""Preallocated KV slots for every layer, with a slot -> position table.

A slot holds one token's key and value. Slots are allocated once, for the
strategy's budget; evicting a token marks its slot dead (position -1) and puts
it on a list of spare slots that the next tokens are written over, so a decode
step moves no cached data and finds its slots without scanning the table.
Every (layer, kv head) row always holds the same number of live tokens, which
keeps the tensors dense: attention reads slots ``[0, high_water)``.

Positions are either shared by all layers and heads (shape ``[1, 1, C]``) or
kept per row (``[L, H, C]``) for strategies that evict per kv head.

Keys are stored rotated to their positions (what attention reads) and, when
positions may be re-based, also as they were before rotation, so that a re-based
key is rotated once from its original form rather than again and again.
"""

from __future__ import annotations

import torch

DEAD = -1


def kv_bytes_per_token(layers: int, heads: int, dim: int, element_size: int,
                       raw_keys: bool) -> int:
    """Bytes one token takes in a cache: its keys (and, when kept for re-basing, its keys
    before rotation) and values, in every layer and kv head."""
    return (3 if raw_keys else 2) * layers * heads * dim * element_size


class KVStorage:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        per_head_positions: bool,
        track_attention: bool,
        count_queries: bool,
        keep_raw_keys: bool,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (num_layers, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        # Keys before rotation: what a re-base rotates from (see the module doc).
        self.raw_keys = torch.zeros(shape, dtype=dtype, device=device) if keep_raw_keys else None
        rows = (num_layers, num_kv_heads) if per_head_positions else (1, 1)
        self.positions = torch.full((*rows, capacity), DEAD, dtype=torch.long, device=device)
        # Accumulated attention each key received (H2O), and how many queries saw it (only
        # when the strategy normalises by that count).
        self.attention = (
            torch.zeros((num_layers, num_kv_heads, capacity), dtype=torch.float32, device=device)
            if track_attention
            else None
        )
        self.seen = torch.zeros_like(self.attention) if count_queries else None
        # Each layer's K, V (and raw K) stores, sliced once here rather than at every write.
        stores = [t for t in (self.keys, self.values, self.raw_keys) if t is not None]
        self.layer_stores = list(zip(*(t.unbind(0) for t in stores), strict=True))
        self.capacity = capacity
        self.num_live = 0
        self.high_water = 0  # slots at or above this index were never written
        self.spare = self.positions[..., :0]  # dead slots below high_water, [rows, heads, m]

    @property
    def per_head(self) -> bool:
        return self.positions.shape[0] > 1

    def bytes_allocated(self) -> int:
        tensors = [self.keys, self.values, self.raw_keys, self.positions, self.attention, self.seen]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def bytes_per_token(self) -> int:
        """Bytes of one token's keys (rotated and raw, when kept) and values, all layers."""
        layers, heads, _, dim = self.keys.shape
        return kv_bytes_per_token(layers, heads, dim, self.keys.element_size(),
                                  self.raw_keys is not None)

    def clear(self) -> None:
        self.positions.fill_(DEAD)
        for scores in (self.attention, self.seen):
            if scores is not None:
                scores.zero_()
        self.num_live = 0
        self.high_water = 0
        self.spare = self.positions[..., :0]

    def kill(self, slots: torch.Tensor) -> None:
        """Mark ``slots`` (``[rows, heads, k]`` matching the position table) dead."""
        self.positions.scatter_(-1, slots, DEAD)
        for scores in (self.attention, self.seen):
            if scores is not None:
                scores.scatter_(-1, slots.expand(*scores.shape[:2], -1), 0.0)
        self.num_live -= slots.shape[-1]
        self.spare = torch.cat([self.spare, slots], -1) if self.spare.shape[-1] else slots

    def claim(self, positions: torch.Tensor) -> torch.Tensor:
        """Slots (``[rows, heads, n]``) for new tokens at ``positions`` (``[n]``): spare
        slots first, then never-written ones."""
        count = positions.numel()
        reused = min(count, self.spare.shape[-1])
        slots, self.spare = self.spare[..., :reused], self.spare[..., reused:]
        if reused < count:
            start, self.high_water = self.high_water, self.high_water + count - reused
            fresh = torch.arange(start, self.high_water, device=self.positions.device)
            fresh = fresh.expand(*self.positions.shape[:2], -1)
            slots = torch.cat([slots, fresh], -1) if reused else fresh
        self.positions.scatter_(-1, slots, positions.expand_as(slots))
        self.num_live += count
        return slots

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        raw_keys: torch.Tensor,
    ) -> None:
        """Store one layer's new ``keys``/``values``/``raw_keys`` (``[H, n, D]``) in
        ``slots``: ``[rows, heads, n]`` as claimed, or ``[n]`` when positions are shared."""
        stores = self.layer_stores[layer]
        news = (keys, values, raw_keys)[: len(stores)]
        if slots.dim() == 1:  # the same slots in every head: copy rows, no index to build
            for store, new in zip(stores, news, strict=True):
                store.index_copy_(1, slots, new)
            return
        index = slots[layer].unsqueeze(-1).expand(keys.shape[0], -1, keys.shape[-1])
        for store, new in zip(stores, news, strict=True):
            store.scatter_(1, index, new)

    def layer_positions(self, layer: int) -> torch.Tensor:
        """Positions of slots ``[0, high_water)`` for ``layer``: ``[H or 1, high_water]``."""
        return self.positions[layer if self.per_head else 0, :, : self.high_water]
