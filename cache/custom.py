"""Run a strategy written for per-layer ``(K, V)`` tensors, unchanged.

The protocol is StreamingLLM's ``StartRecentKVCache`` and the classes modelled on
it: an object with ``__call__(past_key_values)`` and
``evict_for_space(past_key_values, num_coming)``, where ``past_key_values`` is a
list with one ``(K, V)`` pair per layer, each ``[1, kv_heads, S, head_dim]`` with
the sequence in position order, and the answer is such a list holding a selection
of those tokens.

Before every step the adapter hands the policy the live tokens in position order
and keeps the slots whose key and value come back; the rest are evicted. The budget is
the policy's ``cache_size`` unless one is given, and a step feeds at most its
``recent_size`` tokens when it has one (StreamingLLM's class makes room for no more). It is
slower than a native strategy (each step gathers the whole cache into position
order), and the policy must select tokens, not alter them. Positions are packed
like ``h2o``'s when the trained range would be left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .strategy import CacheView, Layout, Param, Strategy

if TYPE_CHECKING:  # imported where it runs: declaring the strategies loads no torch
    import torch


def fingerprint(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """An integer per token from the exact bits of its key and value (``[..., n]``).
    Integer sums are exact, so a copied or re-sliced token gives the same number."""
    import torch

    both = torch.cat([keys, values], -1).contiguous()
    bits = both.view({2: torch.int16, 4: torch.int32}[both.element_size()]).long()
    mixer = torch.Generator().manual_seed(0)
    weights = torch.randint(1, 2**31, (bits.shape[-1],), generator=mixer) * 2 + 1
    return (bits * weights.to(bits.device)).sum(-1)


class CustomStrategy(Strategy):
    """The adapter: ``policy`` is an object of the protocol; ``budget`` the most tokens it
    keeps (default: its ``cache_size``, as StreamingLLM's class has)."""

    name = "custom"
    params = (Param("budget", int, low=1, help="the most tokens a package.module:Class of the "
                    "(K, V) protocol keeps (default: its cache_size)"),)
    per_head = True

    def __init__(self, policy, **values):
        methods = ("__call__", "evict_for_space")
        missing = [m for m in methods if not callable(getattr(policy, m, None))]
        if missing:
            raise ValueError(
                f"a custom strategy needs __call__(past_key_values) and "
                f"evict_for_space(past_key_values, num_coming); {type(policy).__name__} "
                f"lacks {', '.join(missing)}"
            )
        if values.get("budget") is None:
            values["budget"] = getattr(policy, "cache_size", None)
        if values["budget"] is None:
            raise ValueError(
                f"custom strategy {type(policy).__name__}: how many tokens does it keep? Pass "
                f"budget=N (--budget N), or give it a cache_size attribute"
            )
        self.budget_tokens = self.checked(values)["budget"]  # budget() is the method
        self.policy = policy
        # StreamingLLM's class makes room for at most its recent window in one call.
        recent = getattr(policy, "recent_size", None)
        self.step_tokens = recent if isinstance(recent, int) and recent > 0 else None

    @classmethod
    def defaults(cls, layout: Layout) -> dict:
        return {}  # the budget is the policy's own cache_size unless one is given

    @classmethod
    def for_budget(cls, tokens: int, layout: Layout, prompt_length: int | None = None) -> dict:
        return {"budget": tokens}

    def budget(self, prompt_length: int) -> int:
        return self.budget_tokens

    def step_room(self, budget: int) -> int:
        return budget if self.step_tokens is None else min(budget, self.step_tokens)

    def describe(self) -> dict:
        return {"policy": type(self.policy).__name__, "budget": self.budget_tokens}

    def victims(self, view: CacheView, needed: int) -> torch.Tensor | None:
        import torch

        positions = view.positions  # [layers, heads, C]
        live = positions >= 0
        count = int(live[0, 0].sum())
        if count == 0:
            return None
        order = positions.masked_fill(~live, torch.iinfo(torch.long).max).argsort(-1)
        order = order[..., :count]  # live slots in position order
        past = []
        for layer, slots in enumerate(order):
            index = slots.unsqueeze(-1).expand(-1, -1, view.keys.shape[-1])
            past.append(
                (view.keys[layer].gather(1, index)[None], view.values[layer].gather(1, index)[None])
            )
        kept = self.policy.evict_for_space(past, view.incoming)
        keep = torch.zeros_like(live)
        for layer, ((keys, values), slots) in enumerate(zip(past, order, strict=True)):
            prints = fingerprint(keys[0], values[0])
            keep[layer].scatter_(-1, self._match(prints, slots, *kept[layer]), True)
        evict = live & ~keep
        per_row = evict.sum(-1)
        if not bool((per_row == per_row.flatten()[0]).all()):
            raise ValueError(
                f"custom strategy {type(self.policy).__name__} kept different numbers of "
                f"tokens in different layers or heads ({sorted(set(per_row.flatten().tolist()))})"
            )
        return evict.nonzero()[:, -1].view(*positions.shape[:2], -1)

    def _match(self, live_prints, slots, kept_keys, kept_values) -> torch.Tensor:
        """Slots ``[heads, m]`` of the tokens the policy returned."""
        import torch

        ordered, rank = live_prints.sort(-1)
        wanted = fingerprint(kept_keys[0], kept_values[0])
        at = torch.searchsorted(ordered, wanted).clamp(max=ordered.shape[-1] - 1)
        if not bool((ordered.gather(-1, at) == wanted).all()):
            raise ValueError(
                f"custom strategy {type(self.policy).__name__} returned keys or values that "
                f"are not in the cache: it must select tokens, not change them"
            )
        return slots.gather(-1, rank.gather(-1, at))
