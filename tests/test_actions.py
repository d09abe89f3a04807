"""Tests for mineworld.actions: golden token ids of the published vocabulary, the recorded-line
formats, and that no input line can raise anything but ActionFileError."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mineworld.actions import (
    BUTTONS,
    ActionCodec,
    ActionFileError,
    action_to_vpt_line,
    camera_bin_center,
    make_action,
    noop_action,
    parse_action_line,
    python_literal,
    quantize_camera,
    read_actions,
    vpt_line_to_action,
)

OFFSET = 8192  # the published model: image codebook size
BOS, NULL, EOS = 8257, 8258, 8259
NOOP_IDS = [BOS, 8225, 8246, NULL, NULL, NULL, NULL, NULL, NULL, NULL, EOS]  # camera bins 10, 10
codec = ActionCodec(OFFSET)
# Property tests run many examples with no per-example deadline (shared machines are noisy);
# nested values cost hypothesis more to draw, so those tests check several lines per example.
PROPERTY = settings(max_examples=1000, deadline=None)
NESTED = settings(max_examples=400, deadline=None)


def ids_with(**slots):
    """NOOP_IDS with some slots (by index name s3..s9) replaced."""
    ids = list(NOOP_IDS)
    for name, value in slots.items():
        ids[int(name[1:])] = value
    return ids


# --- codec -----------------------------------------------------------------------------------

# button -> (slot, id) written out from the published vocabulary: 8192 + index in BUTTONS.
SINGLE_BUTTONS = {
    "use": (7, 8192),
    "attack": (7, 8193),
    "forward": (4, 8194),
    "back": (4, 8195),
    "left": (5, 8196),
    "right": (5, 8197),
    "jump": (8, 8198),
    "sneak": (6, 8199),
    "sprint": (6, 8200),
    "drop": (9, 8201),
    "pickItem": (9, 8203),
    **{f"hotbar.{n}": (3, 8205 + n) for n in range(1, 10)},
}


def test_vocab_size_and_noop():
    assert codec.vocab_size == 8262
    assert ActionCodec(0).vocab_size == 70
    assert codec.encode({}) == NOOP_IDS
    assert codec.encode(noop_action()) == NOOP_IDS
    assert ActionCodec(0).encode({}) == [65, 33, 54, 66, 66, 66, 66, 66, 66, 66, 67]


@pytest.mark.parametrize("button", sorted(SINGLE_BUTTONS))
def test_each_button_alone(button):
    slot, token = SINGLE_BUTTONS[button]
    assert codec.encode({button: 1}) == ids_with(**{f"s{slot}": token})


@pytest.mark.parametrize("button", ["swapHands", "inventory", "ESC"])
def test_buttons_without_a_slot_encode_as_noop(button):
    assert codec.encode({button: 1}) == NOOP_IDS


@pytest.mark.parametrize(
    ("first", "second", "slot"),
    [("forward", "back", 4), ("left", "right", 5), ("sprint", "sneak", 6), ("use", "attack", 7),
     ("drop", "pickItem", 9)],
)  # fmt: skip
def test_pair_slots_both_ways_and_both_pressed(first, second, slot):
    assert codec.encode({first: 1})[slot] == SINGLE_BUTTONS[first][1]
    assert codec.encode({second: 1})[slot] == SINGLE_BUTTONS[second][1]
    assert codec.encode({first: 1, second: 1}) == NOOP_IDS


def test_hotbar_lowest_wins_and_jump():
    assert codec.encode({"hotbar.7": 1, "hotbar.3": 1, "hotbar.9": 1})[3] == 8208  # hotbar.3
    assert codec.encode({"jump": 1}) == ids_with(s8=8198)
    assert codec.encode({"jump": 0, "hotbar.1": 0}) == NOOP_IDS


# Bins by hand from v = sign(x) ln(1 + mu|x|/90) / ln(1 + mu) * 90, bin = round((v + 90) / 9):
#   1 deg -> v = 4.282 -> 10.476 -> 10;   2.25 -> v = 9.0 -> 11;   5 -> v = 17.596 -> 11.955 -> 12
#   10 -> v = 29.324 -> 13.258 -> 13;  45 -> v = 68.038 -> 17.560 -> 18;   90 -> 20
CAMERA_BINS = [(0, 10), (1, 10), (-1, 10), (2.25, 11), (-2.25, 9), (5, 12), (-5, 8), (10, 13),
               (45, 18), (-45, 2), (90, 20), (-90, 0), (200, 20), (-200, 0)]  # fmt: skip


@pytest.mark.parametrize(("deg", "expected"), CAMERA_BINS)
def test_camera_bins_on_both_axes(deg, expected):
    assert quantize_camera(deg) == expected
    assert codec.encode({"camera": [deg, 0]})[1:3] == [8215 + expected, 8246]  # pitch: 23 + bin
    assert codec.encode({"camera": [0, deg]})[1:3] == [8225, 8236 + expected]  # yaw: 44 + bin


def test_camera_bin_centres():
    assert camera_bin_center(10) == 0.0
    assert camera_bin_center(0) == pytest.approx(-90.0)
    assert camera_bin_center(20) == pytest.approx(90.0)
    assert camera_bin_center(11) == pytest.approx(2.25, abs=1e-4)
    assert camera_bin_center(9) == pytest.approx(-2.25, abs=1e-4)
    assert [quantize_camera(camera_bin_center(b)) for b in range(21)] == list(range(21))
    for bad in (-1, 21, 1.5):
        with pytest.raises(ValueError, match="camera bin"):
            camera_bin_center(bad)


def test_camera_nan_is_an_error_and_huge_values_clip():
    with pytest.raises(ValueError, match="NaN"):
        quantize_camera(math.nan)
    with pytest.raises(ValueError, match="finite"):
        codec.encode({"camera": [math.nan, 0]})
    assert quantize_camera(math.inf) == 20
    assert quantize_camera(-(10**400)) == 0  # an int beyond float range


def test_offset_is_added_to_every_id():
    action = make_action(["forward", "attack", "hotbar.2"], pitch=5, yaw=-45)
    assert ActionCodec(0).encode(action) == [65, 35, 46, 15, 2, 66, 66, 1, 66, 66, 67]
    assert ActionCodec(1000).encode(action) == [1000 + i for i in ActionCodec(0).encode(action)]


def test_decode_inverts_encode_at_bin_centres():
    for b in range(21):
        action = make_action(
            ["back", "right", "sneak", "use", "jump", "pickItem", f"hotbar.{b % 9 + 1}"],
            pitch=camera_bin_center(b),
            yaw=camera_bin_center(20 - b),
        )
        assert codec.decode(codec.encode(action)) == action
    assert codec.decode(NOOP_IDS) == noop_action()


def test_decode_rejects_malformed_ids():
    with pytest.raises(ValueError, match="11 action ids"):
        codec.decode(NOOP_IDS[:-1])
    with pytest.raises(ValueError, match="bos"):
        codec.decode([NULL] + NOOP_IDS[1:])
    with pytest.raises(ValueError, match="cam_y"):
        codec.decode(ids_with(s1=8192))
    with pytest.raises(ValueError, match="left\\|right"):
        codec.decode(ids_with(s5=8194))  # forward in the left|right slot


def test_encode_rejects_bad_values():
    for bad in ({"forward": 2}, {"forward": "1"}, {"camera": [1]}, {"camera": "00"}):
        with pytest.raises(ValueError):
            codec.encode(bad)
    # numpy values, as MineRL dicts hold them, are fine
    action = {"forward": np.int64(1), "jump": np.bool_(True), "camera": np.array([0.0, 90.0])}
    assert codec.encode(action) == [BOS, 8225, 8256, NULL, 8194, NULL, NULL, NULL, 8198, NULL, EOS]


def test_make_action_validates_names_and_range():
    assert make_action("jump") == {**noop_action(), "jump": 1}
    assert make_action(["forward"], pitch=-90, yaw=90)["camera"] == [-90.0, 90.0]
    with pytest.raises(ValueError, match="'fly'.*valid names: use, attack"):
        make_action(["forward", "fly"])
    with pytest.raises(ValueError, match=r"pitch 91 .*\[-90, 90\]"):
        make_action(pitch=91)
    with pytest.raises(ValueError, match=r"yaw nan .*\[-90, 90\]"):
        make_action(yaw=math.nan)


# --- VPT lines -------------------------------------------------------------------------------


def vpt(keys=(), dx=0, dy=0, buttons=()):
    return {
        "keyboard": {"keys": list(keys)},
        "mouse": {"dx": dx, "dy": dy, "buttons": list(buttons)},
    }


VPT_KEYS = {
    "key.keyboard.w": "forward", "key.keyboard.s": "back", "key.keyboard.a": "left",
    "key.keyboard.d": "right", "key.keyboard.space": "jump", "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint", "key.keyboard.q": "drop",
    "key.keyboard.f": "swapHands", "key.keyboard.e": "inventory", "key.keyboard.escape": "ESC",
    **{f"key.keyboard.{n}": f"hotbar.{n}" for n in range(1, 10)},
}  # fmt: skip


@pytest.mark.parametrize(("key", "button"), sorted(VPT_KEYS.items()))
def test_vpt_keys(key, button):
    assert vpt_line_to_action(vpt([key])) == {**noop_action(), button: 1}


def test_vpt_mouse_buttons_and_unknown_inputs():
    assert vpt_line_to_action(vpt(buttons=[0])) == {**noop_action(), "attack": 1}
    assert vpt_line_to_action(vpt(buttons=[1])) == {**noop_action(), "use": 1}
    assert vpt_line_to_action(vpt(buttons=[2])) == {**noop_action(), "pickItem": 1}
    unknown = vpt(["key.keyboard.z", "key.mouse.left", "key.keyboard.w"], buttons=[5])
    assert vpt_line_to_action(unknown) == {**noop_action(), "forward": 1}


def test_vpt_mouse_delta_to_degrees():
    # 2400 pixels per 360 degrees: dx = 2400 / 360 * deg
    assert vpt_line_to_action(vpt(dx=400, dy=-20))["camera"] == pytest.approx([-3.0, 60.0])
    assert vpt_line_to_action(vpt(dx=15))["camera"] == pytest.approx([0.0, 2.25])
    huge = vpt_line_to_action(vpt(dx=1e308, dy=-1e308))
    assert codec.encode(huge)[1:3] == [8215, 8256]  # clipped to bins 0 and 20


def test_vpt_conflicts_are_released_in_published_order():
    def pressed(line):
        return {k for k, v in vpt_line_to_action(line).items() if v == 1}

    w, s, a, d = (f"key.keyboard.{k}" for k in "wsad")
    space, shift, ctrl = (
        "key.keyboard.space",
        "key.keyboard.left.shift",
        "key.keyboard.left.control",
    )
    assert pressed(vpt([w, s, a])) == {"left"}
    assert pressed(vpt([a, d, w])) == {"forward"}
    assert pressed(vpt([space, shift])) == set()
    assert pressed(vpt([ctrl, shift])) == set()
    assert pressed(vpt(buttons=[0, 1, 2])) == {"pickItem"}
    # jump+sneak is released first, so sprint no longer conflicts and stays
    assert pressed(vpt([space, shift, ctrl])) == {"sprint"}


def test_vpt_missing_fields_are_not_pressed():
    assert parse_action_line('{"mouse": {}}') == noop_action()
    assert parse_action_line('{"keyboard": {"keys": ["key.keyboard.w"]}}')["forward"] == 1
    camera = parse_action_line('{"mouse": {"dx": 30}, "isGuiOpen": false}')["camera"]
    assert camera == pytest.approx([0.0, 4.5])


@pytest.mark.parametrize(
    "line",
    [
        '{"keyboard": {"keys": "key.keyboard.w"}}',
        '{"keyboard": []}',
        '{"mouse": {"dx": "3"}}',
        '{"mouse": {"dy": true}}',
        '{"mouse": {"dx": NaN}}',
        '{"mouse": {"dx": Infinity}}',
        '{"mouse": {"dx": 1' + "0" * 400 + "}}",
        '{"mouse": {"buttons": ["0"]}}',
        '{"keyboard": {"keys": [1]}}',
        '{"mouse": null}',
    ],
)
def test_vpt_wrong_types_raise(line):
    with pytest.raises(ActionFileError):
        parse_action_line(line)


def test_action_to_vpt_line_round_trips():
    action = make_action(["forward", "left", "jump", "attack", "hotbar.4", "ESC"], 12.5, -33.0)
    line = action_to_vpt_line(action)
    assert line["mouse"]["dx"] == pytest.approx(-220.0)
    assert line["mouse"]["dy"] == pytest.approx(2500 / 30)
    back = vpt_line_to_action(json.loads(json.dumps(line)))
    assert back["camera"] == pytest.approx(action["camera"])
    assert {**back, "camera": None} == {**action, "camera": None}


# --- MineRL lines ----------------------------------------------------------------------------

# As the published validation clips print them (numpy 1 repr of a MineRL action dict).
MINERL_LINE = (
    "{'ESC': 0, 'back': 0, 'drop': 0, 'forward': 1, 'hotbar.1': 0, 'hotbar.2': 0, 'hotbar.3': 0,"
    " 'hotbar.4': 0, 'hotbar.5': 0, 'hotbar.6': 0, 'hotbar.7': 0, 'hotbar.8': 0, 'hotbar.9': 0,"
    " 'inventory': 0, 'jump': 1, 'left': 0, 'right': 0, 'sneak': 0, 'sprint': 1, 'swapHands': 0,"
    " 'camera': array([ 0.5 , -2.25]), 'attack': 1, 'use': 0, 'pickItem': 0}"
)
MINERL_IDS = [BOS, 8225, 8245, NULL, 8194, NULL, 8200, 8193, 8198, NULL, EOS]


def test_minerl_python_literal_line():
    action = parse_action_line(MINERL_LINE)
    assert action["camera"] == [0.5, -2.25]
    assert {k for k, v in action.items() if v == 1} == {"forward", "jump", "sprint", "attack"}
    assert codec.encode(action) == MINERL_IDS


@pytest.mark.parametrize(
    "line",
    [
        "{'forward': 1, 'camera': array([0., 0.], dtype=float32)}",
        "{'forward': np.int64(1), 'camera': np.array([np.float64(0.0), -0.0])}",
        "{'forward': True, 'camera': (0, 0), 'chat': 'hi', 'hotbar': None}",
        '{"forward": 1, "camera": [0.0, 0.0]}',
        '  {"forward": 1.0}  ',
    ],
)
def test_minerl_variants(line):
    assert codec.encode(parse_action_line(line)) == ids_with(s4=8194)


@pytest.mark.parametrize(
    "line",
    [
        "__import__('os').system('touch MARKER')",
        "{'forward': __import__('os').system('touch MARKER')}",
        "{'camera': array([0, 0], dtype=__import__('os').system('touch MARKER'))}",
        "{'camera': open('MARKER', 'w')}",
        "(lambda: __import__('os').system('touch MARKER'))()",
        "{'camera': [0, 0]} if __import__('os').system('touch MARKER') else {}",
    ],
)
def test_eval_bait_is_rejected_without_side_effect(tmp_path, line):
    marker = tmp_path / "pwned"
    path = tmp_path / "bait.jsonl"
    path.write_text("{'forward': 1}\n" + line.replace("MARKER", str(marker)) + "\n")
    with pytest.raises(ActionFileError, match="line 2"):
        read_actions(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "line",
    ["[1, 2]", "{'forward': 2}", "{'camera': array([nan, 0.])}", "{'camera': [1, 2, 3]}",
     "{1: 1}", "{'a': 1", "-" * 100_000 + "1", "[" * 100_000, "{'camera': array([inf, 0])}",
     "{'forward': 1}}", "{'forward': 1j}", "{'forward': b'1'}"],
)  # fmt: skip
def test_bad_lines_raise_action_file_error(line):
    with pytest.raises(ActionFileError):
        parse_action_line(line)


# The Python-literal forms that recorded lines use, read without eval or ast, and what they give.
ACCEPTED_LITERALS = [
    ("{'forward': 1, 'camera': array([ 0.5 , -2.25]),}", {"forward": 1, "camera": [0.5, -2.25]}),
    ("{'a': True, 'b': False, 'c': None}", {"a": True, "b": False, "c": None}),
    ("[1, 2,]", [1, 2]),
    ("(1, 2)", [1, 2]),
    ("(1,)", [1]),
    ("(1)", 1),
    ("()", []),
    ("{'camera': array([0., 0.], dtype=float32)}", {"camera": [0.0, 0.0]}),
    ("np.array([np.float64(1e-3), -0.])", [0.001, -0.0]),
    ("numpy.int64(7)", 7),
    ("array([1], dtype='int64',)", [1]),
    ("[-inf, inf, +1, -.5, 10e0]", [-math.inf, math.inf, 1, -0.5, 10.0]),
    (r"""'it\'s \"q\" \\ \x41\u00e9\n'""", "it's \"q\" \\ A\u00e9\n"),
    ('"caf\u00e9"', "caf\u00e9"),
    (" \t{ 'a' :\n 1 } ", {"a": 1}),
]
REFUSED_LITERALS = [
    ("garbage", "unsupported name 'garbage' at column 1"),
    ("{'a': 1", "unexpected end of line"),
    ("{'a': 1 'b': 2}", "expected ',' or '}' at column 9"),
    ("{1: 1}", "dict keys must be strings"),
    ("[1, 2", "unexpected end of line"),
    ("[,]", "unexpected ','"),
    ("1j", "unexpected 'j' after the value"),
    ("b'1'", "unsupported name 'b'"),
    ("-True", "unsupported name 'True'"),
    ("'open", "unterminated string"),
    ("'\\q'", "unsupported escape"),
    ("array(1, 2)", "only a dtype= keyword may follow the value"),
    ("os.system('x')", "unsupported name 'os.system'"),
    ("array", "unsupported name 'array'"),
    ("{'a': 1} if x else {}", "unexpected 'i' after the value"),
    ("[" * 9 + "]" * 9, "nested deeper than 8"),
    ("[" + "[]," * 300 + "]", "more than 256 dicts, lists and tuples"),
    ("1" * 5000, "Exceeds the limit"),  # int(): Python's guard against quadratic conversion
]


@pytest.mark.parametrize(("text", "value"), ACCEPTED_LITERALS)
def test_python_literal_forms_of_recorded_lines(text, value):
    assert python_literal(text) == value


@pytest.mark.parametrize(("text", "message"), REFUSED_LITERALS)
def test_python_literal_refuses_everything_else(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        python_literal(text)


# A child process measures its own peak memory around one call, under an address space limit,
# so that a regression fails the test instead of exhausting the host. It prints the growth in
# bytes and the refusal, if any. VmHWM, not ru_maxrss: a child's ru_maxrss starts at its
# parent's peak (pytest's, here), which would hide any growth below it.
MEASURE = """
import itertools, json, resource, string, sys
from pathlib import Path
from mineworld.actions import python_literal, read_actions
def status(field):
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").open()
                if line.startswith(field + ":"))
