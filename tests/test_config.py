"""Model configs from files: any document, however broken, gives a ModelConfig that a model can
be built from, or a ValueError naming the file (and the field), never another exception."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mineworld.config import LIMITS, MAX_PARAMETERS, ModelConfig, load_config, preset_path

PARAMS = "model.params.transformer_config.params"
VALID = yaml.safe_load(preset_path("300M_16f").read_text())
FIELDS = [*LIMITS, "hidden_act", "attention_bias", "mlp_bias"]

# Values a hostile or careless file may hold in any place.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["silu", "gelu", "1e5", "", "null", "\x00"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3),
), max_leaves=6)


def _node(document, dotted):
    for key in dotted.split("."):
        document = document[key]
    return document


@st.composite
def documents(draw):
    """A valid config with a few edits: fields dropped or set to any value (or one near the
    edges of its range), the layout and decoding set, and maybe a whole subtree replaced by
    anything."""
    document = yaml.safe_load(yaml.safe_dump(VALID))
    params = _node(document, PARAMS)
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from(FIELDS))
        edit = draw(st.sampled_from(["drop", "set", "number"]))
        if edit == "drop":
            params.pop(field, None)
        elif edit == "set":
            params[field] = draw(values)
        else:
            low, high = LIMITS.get(field, (0, 1))
            params[field] = draw(st.one_of(
                st.integers(int(low) - 2, int(low) + 2), st.integers(int(high) - 2, 2 * int(high)),
                st.floats(low / 2, high * 2),
            ))
    if draw(st.booleans()):
        document["model"]["params"]["layout"] = draw(st.one_of(
            values, st.dictionaries(st.sampled_from(["image_rows", "image_cols",
                                                     "codebook_size"]), scalars),
        ))
    if draw(st.booleans()):
        document["model"]["params"]["decoding"] = draw(st.one_of(
            values, st.dictionaries(st.sampled_from(["diagonal_window", "temperature", "top_k",
                                                     "repeat_penalty"]),
                                    scalars),
        ))
    if draw(st.integers(0, 3)) == 0:
        parent, _, key = draw(st.sampled_from(
            ["model", "model.params", "model.params.transformer_config", PARAMS]
        )).rpartition(".")
        (_node(document, parent) if parent else document)[key] = draw(values)
    return document


def check(path):
    """The property: a usable config, or a ValueError that names the file. Returns either."""
    try:
        config = load_config(path)
    except ValueError as error:
        assert str(error).startswith(f"{path}:"), str(error)
        return str(error)
    for field, (low, high) in LIMITS.items():
        value = getattr(config, field)
        assert not isinstance(value, bool) and low <= value <= high and math.isfinite(value)
    assert config.head_dim % 2 == 0 and config.context_frames >= 2
    assert config.parameters <= MAX_PARAMETERS
    return config


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One file that every generated document is written to in turn."""
    return tmp_path_factory.mktemp("config") / "model.yaml"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents())
def test_edited_config_documents_load_or_name_the_file(scratch, document):
    scratch.write_text(yaml.safe_dump(document))
    check(scratch)


@settings(max_examples=1000, deadline=None)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                         values.map(lambda v: yaml.safe_dump(v).encode())))
def test_any_bytes_load_or_name_the_file(scratch, content):
    scratch.write_bytes(content)
    check(scratch)


@pytest.mark.parametrize("edit, words", [
    ({"hidden_size": 1000, "num_attention_heads": 16}, ["hidden_size (1000)", "multiple of",
                                                       "num_attention_heads (16)"]),
    ({"hidden_size": -1024}, ["hidden_size must be in [2, 65536]", "-1024"]),
    ({"num_hidden_layers": 10**9}, ["num_hidden_layers must be in [1, 1024]", "1000000000"]),
    ({"vocab_size": 8262.5}, ["vocab_size must be a whole number", "8262.5"]),
    ({"rms_norm_eps": float("nan")}, ["rms_norm_eps must be in", "nan"]),
    ({"num_key_value_heads": True}, ["num_key_value_heads must be a whole number", "True"]),
    ({"hidden_size": 65536, "intermediate_size": 262144}, ["parameters", "at most"]),
    ({"max_position_embeddings": 400}, ["max_position_embeddings (400)", "at least 694"]),
    ({"hidden_size": 1056, "num_attention_heads": 32}, ["1056 / 32 = 33", "even"]),
], ids=["heads-do-not-divide", "negative", "huge", "float", "nan", "bool", "too-many-weights",
        "context-under-two-frames", "odd-head-size"])
