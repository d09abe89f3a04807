"""Managed KV caches for decoder-only transformers. Knows nothing of Minecraft.

>>> manager = KVCacheManager("streaming", start_size=4, recent_size=512)

Each strategy declares itself on its class (:class:`Strategy`: parameters, defaults for a
model's :class:`Layout`, a budget -> parameters mapping) and is registered by name below
(:data:`STRATEGIES`); adding one is a file with its class and a line here.

The declarations load without torch, so that the command lines' ``--help`` (whose flags they
make) answers at once; the manager, which runs on tensors, loads torch on first use.
"""

import importlib

from .custom import CustomStrategy
from .frames import FrameWindow
from .h2o import HeavyHitters
from .hybrid import SinksHeavyRecent
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

_MANAGER_NAMES = ("ContextFull", "KVCacheManager", "StepMask")


def __getattr__(name: str):
    """``cache.KVCacheManager`` and the manager's other names, imported (with torch) when
    first asked for."""
    if name in _MANAGER_NAMES:
        return getattr(importlib.import_module(".manager", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