limit = status("VmSize") + 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
kind, expression, path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
text = eval(expression)  # the test's own expression, building the line
if kind == "file":
    path.write_text(text + "\\n")
    text = None
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here: building the
peak, refused = status("VmHWM"), None          # line's text does not count
try:
    python_literal(text) if kind == "literal" else read_actions(path)
except ValueError as error:
    refused = str(error)
print(json.dumps([len(text or ""), status("VmHWM") - peak, refused]))
"""


def peak_growth(kind, expression, path=""):
    """(characters of the line ``expression`` builds, bytes the peak RSS of a child grew by
    while it read the line, the refusal or None)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, kind, expression, str(path)],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


# Lines of about 4 MB: a list of one repeated form, and a dict of 140,608 distinct keys.
LONG_LITERALS = {
    "zeros": "\"{'a': [\" + '0,' * 2_000_000 + ']}'",
    "floats": "\"{'a': [\" + '1.5,' * 1_000_000 + ']}'",
    "short strings": "\"{'a': [\" + \"'ab',\" * 800_000 + ']}'",
    "ints": "\"{'a': [\" + '1000,' * 800_000 + ']}'",
    "distinct keys": "'{' + ','.join(f\"'{''.join(k)}': 0\" for k in "
                     "itertools.product(string.ascii_letters, repeat=3)) + '}'",
}


