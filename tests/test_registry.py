"""The strategies' declarations and what is made of them: defaults that fit every shipped or
published model, budget mappings, the command lines' flags, a new strategy in one class and
one ``register``, and a ``package.module:Class`` by its path."""

import math

import pytest
import torch

import app
import inference
from cache import (
    STRATEGIES,
    CacheView,
    KVCacheManager,
    Layout,
    Param,
    Strategy,
    declared,
    make_strategy,
    names,
    register,
)
from mineworld.actions import make_action
from mineworld.cache_flags import cache_params, flag, strategy_params
from mineworld.config import ACTION_TOKENS, ModelConfig, load_config, preset_path
from mineworld.embedded import MODEL_DIR
from mineworld.model import Transformer, cache_layout
from mineworld.session import Session, default_reference_frames
from tests.stand_ins import FRAME_TOKENS, PatchTokenizer, tiny_model

PRESETS = ["300M_16f", "700M_16f", "700M_32f", "1200M_16f", "1200M_32f"]
SHIPPED_AND_PUBLISHED = {"shipped": load_config(MODEL_DIR / "config.yaml"),
                         **{name: load_config(preset_path(name)) for name in PRESETS}}
LAYOUTS = [Layout(FRAME_TOKENS, 4 * FRAME_TOKENS), Layout(107, 856), Layout(347, 5552),
           Layout(347, 11104)]
BOUNDED = [name for name, cls in STRATEGIES.items() if cls.bounded]


@pytest.mark.parametrize("name", list(declared()))
def test_every_declaration_is_complete(name):
    cls = declared()[name]
    assert cls.name == name and cls.params == tuple(cls.params)
    for param in cls.params:
        assert isinstance(param, Param) and param.type in (int, float, bool) and param.help
        assert param.from_layout is None or hasattr(Layout(1, 2), param.from_layout)
        if param.default is not None:
            assert param.check(param.default) == param.default


def layout_session(config: ModelConfig, name: str, schedule: str) -> Session:
    """A session of ``name`` with its defaults on a model of ``config``'s layout (its own
    shapes, but narrow: random weights of the published size would take gigabytes)."""
    narrow = ModelConfig(
        vocab_size=config.vocab_size, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=config.max_position_embeddings, image_rows=config.image_rows,
        image_cols=config.image_cols, codebook_size=config.codebook_size,
    )
    return Session(Transformer(narrow), None, strategy=name,
                   reference_frames=default_reference_frames(config), schedule=schedule)


@pytest.mark.parametrize("model", list(SHIPPED_AND_PUBLISHED))
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_defaults_fit_every_shipped_and_published_model(model, name):
    """The budget check a session makes before its prefill, for MineWorld's longest prompt
    (the default reference frames) and the largest step of either schedule."""
    config = SHIPPED_AND_PUBLISHED[model]
    for schedule in ("naive", "diagonal"):
        session = layout_session(config, name, schedule)
        prompt = session.reference_frames * config.tokens_per_frame - ACTION_TOKENS - 1
        step = max(session.decoder.max_step_tokens, ACTION_TOKENS + 1)
        session.cache.reset(prompt_length=prompt, step_tokens=step)  # raises when it does not
        if STRATEGIES[name].bounded:
            assert session.cache.storage.capacity <= cache_layout(config).room


def test_defaults_keep_the_declared_values_where_they_fit():
    published = cache_layout(SHIPPED_AND_PUBLISHED["300M_16f"])
    shipped = cache_layout(SHIPPED_AND_PUBLISHED["shipped"])
    for cls in STRATEGIES.values():
        declared_values = {p.name: p.default for p in cls.settable()}
        assert {k: v for k, v in cls.defaults(published).items() if k in declared_values} == (
            declared_values)
    # The shipped model holds 8 frames: the frame window's own 1 + 7 is one too many.
    assert STRATEGIES["frames"].defaults(shipped) == {
        "frame_tokens": 107, "sink_frames": 1, "recent_frames": 6}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: str(layout.context_tokens))
@pytest.mark.parametrize("name", BOUNDED)
def test_for_budget_keeps_exactly_the_budget(name, layout):
    cls = STRATEGIES[name]
    for frames in range(2, layout.context_frames):
        tokens = frames * layout.frame_tokens
        for prompt in (0, layout.frame_tokens, layout.room):
            params = {**cls.defaults(layout), **cls.for_budget(tokens, layout, prompt)}
            assert cls(**params).budget(prompt) == tokens, (frames, prompt, params)


