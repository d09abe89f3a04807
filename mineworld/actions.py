"""Minecraft actions: the 11-token action codec and the recorded-action file reader.

MineWorld (arXiv 2504.08388) feeds the model each frame's image tokens followed by 11 action
tokens, ``[bos, cam_y, cam_x, hotbar, fwd|back, left|right, sprint|sneak, use|attack, jump,
drop|pickItem, eos]``. The ids below reproduce the published vocabulary exactly (buttons 0..22,
pitch bins 23..43, yaw bins 44..64, bos/null/eos 65..67, all shifted by the image codebook size),
because a checkpoint only understands the ids it was trained on.

Actions travel as MineRL-style dicts: every name in ``BUTTONS`` maps to 0/1 and ``"camera"`` to
``[pitch_deg, yaw_deg]``. Clips record them one line per video frame, either as VPT contractor
records (JSON with keyboard keys and mouse deltas) or as MineRL dicts (JSON or Python literals
with ``array([...])``). Lines are parsed with ``json`` or a small reader of Python literals
(``python_literal``), never ``eval`` nor ``ast``, because clips come from the internet: memory
stays a few bytes per byte of line, and a line over ``MAX_LINE_BYTES`` is refused before it is
read whole. A bad line raises ``ActionFileError`` naming the file and 1-based line.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

BUTTONS: tuple[str, ...] = (
    "use", "attack", "forward", "back", "left", "right", "jump", "sneak", "sprint",
    "drop", "swapHands", "pickItem", "inventory", "ESC",
    *(f"hotbar.{i}" for i in range(1, 10)),
)  # fmt: skip
HOTBAR: tuple[str, ...] = BUTTONS[14:]
N_CAMERA_BINS = 21
CAM_Y_BASE = len(BUTTONS)  # 23: cam_0_0 .. cam_0_20, pitch
CAM_X_BASE = CAM_Y_BASE + N_CAMERA_BINS  # 44: cam_1_0 .. cam_1_20, yaw
ACT_BOS = CAM_X_BASE + N_CAMERA_BINS  # 65
NULL_ACT = ACT_BOS + 1  # 66
ACT_EOS = ACT_BOS + 2  # 67
ACTION_VOCAB_SIZE = 70  # the published model reserves 70 ids; the last two are never used
TOKENS_PER_ACTION = 11

SLOT_NAMES: tuple[str, ...] = (
    "bos", "cam_y", "cam_x", "hotbar", "forward|back", "left|right", "sprint|sneak",
    "use|attack", "jump", "drop|pickItem", "eos",
)  # fmt: skip
# Which buttons each button slot may hold. A pair slot holds the one pressed key, or <null_act>
# when neither or both are pressed; the hotbar slot holds the lowest pressed hotbar key.
# swapHands, inventory and ESC have ids but no slot: the published model never sees them.
BUTTON_SLOTS: dict[int, tuple[str, ...]] = {
    3: HOTBAR,
    4: ("forward", "back"),
    5: ("left", "right"),
    6: ("sprint", "sneak"),
    7: ("use", "attack"),
    8: ("jump",),
    9: ("drop", "pickItem"),
}

# Camera quantisation of the published model: mu-law, 21 bins of 9 degrees over [-90, 90].
# Recorded action lines (VPT, MineRL) are under 1 KB; a longer one is refused before it is read
# whole, so that a file of any size costs at most this much per line to look at.
MAX_LINE_BYTES = 16_384
LINE_TOO_LONG = f"a line over {MAX_LINE_BYTES:,} bytes (recorded action lines are under 1 KB)"
CAMERA_MAX_DEG = 90.0
CAMERA_BIN_DEG = 9.0
CAMERA_MU = 11.4887

# VPT / MineRL contractor recordings (Minecraft key names; mouse sensitivity of the recorder).
VPT_KEYS: dict[str, str] = {
    "key.keyboard.w": "forward", "key.keyboard.s": "back", "key.keyboard.a": "left",
    "key.keyboard.d": "right", "key.keyboard.space": "jump", "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint", "key.keyboard.q": "drop",
    "key.keyboard.f": "swapHands", "key.keyboard.e": "inventory", "key.keyboard.escape": "ESC",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
}  # fmt: skip
VPT_MOUSE_BUTTONS: dict[int, str] = {0: "attack", 1: "use", 2: "pickItem"}
CAMERA_DEG_PER_PIXEL = 360.0 / 2400.0
# Cleared in this order when converting recordings, as the published converter does.
CONFLICTS = (
    ("forward", "back"), ("left", "right"), ("jump", "sneak"), ("sprint", "sneak"),
    ("attack", "use"),
)  # fmt: skip


class ActionFileError(ValueError):
    """An action line or file that cannot be used. ``path`` and ``line`` (1-based) say where,
    when known; ``reason`` says what is wrong."""

    def __init__(self, reason: str, path: str | Path | None = None, line: int | None = None):
        self.reason, self.path, self.line = reason, path, line
        where = "" if path is None else f"{path}: " if line is None else f"{path}, line {line}: "
        super().__init__(where + reason)


def quantize_camera(deg: float) -> int:
    """Camera bin 0..20 of one axis (degrees); bin 10 is no movement, beyond +-90 clips."""
    # Clip before float(): an int beyond float range is just a huge angle. NaN survives the clip.
    x = float(min(max(deg, -CAMERA_MAX_DEG), CAMERA_MAX_DEG)) / CAMERA_MAX_DEG
    if math.isnan(x):
        raise ValueError("camera angle is NaN")
    v = math.copysign(math.log(1.0 + CAMERA_MU * abs(x)) / math.log(1.0 + CAMERA_MU), x)
    # round() rounds halves to even, like the np.round of the published quantiser.
    return round((v * CAMERA_MAX_DEG + CAMERA_MAX_DEG) / CAMERA_BIN_DEG)


def camera_bin_center(index: int) -> float:
    """Degrees at the centre of camera bin 0..20 (the mu-law decode of its value)."""
    if not (isinstance(index, numbers.Integral) and 0 <= index < N_CAMERA_BINS):
        raise ValueError(f"camera bin must be an int in 0..{N_CAMERA_BINS - 1}, got {index!r}")
    v = (index * CAMERA_BIN_DEG - CAMERA_MAX_DEG) / CAMERA_MAX_DEG
    return math.copysign(((1.0 + CAMERA_MU) ** abs(v) - 1.0) / CAMERA_MU, v) * CAMERA_MAX_DEG


def noop_action() -> dict[str, Any]:
    """An action dict with nothing pressed and the camera still."""
    return {**dict.fromkeys(BUTTONS, 0), "camera": [0.0, 0.0]}


def _show(value: Any) -> str:
    """A short repr for error messages: file values can be arbitrarily long."""
    return reprlib.repr(value)


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{what} is out of range") from None


def normalize_action(action: Mapping[str, Any]) -> dict[str, Any]:
    """A checked copy of a MineRL action dict: every button 0/1, camera two finite floats.

    Missing buttons are 0 and a missing camera is [0, 0]; unknown keys are ignored. Raises
    ValueError for anything else (a button not 0/1, a camera not two finite numbers).
    """
    out = noop_action()
    for name in BUTTONS:
        value = action.get(name, 0)
        if not (isinstance(value, (numbers.Real, np.bool_)) and value in (0, 1)):
            raise ValueError(f"button {name!r} must be 0 or 1, got {_show(value)}")
        out[name] = int(value)
    camera = action.get("camera", (0.0, 0.0))
    if isinstance(camera, np.ndarray):
        camera = camera.tolist()
    if not isinstance(camera, (list, tuple)) or len(camera) != 2:
        raise ValueError(f"camera must be [pitch, yaw], got {_show(camera)}")
    out["camera"] = [_real(c, "camera angle") for c in camera]
    if not all(map(math.isfinite, out["camera"])):
        raise ValueError(f"camera angles must be finite, got {out['camera']}")
    return out


def make_action(pressed: Iterable[str] = (), pitch: float = 0.0, yaw: float = 0.0) -> dict:
    """An action dict from UI controls: the pressed button names and camera degrees.

    Raises ValueError for an unknown button name or a camera angle outside [-90, 90]. Conflicting
    buttons stay pressed, as in the published demo (the codec nulls a pair slot with both).
    """
    action = noop_action()
    for name in [pressed] if isinstance(pressed, str) else pressed:
        if name not in BUTTONS:
            raise ValueError(f"unknown button {name!r}; valid names: {', '.join(BUTTONS)}")
        action[name] = 1
    for axis, deg in (("pitch", pitch), ("yaw", yaw)):
        if not -CAMERA_MAX_DEG <= deg <= CAMERA_MAX_DEG:
            raise ValueError(f"camera {axis} {deg!r} is outside [-90, 90] degrees")
    action["camera"] = [float(pitch), float(yaw)]
    return action


class ActionCodec:
    """Action dict <-> the 11 action token ids; ``offset`` is the image codebook size."""

    def __init__(self, offset: int):
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        self.offset = offset

    @property
    def vocab_size(self) -> int:
        """Image codebook plus action ids: 8262 for the published model."""
        return self.offset + ACTION_VOCAB_SIZE

    def encode(self, action: Mapping[str, Any]) -> list[int]:
        """The 11 token ids of an action dict (checked by ``normalize_action``)."""
        action = normalize_action(action)
        ids = [NULL_ACT] * TOKENS_PER_ACTION
        ids[0], ids[-1] = ACT_BOS, ACT_EOS
        ids[1] = CAM_Y_BASE + quantize_camera(action["camera"][0])
        ids[2] = CAM_X_BASE + quantize_camera(action["camera"][1])
        for slot, names in BUTTON_SLOTS.items():
            pressed = [name for name in names if action[name]]
            if names is HOTBAR:
                pressed = pressed[:1]
            if len(pressed) == 1:
                ids[slot] = BUTTONS.index(pressed[0])
        return [self.offset + i for i in ids]

    def decode(self, ids: Sequence[int]) -> dict[str, Any]:
        """The action dict of 11 token ids, camera at the bin centres; ValueError if malformed."""
        local = [int(i) - self.offset for i in ids]
        if len(local) != TOKENS_PER_ACTION or local[0] != ACT_BOS or local[-1] != ACT_EOS:
            raise ValueError(f"not 11 action ids framed by bos/eos: {list(ids)}")
        action = noop_action()
        for axis, base in ((0, CAM_Y_BASE), (1, CAM_X_BASE)):
            if not 0 <= local[1 + axis] - base < N_CAMERA_BINS:
                raise ValueError(f"slot {SLOT_NAMES[1 + axis]} holds {ids[1 + axis]}, not a bin")
            action["camera"][axis] = camera_bin_center(local[1 + axis] - base)
        for slot, names in BUTTON_SLOTS.items():
            if local[slot] == NULL_ACT:
                continue
            if not (0 <= local[slot] < len(BUTTONS) and BUTTONS[local[slot]] in names):
                raise ValueError(f"slot {SLOT_NAMES[slot]} holds {ids[slot]}, not one of {names}")
            action[BUTTONS[local[slot]]] = 1
        return action


def _field(obj: Mapping, key: str, kind: type, default: Any, where: str) -> Any:
    value = obj.get(key, default)
    if not isinstance(value, kind):
        raise ValueError(f"{where}{key} must be a {kind.__name__}, got {_show(value)}")
    return value


def vpt_line_to_action(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The action dict of one VPT contractor record (a parsed JSON line).

    Unknown keys and mouse buttons are ignored, missing fields are not pressed / 0, conflicting
    pairs (``CONFLICTS``) are both released. Raises ValueError for wrongly typed fields.
    """
    keyboard = _field(obj, "keyboard", dict, {}, "")
    mouse = _field(obj, "mouse", dict, {}, "")
    action = noop_action()
    for key in _field(keyboard, "keys", list, [], "keyboard."):
        if not isinstance(key, str):
            raise ValueError(f"keyboard.keys must hold strings, got {_show(key)}")
        if key in VPT_KEYS:
            action[VPT_KEYS[key]] = 1
    for button in _field(mouse, "buttons", list, [], "mouse."):
        if isinstance(button, bool) or not isinstance(button, int):
            raise ValueError(f"mouse.buttons must hold ints, got {_show(button)}")
        if button in VPT_MOUSE_BUTTONS:
            action[VPT_MOUSE_BUTTONS[button]] = 1
    # Multiplying by a factor below 1 cannot overflow, so any finite delta stays finite.
    dy, dx = (_real(mouse.get(k, 0), f"mouse.{k}") * CAMERA_DEG_PER_PIXEL for k in ("dy", "dx"))
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise ValueError(f"mouse.dx and mouse.dy must be finite, got {dx!r}, {dy!r}")
    action["camera"] = [dy, dx]
    for a, b in CONFLICTS:
        if action[a] and action[b]:
            action[a] = action[b] = 0
    return action


