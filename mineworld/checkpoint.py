"""Reading and writing transformer weights, safely and with errors that say what is wrong.

A MineWorld checkpoint is a PyTorch pickle holding ``{"state_dict": {...}}`` in which the
transformer's keys carry the prefix ``transformer.`` and the VQGAN's ``tokenizer.model.``.
A pickle can run arbitrary code when loaded, so pickles are only ever read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers;
safetensors files (``.safetensors``) hold nothing but tensors to begin with.

The transformer is built on the ``meta`` device and takes the loaded tensors as its
parameters (``assign=True``), so a 1.2B model is never allocated twice. Every problem
(missing file, corrupt file, code in a pickle, keys that do not fit the config) is a
:class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from .config import ModelConfig
from .model import RotaryEmbedding, SideBySideLinears, Transformer, join_linear_weights

TRANSFORMER_PREFIX = "transformer."
# Keys of a bare LlamaForCausalLM state dict, as our Transformer names them too.
_BARE_PREFIXES = ("model.", "lm_head.")
# Containers that training frameworks wrap a state dict in, tried in this order.
_WRAPPERS = ("state_dict", "model", "module")
_LISTED = 10


class CheckpointError(ValueError):
    """A weights file that cannot be used: missing, corrupt, unsafe or not fitting the model."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, on the CPU, keyed by name.

    ``.safetensors`` files are read as safetensors, anything else with
    ``torch.load(weights_only=True)``. If the file holds a dict with a ``state_dict``,
    ``model`` or ``module`` entry that is itself a dict (the first of these found), that
    entry is the state dict (Lightning-style and DDP-style wrappers); otherwise the top level is.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise CheckpointError(f"{path}: {what}")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except SafetensorError as error:
            raise CheckpointError(f"{path}: not a safetensors file ({error})") from None
    content = _load_pickle(path)
    if isinstance(content, Mapping):
        for wrapper in _WRAPPERS:
            if isinstance(content.get(wrapper), Mapping):
                content = content[wrapper]
                break
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a dict of tensors")
    wrong = [
        f"{key!r} ({type(value).__name__})"
        for key, value in content.items()
        if not (isinstance(key, str) and isinstance(value, torch.Tensor))
    ]
    if wrong or not content:
        detail = "it is empty" if not content else "not tensors: " + _listing(wrong)
        raise CheckpointError(f"{path}: not a dict of tensors, {detail}")
    return dict(content)


def _load_pickle(path: Path):
    """``torch.load`` with tensors only, every failure turned into a CheckpointError."""
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    # torch.save writes a zip archive; the legacy format is a bare pickle (PROTO opcode 0x80).
    if not head:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; "
            f"starts with {head!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _unpickler_reason(error)
        if "global" in reason.lower():  # the tensors-only unpickler met a class or function
            raise CheckpointError(
                f"{path}: the file contains code or objects other than tensors "
                f"({reason}); it was not loaded"
            ) from None
        raise CheckpointError(
            f"{path}: not a tensors-only PyTorch checkpoint ({reason}); it was not loaded"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # torch reports corrupt files as many exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint, corrupt or truncated "
            f"({type(error).__name__}: {first_line})"
        ) from None


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The restricted unpickler's own complaint, without torch's paragraphs of advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # e.g. "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    named = [line for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line]
    reason = (named or lines[-1:] or [type(error).__name__])[0]
    return reason.split("WeightsUnpickler error:")[-1].split(". Please")[0].strip()