def test_an_unbounded_strategy_takes_no_budget():
    for cls in STRATEGIES.values():
        if not cls.bounded:
            assert cls.for_budget(100, LAYOUTS[0]) == {}
            assert cls().budget(100) is None


def test_bad_values_name_the_parameter_the_value_and_the_range():
    for cls in STRATEGIES.values():
        for param in cls.settable():
            bad = "many" if param.type is bool else (param.low - 1 if param.low is not None
                                                       else math.nan)
            with pytest.raises(ValueError, match=f"{param.name} must be .*, got"):
                make_strategy(cls.name, LAYOUTS[1], **{param.name: bad})


# -- the command lines -------------------------------------------------------------------------


@pytest.mark.parametrize(("parse", "default"), [(inference.parse_args, "none"),
                                                 (app.parse_args, app.PAGE_STRATEGY)],
                         ids=["inference", "app"])
def test_both_command_lines_have_a_flag_per_declared_parameter(parse, default):
    base = ["--output_dir", "out"] if parse is inference.parse_args else []
    for name, cls in declared().items():
        for param in cls.settable():
            value = True if param.type is bool else param.type(param.default or 3)
            words = [flag(param)] if param.type is bool else [flag(param), str(value)]
            args = parse([*base, *words])
            assert getattr(args, param.name) == value, (name, param.name)
    assert parse(base).cache_strategy == default
    for name in names():
        assert parse([*base, "--cache-strategy", name]).cache_strategy == name


def test_a_flag_the_strategy_does_not_take_is_named():
    args = inference.parse_args(["--output_dir", "o", "--cache-strategy", "streaming",
                                 "--sink-frames", "1"])
    message = ("--sink-frames is not a parameter of strategy 'streaming' "
               "\\(it takes: start_size, recent_size, pos_shift\\)")
    with pytest.raises(ValueError, match=message):
        strategy_params(args)


# -- a new strategy ----------------------------------------------------------------------------


class OldestOut(Strategy):
    """The smallest new strategy: a window of the newest tokens, oldest evicted first."""

    name = "oldest-out"
    params = (Param("window", int, 40, low=1, help="the newest tokens kept"),)
    fixed_score = True

    @classmethod
    def for_budget(cls, tokens, layout, prompt_length=None):
        return {"window": tokens}

    def budget(self, prompt_length):
        return self.window

    def keep_score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float()


@pytest.fixture
def oldest_out():
    register(OldestOut)
    yield OldestOut
    del STRATEGIES[OldestOut.name]


def test_a_new_strategy_is_one_class_and_one_register(oldest_out):
    assert "oldest-out" in names() and cache_params()["window"][1] == ["oldest-out"]
    args = inference.parse_args(["--output_dir", "o", "--cache-strategy", "oldest-out",
                                 "--window", "30"])
    assert strategy_params(args) == {"window": 30}
    session = Session(tiny_model(), PatchTokenizer(), strategy="oldest-out", reference_frames=2)
    assert session.cache.strategy.window == 40  # its default fits the tiny model's 68 tokens
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 8, 12, 3), generator=rng).numpy().astype("uint8")
    session.start(images, [make_action(["forward"])])
    for _ in range(4):
        _, stats = session.step(make_action(["forward"]))
    assert stats["evicted_tokens"] > 0 and stats["live_tokens"] <= 40


# -- a class by its path -----------------------------------------------------------------------


def test_a_protocol_class_by_its_path_runs_with_its_own_size():
    manager = KVCacheManager("tests.stand_ins:StartRecentKVCache")
    assert manager.describe() == {"strategy": "custom", "policy": "StartRecentKVCache",
                                  "budget": 32}
    sized = KVCacheManager("tests.stand_ins:UnsizedStartRecent", budget=40)
    assert sized.strategy.budget(0) == 40


@pytest.mark.parametrize("spec, params, message", [
    ("nowhere.at.all:Policy", {}, "cannot import nowhere.at.all"),
    ("tests.stand_ins:Missing", {}, "tests.stand_ins has no Missing"),
    ("tests.stand_ins:", {}, "package.module:Class"),
    ("tests.stand_ins:PatchTokenizer", {}, "lacks __call__, evict_for_space"),
    ("tests.stand_ins:NeedsArguments", {}, "cannot be made without arguments"),
    ("tests.stand_ins:UnsizedStartRecent", {}, r"Pass budget=N \(--budget N\)"),
    ("tests.stand_ins:StartRecentKVCache", {"start_size": 3}, "takes no parameter start_size"),
])
def test_a_bad_class_path_is_explained(spec, params, message):
    with pytest.raises(ValueError, match=message):
        KVCacheManager(spec, **params)
