"""The KV-cache flags of both command lines, made from the strategies' declarations: a flag per
parameter any strategy declares, so a new strategy needs no change here. The declarations load
without torch, gradio or the model code, so ``--help`` answers at once."""

from __future__ import annotations

import argparse

from cache import DEFAULT_STRATEGY, Param, declared, names, strategy_class
from mineworld.cli import positive_float


def flag(param: Param) -> str:
    return "--" + param.name.replace("_", "-")


def cache_params() -> dict[str, tuple[Param, list[str]]]:
    """Each settable parameter by name, with the strategies that take it (one flag each)."""
    found: dict[str, tuple[Param, list[str]]] = {}
    for strategy, cls in declared().items():
        for param in cls.settable():
            first, takers = found.setdefault(param.name, (param, []))
            if first.type is not param.type:
                raise TypeError(f"parameter {param.name} is a {first.type.__name__} for "
                                f"{takers[0]} but a {param.type.__name__} for {strategy}")
            takers.append(strategy)
    return found


def strategy_spec(text: str) -> str:
    """argparse type of ``--cache-strategy``: a registered name or a package.module:Class
    that can be imported."""
    try:
        strategy_class(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_cache_flags(parser: argparse.ArgumentParser, description: str,
                    default_strategy: str = DEFAULT_STRATEGY) -> None:
    """``--cache-strategy`` (``default_strategy`` when not given) and a flag per declared
    parameter, in a "KV cache" group."""
    group = parser.add_argument_group(
        "KV cache", f"{description}; a default too large for the model's context is lowered "
        "to fit it")
    group.add_argument(
        "--cache-strategy", type=strategy_spec, default=default_strategy, metavar="NAME",
        help=f"{', '.join(names())}, or package.module:Class (a Strategy, or a class of the "
        f"(K, V) protocol made with no arguments) (default: {default_strategy})",
    )
    group.add_argument(
        "--kv-budget-mb", type=positive_float, metavar="MB",
        help="KV memory to keep, in MiB: the strategy's parameters that fit it on the loaded "
        "model (its own budget mapping; the strategy's flags given win)")
    group.add_argument(
        "--target-fps", type=positive_float, metavar="F",
        help="the largest KV budget (and, if need be, diagonal decoding) that makes F frames a "
        "second on the loaded model, from a short measurement at start (the strategy's flags "
        "given win)")
    for name, (param, strategies) in cache_params().items():
        if param.type is bool:
            kind = {"action": argparse.BooleanOptionalAction}
            bounds = f"default: {'on' if param.default else 'off'}"
        else:
            kind = {"type": param.type}
            default = "" if param.default is None else f"; default {param.default}"
            bounds = param.range_text + default
        group.add_argument(flag(param), dest=name, default=None, **kind,
                           help=f"{', '.join(strategies)}: {param.help} ({bounds})")


def strategy_params(args: argparse.Namespace) -> dict:
    """The cache flags the user set, as parameters of the chosen strategy; a ValueError names
    a flag the strategy does not take."""
    spec = args.cache_strategy
    takes = [param.name for param in strategy_class(spec).settable()]
    params = {}
    for name, (param, _strategies) in cache_params().items():
        value = getattr(args, name)
        if value is None:
            continue
        if name not in takes:
            listing = f"it takes: {', '.join(takes)}" if takes else "it takes no parameters"
            raise ValueError(f"{flag(param)} is not a parameter of strategy {spec!r} ({listing})")
        params[name] = value
    return params
