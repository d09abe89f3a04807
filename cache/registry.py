"""The strategies by name, and what a name or a ``package.module:Class`` stands for.

Built-in strategies are registered in ``cache/__init__.py``; anyone may ``register`` more.
Everything outside ``cache/`` learns the strategies and their parameters here.
"""

from __future__ import annotations

import importlib

from .custom import CustomStrategy
from .strategy import Layout, Strategy

STRATEGIES: dict[str, type[Strategy]] = {}  # in registration order


def register(cls: type[Strategy]) -> type[Strategy]:
    """Make a strategy class available by its ``name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"register takes a Strategy subclass, got {cls!r}")
    if ":" in cls.name:
        raise ValueError(f"strategy name {cls.name!r}: a ':' would read as package.module:Class")
    STRATEGIES[cls.name] = cls
    return cls


def names() -> list[str]:
    """The registered names, in registration order."""
    return list(STRATEGIES)


def declared() -> dict[str, type[Strategy]]:
    """Every declaration a user may set parameters of: the registered strategies, then the
    adapter that runs a ``package.module:Class`` of the (K, V) protocol, as ``custom``."""
    return {**STRATEGIES, CustomStrategy.name: CustomStrategy}


def is_class_path(spec: str) -> bool:
    return ":" in spec


def import_class_path(spec: str):
    """The object ``package.module:Class`` names; ValueError saying what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a custom strategy is named package.module:Class, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module, whatever it raises: said in one line
        raise ValueError(f"strategy {spec!r}: cannot import {module_name} "
                         f"({type(error).__name__}: {error})") from None
    found = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"strategy {spec!r}: {module_name} has no {attribute}")
    return found


def strategy_class(spec: str) -> type[Strategy]:
    """The declaration ``spec`` runs under: a registered strategy, a ``package.module:Class``
    that is a Strategy, or else the (K, V)-protocol adapter."""
    if not is_class_path(spec):
        if spec not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {sorted(STRATEGIES)} or package.module:Class, "
                f"got {spec!r}"
            )
        return STRATEGIES[spec]
    found = import_class_path(spec)
    if isinstance(found, type) and issubclass(found, Strategy):
        return found
    return CustomStrategy


def make_strategy(spec, layout: Layout | None = None, **params) -> Strategy:
    """A strategy from a registered name, a ``package.module:Class`` (a Strategy subclass, or
    a class of the (K, V) protocol, made with no arguments), a :class:`Strategy` subclass or
    object, or an object of the (K, V) protocol (see :mod:`cache.custom`).

    With a ``layout``, the parameters not given are the strategy's defaults for it."""
    if isinstance(spec, Strategy):
        if params:
            raise ValueError("pass parameters to the strategy object, not to the manager")
        return spec
    if isinstance(spec, str):
        spec = import_class_path(spec) if is_class_path(spec) else strategy_class(spec)
    if isinstance(spec, type) and issubclass(spec, Strategy):
        if spec is CustomStrategy:
            raise ValueError("a custom strategy is its (K, V) policy: pass the policy object")
        defaults = spec.defaults(layout) if layout is not None else {}
        return spec(**{**defaults, **params})
    if isinstance(spec, type):  # a (K, V)-protocol class named by its path
        try:
            spec = spec()
        except TypeError as error:
            raise ValueError(
                f"custom strategy {spec.__name__} cannot be made without arguments ({error}); "
                f"give its parameters defaults"
            ) from None
    return CustomStrategy(spec, **params)