@pytest.mark.parametrize("expression", LONG_LITERALS.values(), ids=LONG_LITERALS)
def test_a_multi_megabyte_literal_costs_under_20_bytes_a_byte(expression):
    """The literal reader alone, without the line limit: linear, with a small constant (ast
    took about 480 bytes a byte)."""
    size, growth, refused = peak_growth("literal", expression)
    assert refused is None and size > 1_000_000
    assert 0 < growth < 20 * size


def test_many_empty_containers_are_refused_early():
    """An empty list costs 56 bytes for its 3 of line: the 257th container is refused."""
    _size, growth, refused = peak_growth("literal", "'[' + '[],' * 1_000_000 + ']'")
    assert "more than 256 dicts, lists and tuples" in refused
    assert growth < 2**20


def test_a_file_with_a_multi_megabyte_line_is_refused_without_reading_it(tmp_path):
    _size, growth, refused = peak_growth("file", LONG_LITERALS["zeros"], tmp_path / "long.jsonl")
    assert refused.endswith("long.jsonl, line 1: a line over 16,384 bytes (recorded action "
                            "lines are under 1 KB)")
    assert growth < 2**20  # far below the 4 MB line: only its first 16 KB were read


# --- files -----------------------------------------------------------------------------------


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_actions_vpt_file_and_alignment(tmp_path):
    lines = [json.dumps(vpt([f"key.keyboard.{n}"])) for n in range(1, 5)]
    path = write_lines(tmp_path / "clip.jsonl", *lines)
    same = read_actions(path)
    assert [a[f"hotbar.{n}"] for n, a in enumerate(same, 1)] == [1, 1, 1, 1]
    assert read_actions(path, alignment="next") == same[1:]
    with pytest.raises(ValueError, match="alignment"):
        read_actions(path, alignment="previous")


