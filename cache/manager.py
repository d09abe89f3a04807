"""KVCacheManager: the one entry point.

The manager owns the slots (:class:`cache.storage.KVStorage`), asks its
strategy which tokens to evict, keeps positions inside the model's trained
range, and counts what happened. A model uses it in four calls per forward pass:

* ``begin_step(positions)`` once, before the layers: evict and pick slots;
* ``write(layer, keys, values, raw_keys)``: store this step's keys (rotated, and
  as they were before rotation);
* ``read(layer, query_positions)``: live keys, values and a :class:`StepMask` (or ``None``);
* ``observe(layer, weights, mask)``: attention weights, for strategies that
  score by attention.

Callers that feed a sequence block by block call ``reserve(n)`` to get the
first position of the next ``n`` tokens; this is where positions are re-based.
A re-base rotates each key from its pre-RoPE form straight to its new position,
so the cached key is the one the model would compute there, however many
re-bases it went through: rounding cannot pile up (in fp16 as in fp32).
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable

import torch

from .registry import make_strategy
from .stats import CacheStats, debug_enabled, debug_log
from .storage import KVStorage
from .strategy import CacheView, Layout, Strategy


class StepMask:
    """Which cached keys the queries of one step may see.

    ``hidden`` is boolean ``[1 or kv_heads, n, S]`` (True: hidden) and ``additive`` the
    same as 0 / -inf scores, to add to ``[.., group, n, S]`` scores by broadcasting
    (adding is many times faster than ``masked_fill`` on a CPU); :meth:`folded` is the
    layout a fused kernel takes, built once per mask."""

    def __init__(self, hidden: torch.Tensor, dtype: torch.dtype):
        self.hidden = hidden
        minus_inf = torch.tensor(float("-inf"), dtype=dtype, device=hidden.device)
        self.additive = torch.where(hidden, minus_inf, minus_inf.new_zeros(()))
        self._folded: torch.Tensor | None = None

    def folded(self, group: int) -> torch.Tensor:
        """``additive`` as ``[1 or kv_heads, group * n, S]``: the query heads of a kv group
        folded into rows (row ``g * n + t`` is query ``t`` of head ``g``)."""
        if self._folded is None:
            self._folded = self.additive.repeat(1, group, 1)
        return self._folded

    def seen_counts(self) -> torch.Tensor:
        """How many of the step's queries see each key: ``[1 or kv_heads, S]``."""
        return self.hidden.shape[1] - self.hidden.sum(1)


class ScoreHeap:
    """The evictable slots of a ``fixed_score`` strategy (positions shared by all
    rows), lowest score first; protected (``inf``) slots are never entered."""

    def __init__(self):
        self.entries: list[tuple[float, int]] = []

    def __deepcopy__(self, memo) -> ScoreHeap:
        """A copy (a cache's fork): its entries are immutable, so the list alone is copied,
        not each of hundreds of entries one by one."""
        copied = ScoreHeap()
        copied.entries = list(self.entries)
        return copied

    def push(self, scores: torch.Tensor, slots: torch.Tensor) -> None:
        """Enter new ``slots`` with their ``scores`` (both ``[1, 1, n]``)."""
        for score, slot in zip(scores.flatten().tolist(), slots.flatten().tolist(), strict=True):
            if score != math.inf:
                heapq.heappush(self.entries, (score, slot))

    def rebuild(self, scores: torch.Tensor, live: torch.Tensor) -> None:
        """Start over from every slot's score (``[1, 1, C]``), keeping the ``live`` ones."""
        slots = (live & ~torch.isinf(scores)).flatten().nonzero().flatten()
        self.entries = sorted(zip(scores.flatten()[slots].tolist(), slots.tolist(), strict=True))

    def pop(self, count: int, device: torch.device) -> torch.Tensor:
        """The ``count`` lowest-scored slots, ``[1, 1, count]``, removed from the heap."""
        slots = [heapq.heappop(self.entries)[1] for _ in range(count)]
        return torch.tensor(slots, device=device).view(1, 1, -1)


class ContextFull(RuntimeError):
    """The full-context cache has no room left: the caller must start over."""


