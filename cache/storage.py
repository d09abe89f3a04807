"""Preallocated KV slots for every layer, with a slot -> position table.

A slot holds one token's key and value. Slots are allocated once, for the
strategy's budget; evicting a token only marks its slot dead (position -1) and
the next token is written over it, so a decode step moves no cached data.
Every (layer, kv head) row always holds the same number of live tokens, which
keeps the tensors dense: attention reads slots ``[0, high_water)``.

Positions are either shared by all layers and heads (shape ``[1, 1, C]``) or
kept per row (``[L, H, C]``) for strategies that evict per kv head.
"""

from __future__ import annotations

import torch

DEAD = -1


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
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (num_layers, num_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        rows = (num_layers, num_kv_heads) if per_head_positions else (1, 1)
        self.positions = torch.full((*rows, capacity), DEAD, dtype=torch.long, device=device)
        # Accumulated attention each key received, and how many queries saw it (H2O).
        self.attention = (
            torch.zeros((num_layers, num_kv_heads, capacity), dtype=torch.float32, device=device)
            if track_attention
            else None
        )
        self.seen = torch.zeros_like(self.attention) if track_attention else None
        self.capacity = capacity
        self.num_live = 0
        self.high_water = 0  # slots at or above this index were never written

    @property
    def per_head(self) -> bool:
        return self.positions.shape[0] > 1

    def bytes_allocated(self) -> int:
        tensors = [self.keys, self.values, self.positions, self.attention, self.seen]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def bytes_per_token(self) -> int:
        """Key + value bytes of one token across all layers and heads."""
        layers, heads, _, dim = self.keys.shape
        return 2 * layers * heads * dim * self.keys.element_size()

    def clear(self) -> None:
        self.positions.fill_(DEAD)
        if self.attention is not None:
            self.attention.zero_()
            self.seen.zero_()
        self.num_live = 0
        self.high_water = 0

    def kill(self, slots: torch.Tensor) -> None:
        """Mark ``slots`` (``[rows, heads, k]`` matching the position table) dead."""
        self.positions.scatter_(-1, slots, DEAD)
        if self.attention is not None:
            full = slots.expand(*self.attention.shape[:2], -1)
            self.attention.scatter_(-1, full, 0.0)
            self.seen.scatter_(-1, full, 0.0)
        self.num_live -= slots.shape[-1]

    def free_slots(self, count: int) -> torch.Tensor:
        """The ``count`` lowest free slots of every row, ``[rows, heads, count]``."""
        if self.num_live == self.high_water:  # no holes: the next slots are untouched
            start = self.high_water
            slots = torch.arange(start, start + count, device=self.positions.device)
            return slots.expand(*self.positions.shape[:2], count)
        free = (self.positions < 0).nonzero()[:, -1]
        return free.view(*self.positions.shape[:2], -1)[..., :count]

    def claim(self, slots: torch.Tensor, positions: torch.Tensor) -> None:
        """Give ``slots`` (``[rows, heads, n]``) the new tokens' ``positions`` (``[n]``)."""
        self.positions.scatter_(-1, slots, positions.expand_as(slots))
        self.num_live += slots.shape[-1]
        self.high_water = max(self.high_water, int(slots.max()) + 1)

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Store one layer's new ``keys``/``values`` (``[H, n, D]``) in ``slots``."""
        row = slots[layer if self.per_head else 0]  # [H or 1, n]
        index = row.unsqueeze(-1).expand(keys.shape[0], -1, keys.shape[-1])
        self.keys[layer].scatter_(1, index, keys)
        self.values[layer].scatter_(1, index, values)

    def layer_positions(self, layer: int) -> torch.Tensor:
        """Positions of slots ``[0, high_water)`` for ``layer``: ``[H or 1, high_water]``."""
        return self.positions[layer if self.per_head else 0, :, : self.high_water]