def test_read_actions_minerl_file_and_trailing_blank_lines(tmp_path):
    path = write_lines(tmp_path / "clip.jsonl", MINERL_LINE, MINERL_LINE, "", "  ")
    assert [codec.encode(a) for a in read_actions(path)] == [MINERL_IDS, MINERL_IDS]


def test_errors_name_file_and_line(tmp_path):
    good = json.dumps(vpt(["key.keyboard.w"]))
    path = write_lines(tmp_path / "clip.jsonl", good, good, '{"mouse": {"dx": "x"}}')
    with pytest.raises(ActionFileError) as err:
        read_actions(path)
    assert (err.value.path, err.value.line) == (path, 3)
    assert str(err.value).startswith(f"{path}, line 3: mouse.dx must be a number")

    cases = {
        "blank line": (good, "", good),
        "MineRL action dict in a file of VPT record": (good, MINERL_LINE),
        "neither JSON nor a Python literal: unexpected end of line at column 8": (
            good, "{'a': 1"),
        "neither JSON nor a Python literal: unsupported name 'garbage' at column 1": (
            good, "garbage"),
        # Refused before it is read whole: a long line is never a recorded action.
        "a line over 16,384 bytes": (good, "{'a': [" + "0," * 2_000_000 + "]}"),
    }
    for message, lines in cases.items():
        with pytest.raises(ActionFileError, match=f"line 2: .*{message}"):
            read_actions(write_lines(path, *lines))