class KVCacheManager:
    """``strategy``: anything :func:`cache.registry.make_strategy` takes; ``layout``: the
    model's (the parameters not given are then the strategy's defaults for it, else its
    declared ones); ``prompt_len``: the prompt length to size budgets by (H2O's ``hh_ratio`` x
    prompt) when ``reset`` is not told one, as the published KV integration passed it."""

    def __init__(self, strategy: str | Strategy = "none", prompt_len: int | None = None,
                 layout: Layout | None = None, **params):
        self.strategy = make_strategy(strategy, layout, **params)
        if prompt_len is not None and (isinstance(prompt_len, bool) or
                                       not isinstance(prompt_len, int) or prompt_len < 0):
            raise ValueError(f"prompt_len must be a whole number >= 0, got {prompt_len!r}")
        self.prompt_len = prompt_len
        self.layout = layout
        self.storage: KVStorage | None = None
        self.stats = CacheStats()
        self.debug = debug_enabled()
        # Set by bind (the model's shapes); None until then.
        self.shape: tuple[int, int, int] | None = None
        self.max_positions: int | None = None
        self.rotate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        # Set by reset (a sequence).
        self.heap: ScoreHeap | None = None
        self.step_tokens = 0
        self.next_position = 0
        self.newest_position = -1
        # Set by begin_step (one forward pass).
        self.step_slots: torch.Tensor | None = None
        self.step_positions: torch.Tensor | None = None
        self.step_needs_mask = False
        self._shared_mask: StepMask | None = None

    # -- set-up ---------------------------------------------------------------

    def bind(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_positions: int,
        rotate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        """Tell the manager the model's shapes; ``rotate(keys, positions)`` rotates
        pre-RoPE keys (``[H, C, D]``) to ``positions`` (``[C]`` or ``[H, C]``) exactly
        as the model rotates new keys."""
        self.shape = (num_layers, num_kv_heads, head_dim)
        self.max_positions = max_positions
        self.rotate = rotate
        self.dtype, self.device = dtype, torch.device(device)

    def reset(self, prompt_length: int | None = None, step_tokens: int = 1,
              reserve_tokens: int | None = None) -> None:
        """Empty the cache for a new sequence.

        ``prompt_length``: tokens that will be prefilled (sets H2O's budget; default: the
        manager's ``prompt_len``, else 0); ``step_tokens``: the most tokens one forward pass
        will add; ``reserve_tokens``: the most positions one ``reserve`` takes (default
        ``step_tokens``), which the budget must leave free in the context, or a re-base could
        not bring them inside it. Storage is allocated on the first call and reused after.
        """
        if self.shape is None:
            raise RuntimeError("reset before bind: attach the manager to a model first "
                               "(model.setup_cache_manager(...) or model.new_cache(...))")
        if prompt_length is None:
            prompt_length = self.prompt_len or 0
        budget = self.strategy.budget(prompt_length)
        capacity = self.max_positions if budget is None else budget
        reserved = max(step_tokens, reserve_tokens or 0)
        self._check_budget(budget, capacity, step_tokens, reserved, prompt_length)
        storage = self.storage
        if storage is None or storage.capacity != capacity:
            storage = KVStorage(
                *self.shape,
                capacity,
                per_head_positions=self.strategy.per_head,
                track_attention=self.strategy.tracks_attention,
                count_queries=self.strategy.counts_queries,
                keep_raw_keys=budget is not None,  # a bounded cache re-bases
                dtype=self.dtype,
                device=self.device,
            )
            self.storage = storage
            self.stats.allocations += 1
        storage.clear()
        assert not (self.strategy.fixed_score and self.strategy.per_head), "one heap, shared rows"
        self.heap = ScoreHeap() if self.strategy.fixed_score else None
        self.step_tokens = step_tokens
        self.next_position = 0
        self.newest_position = -1
        self._update_stats()

    def _check_budget(self, budget: int | None, capacity: int, step_tokens: int,
                      reserved: int, prompt_length: int) -> None:
        """A ValueError, in the unit of the strategy's parameters, when ``budget`` leaves no
        room for a step of ``step_tokens`` or, in the context, for ``reserved`` positions; it
        suggests parameters that fit when the model's layout is known."""
        strategy = self.strategy
        size = strategy.size_text
        settings = ", ".join(f"{k}={v}" for k, v in strategy.describe().items())
        name = f"{strategy.name} ({settings})" if settings else strategy.name
        if capacity < step_tokens:
            raise ValueError(
                f"{name}: a budget of {size(capacity)} cannot hold one step of "
                f"{step_tokens} tokens; raise it to at least {step_tokens} tokens"
            )
        limit = self.max_positions - reserved
        if budget is not None and budget > limit:
            fitting = ""
            if self.layout is not None:
                params = type(strategy).for_budget(limit, self.layout, prompt_length)
                settable = {param.name for param in type(strategy).settable()}
                fitting = "; e.g. " + ", ".join(
                    f"{k}={v}" for k, v in params.items() if k in settable)
            raise ValueError(
                f"{name}: a budget of {size(budget)} plus a step of {reserved} tokens "
                f"exceeds the model's context of {size(self.max_positions)}; use at most "
                f"{size(limit)}{fitting}"
            )
        room = strategy.step_room(capacity)
        # A cache that packs positions makes room for a whole reservation at once.
        step = reserved if strategy.packs_positions else step_tokens
        if room < step:
            raise ValueError(
                f"{name}: its recent window holds {size(room)}, fewer than one step of "
                f"{step} tokens; enlarge it to at least {step} tokens"
            )

    # -- positions ------------------------------------------------------------

    def fork(self) -> KVCacheManager:
        """A copy that goes on from here without touching this one: its own storage, scores
        and statistics; the model's ``rotate`` is shared."""
        return copy.deepcopy(self, {id(self.rotate): self.rotate})

    def _reset_storage(self) -> KVStorage:
        """The storage of the sequence under way; a RuntimeError before the first ``reset``."""
        if self.storage is None:
            raise RuntimeError("no sequence yet: call reset(prompt_length, step_tokens) first")
        return self.storage

    @property
    def step_room(self) -> int:
        """Most tokens one forward pass may add (prefill chunks are cut to this)."""
        return self.strategy.step_room(self._reset_storage().capacity)

    def can_reserve(self, count: int) -> bool:
        """Whether ``count`` more positions fit (always, for evicting strategies)."""
        evicting = self._reset_storage().capacity < self.max_positions
        return evicting or self.next_position + count <= self.max_positions

    def reserve(self, count: int) -> int:
        """First position of the next ``count`` tokens; re-bases positions if needed."""
        storage = self._reset_storage()
        if self.strategy.packs_positions:  # room for the tokens coming, then places from 0
            self._evict(storage.num_live + count - storage.capacity, count)
            if storage.num_live:
                self._rebase()
        elif self.next_position + count > self.max_positions:
            if storage.capacity >= self.max_positions:
                raise ContextFull(
                    f"the full context of {self.max_positions} positions is used up"
                )
            self._rebase()
        base = self.next_position
        self.next_position += count
        return base

    def _rebase(self) -> None:
        """Close the gaps between live positions (in multiples of the strategy's
        stride) and rotate every key from its pre-RoPE form to its new position."""
        storage, stride = self.storage, self.strategy.position_stride
        live_count = storage.num_live
        if live_count == 0:
            self.next_position %= stride
            return
        positions = storage.positions
        ordered, order = positions.masked_fill(positions < 0, torch.iinfo(torch.long).max).sort(-1)
        ordered, order = ordered[..., :live_count], order[..., :live_count]
        previous = torch.cat([torch.full_like(ordered[..., :1], -1), ordered[..., :-1]], -1)
        closed = (ordered - previous - 1) % stride + 1  # a gap keeps its phase modulo stride
        moved = closed.cumsum(-1) - 1
        # The positions after the newest live token are reserved for tokens not written yet
        # (a frame's last token waits for the next action): kept exactly, or the first of
        # them would land on the position of the token before it.
        tail = self.next_position - ordered[..., -1]
        next_positions = (moved[..., -1] + tail).unique()
        assert next_positions.numel() == 1, "rows disagree on the next position"
        if torch.equal(moved, ordered):  # already packed (a cache re-based every step)
            return
        positions.scatter_(-1, order, moved)
        end = storage.high_water
        for layer in range(storage.keys.shape[0]):
            row = storage.layer_positions(layer).clamp(min=0)  # dead slots: any position
            storage.keys[layer, :, :end] = self.rotate(storage.raw_keys[layer, :, :end], row)
        if self.heap is not None:  # scores follow positions, whose order was kept
            view = self._view(positions, incoming=0)
            self.heap.rebuild(self.strategy.keep_score(view), positions >= 0)
        old_next = self.next_position
        self.next_position = int(next_positions)
        self.newest_position = int(moved[..., -1].max())
        self.stats.rebases += 1
        if self.debug:
            shift = moved - ordered
            debug_log(
                f"rebase strategy={self.strategy.name} positions shifted by "
                f"{int(shift.min())}..{int(shift.max())}, next position {old_next} -> "
                f"{self.next_position}"
            )

    # -- one forward pass -----------------------------------------------------

    def begin_step(self, positions: torch.Tensor) -> None:
        """Make room for the tokens at ``positions`` (``[n]``) and pick their slots."""
        storage = self._reset_storage()
        count = positions.numel()
        self._evict(storage.num_live + count - storage.capacity, count)
        slots = storage.claim(positions)  # the evicted slots first: no data moves
        if self.heap is not None:
            self.heap.push(self.strategy.keep_score(self._view(positions.view(1, 1, -1))), slots)
        self.step_slots = slots if storage.per_head else slots[0, 0]  # as write wants them
        self.step_positions = positions
        newest = int(positions.max())
        # Causal order needs a mask unless this is one token after everything cached.
        self.step_needs_mask = (
            count > 1 or newest <= self.newest_position or storage.num_live < storage.high_water
        )
        self.newest_position = max(self.newest_position, newest)
        self._shared_mask = None  # positions shared by all layers: one mask per step

    def _view(self, positions: torch.Tensor, incoming: int = 0) -> CacheView:
        """What the strategy scores: every slot, or (``fixed_score``) ``positions`` alone."""
        storage, fixed = self.storage, self.strategy.fixed_score
        return CacheView(
            positions=positions,
            keys=None if fixed else storage.keys,
            values=None if fixed else storage.values,
            attention=storage.attention,
            seen=storage.seen,
            newest_position=self.newest_position,
            incoming=incoming,
        )

    def _evict(self, needed: int, incoming: int) -> None:
        storage = self.storage
        if self.heap is None:  # a custom strategy is asked every step, even with room left
            victims = self.strategy.victims(self._view(storage.positions, incoming), needed)
        elif needed <= 0:
            return
        else:
            count = self.strategy.evict_count(needed)
            if count > len(self.heap.entries):
                raise RuntimeError(
                    f"{self.strategy.name}: only {len(self.heap.entries)} cached tokens may be "
                    f"evicted; no room for {incoming} new tokens"
                )
            victims = self.heap.pop(count, storage.positions.device)
        if victims is None or victims.shape[-1] == 0:
            return
        count = victims.shape[-1]
        if storage.num_live - count + incoming > storage.capacity:  # a custom policy's doing
            raise ValueError(
                f"{self.strategy.name}: kept {storage.num_live - count} tokens, no room for "
                f"{incoming} more in a budget of {storage.capacity}"
            )
        if self.debug:
            self._log_eviction(victims)
        if storage.attention is not None:
            self._count_attention(victims, incoming)
        storage.kill(victims)
        self.stats.evicted_tokens += count
        self.stats.eviction_events += 1

    def _count_attention(self, victims: torch.Tensor, incoming: int) -> None:
        """Add an eviction's accumulated attention to the statistics: the whole cache's, the
        victims', and the kept tokens' by role (the strategy's protected roles, then the rest
        as its ``scored_role``)."""
        storage, stats = self.storage, self.stats
        attention = storage.attention
        victims = victims.expand(*attention.shape[:2], -1)
        stats.attention_before_evictions += float(attention.sum())
        stats.attention_evicted += float(attention.gather(-1, victims).sum())
        kept = (storage.positions >= 0).expand_as(attention).scatter(-1, victims, False)
        roles = self.strategy.protected(self._view(storage.positions, incoming))
        # Each protected role takes its kept slots in turn; the scored role, what is left.
        for role, mask in [*roles.items(), (self.strategy.scored_role, None)]:
            mine = kept if mask is None else kept & mask
            held = float(torch.where(mine, attention, 0.0).sum())
            stats.attention_kept_by_role[role] = stats.attention_kept_by_role.get(role, 0.0) + held
            kept = kept & ~mine

    def _log_eviction(self, victims: torch.Tensor) -> None:
        """One line per layer (one for all when layers share positions), head 0 shown."""
        evicted = self.storage.positions.gather(-1, victims)
        layers = range(victims.shape[0]) if self.storage.per_head else ["all"]
        for row, layer in enumerate(layers):
            slots, positions = victims[row, 0].tolist(), evicted[row, 0].tolist()
            debug_log(
                f"evict strategy={self.strategy.name} layer={layer} count={len(slots)} "
                f"slots={slots[:12]} positions={sorted(positions)[:12]}"
            )

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, raw_keys: torch.Tensor
    ) -> None:
        """Store this step's ``keys`` (rotated to their positions), ``values`` and
        ``raw_keys`` (the keys before rotation), each ``[kv_heads, n, head_dim]``."""
        self.storage.write(layer, self.step_slots, keys, values, raw_keys)

    def read(self, layer: int, query_positions: torch.Tensor):
        """Keys and values of the slots in use (``[kv_heads, S, head_dim]``) and the
        :class:`StepMask` of the keys each query may not see (``None`` when every query
        sees every key). When layers share positions, one mask serves the whole step."""
        storage = self.storage
        end = storage.high_water
        keys, values = storage.keys[layer, :, :end], storage.values[layer, :, :end]
        if not self.step_needs_mask:
            return keys, values, None
        if self._shared_mask is not None:
            return keys, values, self._shared_mask
        key_positions = storage.layer_positions(layer)
        hidden = (key_positions < 0).unsqueeze(1) | (
            key_positions.unsqueeze(1) > query_positions.view(1, -1, 1)
        )
        mask = StepMask(hidden, self.dtype)
        if not storage.per_head:
            self._shared_mask = mask
        return keys, values, mask

    @property
    def tracks_attention(self) -> bool:
        return self.strategy.tracks_attention

    def observe(self, layer: int, weights: torch.Tensor, mask: StepMask | None) -> None:
        """Accumulate attention ``weights`` (``[kv_heads, group * n, S]``) per key;
        ``mask`` as :meth:`read` gave it."""
        storage = self.storage
        end = weights.shape[-1]
        storage.attention[layer, :, :end] += weights.sum(1)
        if storage.seen is not None:
            seen = self.step_positions.numel() if mask is None else mask.seen_counts()
            storage.seen[layer, :, :end] += seen

    def end_step(self) -> None:
        self._update_stats()

    # -- statistics -----------------------------------------------------------

    def record_reprefill(self, seconds: float) -> None:
        """Count a re-prefill: the caller started over from a shorter context."""
        self.stats.reprefills += 1
        self.stats.reprefill_seconds += seconds
        if self.debug:
            debug_log(f"reprefill strategy={self.strategy.name} {self.storage.num_live} tokens "
                      f"prefilled again in {1000 * seconds:.0f} ms")

    def _update_stats(self) -> None:
        storage, stats = self.storage, self.stats
        stats.live_tokens = storage.num_live
        stats.capacity_tokens = storage.capacity
        stats.bytes_allocated = storage.bytes_allocated()
        stats.bytes_live = storage.num_live * storage.bytes_per_token()
        stats.highest_position = self.newest_position
        stats.next_position = self.next_position

    def describe(self) -> dict:
        return {"strategy": self.strategy.name, **self.strategy.describe()}