def split_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix`` (a trailing ``.`` is implied), prefix
    stripped: ``split_prefix(sd, "transformer")["lm_head.weight"]``."""
    if not prefix.endswith("."):
        prefix += "."
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def check_state_dict(
    expected: nn.Module | Mapping[str, torch.Size | tuple[int, ...] | torch.Tensor],
    got: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    where: str,
) -> None:
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys of ``got``.

    ``expected`` is a module (its ``state_dict()``, which leaves out non-persistent
    buffers such as the rotary tables; a module on the meta device costs nothing) or a
    mapping of names to shapes or tensors. ``where`` names the file in the message.
    """
    if isinstance(expected, nn.Module):
        expected = expected.state_dict()
    want = {key: _shape(value) for key, value in expected.items()}
    have = {key: _shape(value) for key, value in got.items()}
    problems = {
        "missing keys": [key for key in want if key not in have],
        "unexpected keys": [key for key in have if key not in want],
        "mis-shaped keys": [
            f"{key} (expected {list(want[key])}, got {list(have[key])})"
            for key in want
            if key in have and have[key] != want[key]
        ],
    }
    if any(problems.values()):
        lines = [
            f"{what} ({len(items)}): {_listing(items)}" for what, items in problems.items() if items
        ]
        raise CheckpointError(f"{where}: weights do not fit the model:\n  " + "\n  ".join(lines))


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def _listing(items: list[str]) -> str:
    more = len(items) - _LISTED
    return ", ".join(items[:_LISTED]) + (f", ... and {more} more" if more > 0 else "")


def transformer_state_dict(state: Mapping[str, torch.Tensor], where: str) -> dict:
    """The transformer's part of a checkpoint: the ``transformer.`` keys of a MineWorld
    checkpoint, or the whole of a bare ``LlamaForCausalLM`` state dict."""
    inner = split_prefix(state, TRANSFORMER_PREFIX)
    if inner:
        return inner
    if any(key.startswith(_BARE_PREFIXES) for key in state):
        return dict(state)
    raise CheckpointError(
        f"{where}: no transformer weights (keys under {TRANSFORMER_PREFIX!r}, or "
        f"{' / '.join(map(repr, _BARE_PREFIXES))} for a bare LlamaForCausalLM); "
        f"found {_listing(sorted(state))}"
    )


def load_transformer(
    config: ModelConfig,
    source: str | Path | Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    where: str | None = None,
) -> Transformer:
    """A :class:`Transformer` for ``config`` with the weights of ``source`` (a checkpoint
    path, or a state dict already read from the file named by ``where``), on ``device``
    in ``dtype``, in eval mode and without gradients."""
    device = torch.device(device)
    if isinstance(source, Mapping):
        where, state = where or "state dict", source
    else:
        where, state = str(source), read_state_dict(source)
    state = transformer_state_dict(state, where)
    with torch.device("meta"):
        model = Transformer(config)
    check_state_dict(model, state, where)
    # Join the linear weights here, not in load_state_dict's hook (which works on a copy of
    # the dict), so that each original is dropped as soon as it is joined.
    for name, module in model.named_modules():
        if isinstance(module, SideBySideLinears):
            join_linear_weights(module, state, name + ".")
    # Convert one tensor at a time, dropping each original, so the peak is one extra tensor.
    for key in list(state):
        state[key] = state[key].to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    # The rotary tables are computed in __init__ and were built on meta. Rebuilt here in
    # their own dtypes (fp64 frequencies, fp32 tables): casting them to a half dtype would
    # put the cache's re-rotation of stored keys out of step with the table.
    model.rope = RotaryEmbedding(
        config.head_dim, config.max_position_embeddings, config.rope_theta
    ).to(device)
    leftovers = [
        name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
    ]
    if leftovers:  # a tensor made in __init__ that neither the file nor the code above filled
        raise RuntimeError(f"tensors left on the meta device after loading: {leftovers}")
    return model.eval().requires_grad_(False)


def save_transformer(model: Transformer, path: str | Path) -> None:
    """Write ``model``'s weights to a ``.safetensors`` file, keys prefixed ``transformer.``
    as in a MineWorld checkpoint, so :func:`load_transformer` reads it back.

    For the reference repository's pickle layout instead:
    ``torch.save({"state_dict": {"transformer." + k: v for k, v in
    model.state_dict().items()}}, path)``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: save_transformer writes safetensors; name it *.safetensors")
    tensors = {
        TRANSFORMER_PREFIX + key: value.detach().to("cpu").contiguous()
        for key, value in model.state_dict().items()
    }
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
