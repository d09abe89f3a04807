"""Managed KV caches for decoder-only transformers. Knows nothing of Minecraft.

>>> manager = KVCacheManager("streaming", start_size=4, recent_size=512)

Each strategy declares itself on its class (:class:`Strategy`: parameters, defaults for a
model's :class:`Layout`, a budget -> parameters mapping) and is registered by name below
(:data:`STRATEGIES`); adding one is a file with its class and a line here.
"""

from .custom import CustomStrategy
from .frames import FrameWindow
from .h2o import HeavyHitters
from .hybrid import SinksHeavyRecent
from .manager import ContextFull, KVCacheManager, StepMask
from .none import FullContext
from .registry import (
    STRATEGIES,
    declared,
    is_class_path,
    make_strategy,
    names,
    register,
    strategy_class,
)
from .strategy import ROLES, CacheView, Layout, Param, Strategy
from .streaming import StreamingLLM

for _builtin in (FullContext, StreamingLLM, HeavyHitters, SinksHeavyRecent, FrameWindow):
    register(_builtin)
DEFAULT_STRATEGY = FullContext.name  # MineWorld's own: keep everything, re-prefill when full

__all__ = [
    "DEFAULT_STRATEGY",
    "ROLES",
    "STRATEGIES",
    "CacheView",
    "ContextFull",
    "CustomStrategy",
    "KVCacheManager",
    "Layout",
    "Param",
    "StepMask",
    "Strategy",
    "declared",
    "is_class_path",
    "make_strategy",
    "names",
    "register",
    "strategy_class",
]
