"""Managed KV caches for decoder-only transformers. Knows nothing of Minecraft.

>>> manager = KVCacheManager("streaming", start_size=4, recent_size=512)

Strategies are registered by name (:data:`STRATEGIES`); a new one is a small
:class:`Strategy` subclass passed to :func:`register`.
"""

from .manager import STRATEGIES, ContextFull, KVCacheManager, StepMask, make_strategy, register
from .strategy import CacheView, Strategy

__all__ = [
    "STRATEGIES",
    "CacheView",
    "ContextFull",
    "KVCacheManager",
    "StepMask",
    "Strategy",
    "make_strategy",
    "register",
]