def test_unreadable_and_empty_files(tmp_path):
    for path, message in [
        (tmp_path / "missing.jsonl", "cannot read"),
        (tmp_path, "cannot read"),
        (write_lines(tmp_path / "empty.jsonl"), "no action lines"),
        (write_lines(tmp_path / "blank.jsonl", "", " "), "no action lines"),
    ]:
        with pytest.raises(ActionFileError, match=message) as err:
            read_actions(path)
        assert str(path) in str(err.value)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"forward": 1}\n{"chat": "caf\xe9"}\n')
    with pytest.raises(ActionFileError, match="line 2: not UTF-8"):
        read_actions(latin1)


# --- properties ------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
names = st.sampled_from([*BUTTONS, "camera", "keyboard", "mouse", "keys", "dx", "dy", "buttons"])
near_values = (
    st.sampled_from([0, 1, True, 2, -1, 0.5, "1", None])
    | st.lists(st.floats() | st.integers(), max_size=3)
    | st.lists(st.sampled_from([*VPT_KEYS, 0, 1, 2, "w"]), max_size=4)
    | scalars
)
# Dicts shaped like action dicts or VPT records (one level of nesting, as in "mouse": {...}),
# so the checks beyond syntax get exercised.
near_dicts = st.dictionaries(
    names, near_values | st.dictionaries(names, near_values, max_size=4), max_size=6
)