def test_absurd_fields_are_named_with_their_value_and_range(tmp_path, edit, words):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    _node(document, PARAMS).update(edit)
    path = tmp_path / "absurd.yaml"
    path.write_text(yaml.safe_dump(document))
    message = check(path)
    assert isinstance(message, str)
    for word in words:
        assert word in message


@pytest.mark.parametrize("content, words", [
    (b"model: [unclosed\n", ["cannot read config"]),
    (b"\xff\xfe\x00binary", ["cannot read config"]),
    (b"", ["the document must be a mapping, got nothing"]),
    (b"42\n", ["the document must be a mapping, got int"]),
    (b"model:\n  params: [1, 2]\n", ["model.params must be a mapping, got list"]),
    (b"model:\n  params:\n    transformer_config: {params: {}}\n",
     ["missing field(s)", "hidden_size"]),
    (b"# padding\n" * 200_000, ["over 1024 KiB"]),
], ids=["not-yaml", "not-text", "empty", "a-number", "a-list", "no-fields", "huge-file"])
def test_documents_that_are_not_configs(tmp_path, content, words):
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    message = check(path)
    assert isinstance(message, str)
    for word in words:
        assert word in message


def test_shipped_configs_still_load():
    for name in ("300M_16f", "700M_16f", "700M_32f", "1200M_16f", "1200M_32f"):
        config = load_config(preset_path(name))
        assert config.parameters < 1.5e9


def test_a_model_may_name_its_diagonal_window(tmp_path):
    assert load_config(preset_path("300M_16f")).diagonal_window == 2  # MineWorld's batch default
    document = yaml.safe_load(yaml.safe_dump(VALID))
    path = tmp_path / "decoding.yaml"
    document["model"]["params"]["decoding"] = {"diagonal_window": 1}
    path.write_text(yaml.safe_dump(document))
    assert check(path).diagonal_window == 1
    document["model"]["params"]["decoding"] = {"diagonal_window": 25}
    path.write_text(yaml.safe_dump(document))
    assert "diagonal_window must be in [1, image_cols = 24], got 25" in check(path)


def test_a_model_may_name_its_repeat_penalty(tmp_path):
    from mineworld.decoding import Sampling

    document = yaml.safe_load(yaml.safe_dump(VALID))
    path = tmp_path / "decoding.yaml"
    document["model"]["params"]["decoding"] = {"repeat_penalty": 3}
    path.write_text(yaml.safe_dump(document))
    config = check(path)
    assert Sampling.model_default(config) == Sampling(repeat_penalty=3.0)
    assert Sampling.from_flags(config, repeat_penalty=1.0) == Sampling()
    assert Sampling.from_flags(config, top_k=5) == Sampling(1.0, top_k=5, repeat_penalty=3.0)
    document["model"]["params"]["decoding"] = {"repeat_penalty": 0.5}
    path.write_text(yaml.safe_dump(document))
    assert "repeat_penalty" in check(path) and "0.5" in check(path)


def test_a_model_may_name_its_overuse_penalty(tmp_path):
    from mineworld.decoding import Sampling

    document = yaml.safe_load(yaml.safe_dump(VALID))
    path = tmp_path / "decoding.yaml"
    document["model"]["params"]["decoding"] = {"temperature": 0.7, "top_k": 20,
                                               "overuse_penalty": 2}
    path.write_text(yaml.safe_dump(document))
    config = check(path)
    assert Sampling.model_default(config) == Sampling(0.7, top_k=20, overuse_penalty=2.0)
    assert Sampling.from_flags(config, overuse_penalty=0) == Sampling(0.7, top_k=20)
    assert Sampling.from_flags(config, temperature=0) == Sampling(overuse_penalty=2.0)
    document["model"]["params"]["decoding"] = {"overuse_penalty": 11}
    path.write_text(yaml.safe_dump(document))
    assert "overuse_penalty must be in [0, 10], got 11" in check(path)


@pytest.mark.parametrize("written, value", [("1e-05", 1e-5), ("1E-6", 1e-6), ("5E-1", 0.5),
                                            ("1e-5", 1e-5), ("1E-5", 1e-5)])