def action_to_vpt_line(action: Mapping[str, Any]) -> dict[str, Any]:
    """The VPT record of an action dict; ``vpt_line_to_action`` inverts it for conflict-free
    actions (camera up to float rounding)."""
    action = normalize_action(action)
    pitch, yaw = action["camera"]
    return {
        "keyboard": {"keys": [key for key, name in VPT_KEYS.items() if action[name]]},
        "mouse": {
            "dx": yaw / CAMERA_DEG_PER_PIXEL,
            "dy": pitch / CAMERA_DEG_PER_PIXEL,
            "buttons": [b for b, name in VPT_MOUSE_BUTTONS.items() if action[name]],
        },
    }


# Calls allowed in Python-literal lines: numpy reprs (`array([...])` in numpy 1, `np.float64(1.5)`
# in numpy 2). They evaluate to their argument; a plain `dtype=` keyword is allowed and ignored.
_NUMPY_CALLS = {
    "array", "bool_", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64",
}  # fmt: skip
_CALLABLE = {"array", *(f"{module}.{name}" for module in ("np", "numpy") for name in _NUMPY_CALLS)}
_CONSTANTS = {"True": True, "False": False, "None": None, "nan": math.nan, "inf": math.inf}
# Recorded lines nest three deep ({"mouse": {"buttons": [...]}}) and hold a few containers;
# deeper nesting is refused before it costs a deep stack, and more containers before they cost
# more memory than their bytes (an empty list is 56 bytes for its 3 of line).
MAX_NESTING = 8
MAX_CONTAINERS = 256
_SPACE = re.compile(r"[ \t\f\r\n]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
# A string's characters up to its closing quote, a backslash or the line's end: one pass of a
# character class, so a long string costs no backtracking.
_PLAIN = {quote: re.compile(rf"[^{quote}\\\n]*") for quote in "'\""}
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_ESCAPED = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def _unescape(match: re.Match) -> str:
    escape = match.group()
    if escape[1] in _ESCAPED:
        return _ESCAPED[escape[1]]
    if escape[1] in "xuU" and len(escape) > 2:
        return chr(int(escape[2:], 16))  # chr refuses code points beyond U+10FFFF
    raise ValueError(f"unsupported escape {escape!r} in a string")


class _LiteralReader:
    """One pass over a Python literal as MineRL lines print them: dicts with string keys,
    lists, tuples, strings, numbers, True / False / None, nan / inf and numpy's ``array(...)``
    calls, trailing commas allowed. Anything else is refused (ValueError with the column).

    It replaces ``ast.parse``, which takes hundreds of bytes of memory per byte of line: here
    memory is the values read (5 to 16 bytes per byte of line, measured), time is linear, and
    nesting and containers are bounded (``MAX_NESTING``, ``MAX_CONTAINERS``), so no input costs
    a deep stack."""

    def __init__(self, text: str):
        self.text, self.pos, self.containers = text, 0, 0

    def fail(self, what: str):
        raise ValueError(f"{what} at column {self.pos + 1}; only literals and array(...) are "
                         "allowed")

    def peek(self) -> str:
        """The next character after spaces ("" at the end)."""
        self.pos = _SPACE.match(self.text, self.pos).end()
        return self.text[self.pos : self.pos + 1]

    def read(self) -> Any:
        value = self.value(0)
        if self.peek():
            self.fail(f"unexpected {self.peek()!r} after the value")
        return value

    def value(self, depth: int) -> Any:
        char = self.peek()
        if char in ("{", "[", "("):
            if depth == MAX_NESTING:
                self.fail(f"nested deeper than {MAX_NESTING}")
            self.containers += 1
            if self.containers > MAX_CONTAINERS:
                self.fail(f"more than {MAX_CONTAINERS} dicts, lists and tuples")
            if char == "{":
                mapping: dict[str, Any] = {}
                self.items("}", lambda: self.pair(depth + 1, mapping))
                return mapping
            items: list = []
            trailing_comma = self.items("]" if char == "[" else ")",
                                        lambda: items.append(self.value(depth + 1)))
            # (x) is x in Python; (x,) and [x] are sequences, read as lists like JSON's.
            return items[0] if char == "(" and len(items) == 1 and not trailing_comma else items
        if char in ("'", '"'):
            return self.string()
        sign = -1 if char == "-" else 1
        if char in ("-", "+"):
            self.pos += 1
        if number := _NUMBER.match(self.text, self.pos):
            self.pos = number.end()
            digits = number.group()
            # int() refuses over 4,300 digits: Python's guard against quadratic conversion.
            return sign * (float(digits) if any(c in digits for c in ".eE") else int(digits))
        name = _NAME.match(self.text, self.pos)
        if name is None:
            self.fail("unexpected end of line" if not char else f"unexpected {char!r}")
        self.pos, word = name.end(), name.group()
        if word in ("nan", "inf"):  # as numpy prints them, signed or not
            return sign * _CONSTANTS[word]
        if char not in ("-", "+"):
            if word in _CONSTANTS:
                return _CONSTANTS[word]
            if word in _CALLABLE and self.peek() == "(":
                return self.call(depth)
        self.pos = name.start()
        self.fail(f"unsupported name {word!r}")

    def items(self, close: str, read_item) -> bool:
        """Read the comma-separated items up to ``close`` (``read_item`` keeps each where it
        belongs, so that no list of pairs costs more than the dict); whether a comma ended
        them."""
        self.pos += 1  # the opening bracket
        comma = False
        while self.peek() != close:
            read_item()
            comma = self.peek() == ","
            if comma:
                self.pos += 1
            elif self.peek() != close:
                self.fail(f"expected ',' or {close!r}" if self.peek() else "unexpected end of line")
        self.pos += 1
        return comma

    def pair(self, depth: int, mapping: dict[str, Any]) -> None:
        """Read ``'key': value`` into ``mapping``."""
        if self.peek() not in ("'", '"'):
            self.fail("dict keys must be strings")
        key = self.string()
        if self.peek() != ":":
            self.fail("expected ':'")
        self.pos += 1
        mapping[key] = self.value(depth)

    def call(self, depth: int) -> Any:
        """The argument of ``array(value)`` or ``np.float64(value)``; a ``dtype=`` keyword
        (a name, np.name or a string) is allowed and ignored."""
        self.pos += 1  # the opening parenthesis
        value = self.value(depth + 1)
        while self.peek() == ",":
            self.pos += 1
            if self.peek() == ")":
                break
            keyword = _NAME.match(self.text, self.pos)
            if keyword is None or keyword.group() != "dtype":
                self.fail("only a dtype= keyword may follow the value")
            self.pos = keyword.end()
            if self.peek() != "=":
                self.fail("expected '='")
            self.pos += 1
            if self.peek() in ("'", '"'):
                self.string()
            elif dtype := _NAME.match(self.text, self.pos):
                self.pos = dtype.end()
            else:
                self.fail("a dtype must be a name or a string")
        if self.peek() != ")":
            self.fail("expected ')'")
        self.pos += 1
        return value

    def string(self) -> str:
        quote, start = self.text[self.pos], self.pos + 1
        end = start
        while True:
            end = _PLAIN[quote].match(self.text, end).end()
            if end >= len(self.text) or self.text[end] == "\n":
                self.fail("unterminated string")
            if self.text[end] == quote:
                break
            end += 2  # a backslash and the character it escapes
        body, self.pos = self.text[start:end], end + 1
        return _ESCAPE.sub(_unescape, body) if "\\" in body else body


def python_literal(text: str) -> Any:
    """The value of a Python literal as MineRL lines print them (see ``_LiteralReader``), never
    evaluated; ValueError for anything else."""
    return _LiteralReader(text).read()


def _load(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return python_literal(text)
    except ValueError as e:
        raise ValueError(f"neither JSON nor a Python literal: {e}") from None


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _parse_line(text: str) -> tuple[str, dict[str, Any]]:
    """(record kind, action dict) of one line; ActionFileError without a location if bad."""
    try:
        # len() first: a huge line is refused without encoding it.
        if len(text) > MAX_LINE_BYTES or _utf8_size(text) > MAX_LINE_BYTES:
            raise ValueError(LINE_TOO_LONG)
        if not text.strip():
            raise ValueError("blank line")
        obj = _load(text)
        if not isinstance(obj, dict):
            raise ValueError(f"expected an object / dict, got {type(obj).__name__}")
        if "keyboard" in obj or "mouse" in obj:
            return "VPT record", vpt_line_to_action(obj)
        return "MineRL action dict", normalize_action(obj)
    except (ValueError, RecursionError) as e:
        raise ActionFileError(str(e)) from None


def parse_action_line(text: str) -> dict[str, Any]:
    """The action dict of one recorded line: a VPT record (it has "keyboard" or "mouse") or a
    MineRL dict, each as JSON or as a Python literal. Raises ActionFileError."""
    return _parse_line(text)[1]


def read_actions(
    path: str | Path, alignment: Literal["same", "next"] = "same", max_lines: int | None = None
) -> list[dict[str, Any]]:
    """The actions of a clip's ``.jsonl``, one per line, so that ``actions[i]`` is the action
    taken after seeing frame i.

    ``alignment="same"`` pairs frame i with line i (the published interactive demo);
    ``"next"`` pairs it with line i + 1 (the published batch script), so line 1 is dropped.
    The first line fixes the record kind (VPT or MineRL) for the whole file. Trailing blank
    lines are ignored. Raises ActionFileError naming the file and 1-based line for an unreadable
    or empty file, a blank or malformed line, or a line of the other record kind. With
    ``max_lines`` only the actions of the first ``max_lines`` frames are parsed (the lines after
    them are not looked at).
    """
    if alignment not in ("same", "next"):
        raise ValueError(f"alignment must be 'same' or 'next', got {alignment!r}")
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines must be >= 1, got {max_lines!r}")
    lines_read = None if max_lines is None else max_lines + (alignment == "next")
    actions, file_kind, first_blank = [], None, None
    try:
        with open(path, "rb") as file:  # line by line: the file may be any size
            numbers = itertools.count(1) if lines_read is None else range(1, lines_read + 1)
            for number in numbers:
                raw = file.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                line = raw.removesuffix(b"\n")
                if len(line) > MAX_LINE_BYTES:
                    raise ActionFileError(LINE_TOO_LONG, path, number)
                if not line.strip():  # trailing blank lines are ignored, others refused
                    first_blank = first_blank or number
                    continue
                if first_blank:
                    raise ActionFileError("blank line", path, first_blank)
                try:
                    kind, action = _parse_line(line.decode("utf-8"))
                except UnicodeDecodeError:
                    raise ActionFileError("not UTF-8 text", path, number) from None
                except ActionFileError as e:
                    raise ActionFileError(e.reason, path, number) from None
                file_kind = file_kind or kind
                if kind != file_kind:
                    raise ActionFileError(f"a {kind} in a file of {file_kind}s", path, number)
                actions.append(action)
    except OSError as e:
        raise ActionFileError(f"cannot read: {e.strerror or e}", path) from None
    if not actions:
        raise ActionFileError("no action lines", path)
    return actions[1:] if alignment == "next" else actions