def check_line(text):
    """The contract: a valid action (11 encodable ids) or ActionFileError, nothing else."""
    try:
        action = parse_action_line(text)
    except ActionFileError:
        return
    ids = codec.encode(action)
    assert len(ids) == 11 and all(OFFSET <= i < OFFSET + 68 for i in ids)


@NESTED
@given(st.one_of(json_values, near_dicts))
def test_any_json_or_python_value_parses_or_raises_action_file_error(value):
    check_line(json.dumps(value))
    check_line(repr(value))
    check_line(repr(value).replace("[", "array([").replace("]", "])"))


@PROPERTY
@given(st.text())
def test_any_text_parses_or_raises_action_file_error(text):
    check_line(text)


def representable(x):
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float range
        return False


@PROPERTY
@given(st.floats(), st.floats() | st.integers(min_value=-(10**400), max_value=10**400))
def test_any_camera_value(pitch, yaw):
    valid = representable(pitch) and representable(yaw)
    for line in (json.dumps({"camera": [pitch, yaw]}), json.dumps(vpt(dx=yaw, dy=pitch))):
        try:
            ids = codec.encode(parse_action_line(line))
        except ActionFileError:
            assert not valid
        else:
            assert valid and 8215 <= ids[1] <= 8235 and 8236 <= ids[2] <= 8256


@PROPERTY
@given(st.floats(allow_nan=False), st.floats(allow_nan=False))
def test_quantisation_is_monotonic_and_in_range(a, b):
    lo, hi = sorted((a, b))
    assert 0 <= quantize_camera(lo) <= quantize_camera(hi) <= 20


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.binary(max_size=40) | near_dicts.map(json.dumps).map(str.encode), max_size=5))
def test_any_file_reads_or_raises_action_file_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        actions = read_actions(path)
    except ActionFileError as e:
        assert e.path == path
        return
    assert all(len(codec.encode(a)) == 11 for a in actions)