def test_float_forms_that_omegaconf_reads_load(tmp_path, written, value):
    """PyYAML keeps these as strings (YAML 1.1 wants a dot and a signed exponent; ``.5`` it
    reads as a number already); the published code reads configs with OmegaConf, which takes
    them as numbers."""
    path = tmp_path / "forms.yaml"
    text = yaml.safe_dump(VALID).replace("rms_norm_eps: 1.0e-05", f"rms_norm_eps: {written}")
    assert f"rms_norm_eps: {written}" in text
    path.write_text(text)
    assert yaml.safe_load(text)["model"]["params"]["transformer_config"]["params"][
        "rms_norm_eps"] == written  # a string to PyYAML
    assert load_config(path).rms_norm_eps == value


def test_a_model_may_name_its_default_sampling(tmp_path):
    from mineworld.decoding import Sampling

    published = load_config(preset_path("300M_16f"))
    assert Sampling.model_default(published) == Sampling()  # greedy unless the config says
    document = yaml.safe_load(yaml.safe_dump(VALID))
    path = tmp_path / "decoding.yaml"
    document["model"]["params"]["decoding"] = {"temperature": 0.7, "top_k": 8}
    path.write_text(yaml.safe_dump(document))
    assert Sampling.model_default(check(path)) == Sampling(0.7, top_k=8)
    assert str(Sampling(0.7, top_k=8)) == "temperature 0.7, top-k 8"
    document["model"]["params"]["decoding"] = {"temperature": 0.7}
    path.write_text(yaml.safe_dump(document))
    assert Sampling.model_default(check(path)) == Sampling(0.7)  # top_k 0: every code
    # Command-line flags: nothing named keeps the model's; top-k alone keeps its temperature.
    sampler = check(path)
    assert Sampling.from_flags(sampler) == Sampling(0.7)
    assert Sampling.from_flags(sampler, top_k=5) == Sampling(0.7, top_k=5)
    assert Sampling.from_flags(sampler, temperature=0) == Sampling()
    assert Sampling.from_flags(published, top_p=0.8) == Sampling(1.0, top_p=0.8)
    document["model"]["params"]["decoding"] = {"temperature": -1}
    path.write_text(yaml.safe_dump(document))
    assert "temperature must be in [0, 100], got -1" in check(path)


def test_direct_construction_checks_the_same_ranges():
    with pytest.raises(ValueError, match="hidden_size must be in"):
        ModelConfig(vocab_size=200, hidden_size=0, intermediate_size=1, num_hidden_layers=1,
                    num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=10)


# As the published repository writes a config: OmegaConf's number forms, its own keys beside
# LlamaConfig's, and fields this model does not use.
PUBLISHED_STYLE = """\
model:
  target: lvm.LlamaLVM
  params:
    model_class: lvm.LlamaForCausalLM
    tokenizer_config:
      target: vae.VAE
      params: {config_path: vae/config.json, ckpt_path: vae/vae.ckpt}
    transformer_config:
      target: transformers.LlamaConfig
      params:
        vocab_size: 8262
        hidden_size: 1024
        intermediate_size: 4096
        num_hidden_layers: 20
        num_attention_heads: 16
        num_key_value_heads: 4
        max_position_embeddings: 5552
        rms_norm_eps: 1e-5
        rope_theta: 1E+4
        initializer_range: .02
        torch_dtype: float16
        hidden_act: silu
        token_num: 347
        image_num: 336
        frame: 16
"""


def test_a_config_as_the_published_code_writes_it_loads(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(PUBLISHED_STYLE)
    assert load_config(path) == load_config(preset_path("300M_16f"))


@pytest.mark.parametrize("line, words", [
    ("token_num: 347", "token_num is 340, but the other fields make tokens_per_frame 347"),
    ("image_num: 336", "image_num is 340, but the other fields make tokens_per_image 336"),
    ("frame: 16", "frame is 340, but the other fields make context_frames 16"),
])
def test_the_published_keys_must_agree_with_the_fields(tmp_path, line, words):
    path = tmp_path / "published.yaml"
    key = line.split(":")[0]
    path.write_text(PUBLISHED_STYLE.replace(line, f"{key}: 340"))
    assert words in check(path)
