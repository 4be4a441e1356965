"""Settings: defaults, TOML and --set loading, and malformed settings rejected with one line."""
import dataclasses
import tomllib
from pathlib import Path

import pytest
import tomli_w

from dfa_async import config
from dfa_async.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# (overrides, words the one-line error must contain)
MALFORMED = [
    (["model.kind=rnn"], ["model.kind", "mlp, cnn"]),
    (["model.activation=gelu"], ["model.activation", "tanh, relu, leaky_relu, sigmoid"]),
    (["model.widths=800"], ["model.widths", "list of integers"]),
    (["model.widths=[800, -1]"], ["model.widths", ">= 1"]),
    (["model.widths=[]"], ["model.widths", "at least one"]),
    (["model.dropout_hidden=1.0"], ["model.dropout_hidden", "< 1.0"]),
    (["model.leaky_slope=-0.1"], ["model.leaky_slope", ">= 0.0"]),
    (["model.batchnorm=1"], ["model.batchnorm", "true or false"]),
    (["model.depth=3"], ["model.depth", "unknown setting"]),
    (["modle.kind=mlp"], ["modle", "unknown section"]),
    (["feedback.rule=fa"], ["feedback.rule", "dfa, bp, shallow"]),
    (["feedback.init=xavier"], ["feedback.init", "gaussian, uniform, orthogonal, sign"]),
    (["feedback.normalization=layer"], ["feedback.normalization", "paper, independent, none"]),
    (["feedback.error_scale=batch"], ["feedback.error_scale", "mean, sum"]),
    (["data.name=imagenet"], ["data.name", "mnist, fashion_mnist, cifar10, synthetic"]),
    (["optim.lr=0"], ["optim.lr", "> 0.0"]),
    (["optim.lr=fast"], ["optim.lr", "expected a number"]),
    (["optim.name=rmsprop"], ["optim.name", "sgd, adam"]),
    (["optim.momentum=1.5"], ["optim.momentum", "< 1.0"]),
    (["optim.schedule=step"], ["optim.step_every", "step_every >= 1"]),
    (["train.batch_size=1"], ["train.batch_size", ">= 2"]),
    (["train.epochs=-1"], ["train.epochs", ">= 0"]),
    (["train.epochs=0", "train.max_steps=0"], ["train.epochs", "train nothing"]),
    (["train.seed=1.5"], ["train.seed", "expected an integer"]),
    (["runtime.depth=0"], ["runtime.depth", ">= 1"]),
    (["runtime.backend=mpi"], ["runtime.backend", "local, ray"]),
    (["feedback.rule=bp", "runtime.depth=2", "runtime.backend=local"], ["runtime.depth", "bp allows only depth 1"]),
    (["feedback.rule=bp", "runtime.backend=ray"], ["feedback.rule", "runtime.backend = ray"]),
    (["runtime.blocks_per_stage=[1, 1]"], ["runtime.blocks_per_stage", "add up to 3"]),
    (["runtime.transport=mpi"], ["runtime.transport", "auto, shm, gloo, nccl"]),
    (["runtime.transport=nccl", "runtime.device=cpu"], ["runtime.transport", "shm, gloo or auto"]),
    (["bottleneck.block=2"], ["bottleneck.block", "0..1"]),
    (["bottleneck.block=-2"], ["bottleneck.block", ">= -1"]),
    (["bottleneck.block=0", "bottleneck.width=900"], ["bottleneck.width", "1..800"]),
    (["bottleneck.block=0", "bottleneck.form=prune"], ["bottleneck.form", "mask, elements, narrow"]),
    (["metrics.port=70000"], ["metrics.port", "<= 65535"]),
    (["checkpoint.keep=0"], ["checkpoint.keep", ">= 1"]),
    (["alignment.probe_size=1"], ["alignment.probe_size", ">= 2"]),
    (["model.kind=cnn", "data.name=synthetic", "data.shape=[1, 4, 4]"], ["data.shape", "too small"]),
    (["model.kind=cnn", "model.channels=[]"], ["model.channels", "at least one"]),
    (["bottleneck.block=0", "model.kind=cnn", "bottleneck.width=3"], ["bottleneck.block", "conv block"]),
    (["train"], ["--set train", "section.key=value"]),
    (["model.kind=gpt"], ["data.name", "not a token stream"]),
    (["data.name=tinyshakespeare"], ["model.kind", "cannot read the token stream"]),
    (["data.name=text", "model.kind=gpt"], ["data.path", "UTF-8 file"]),
    (["model.kind=gpt", "data.name=tinyshakespeare", "model.n_head=3"], ["model.n_head", "do not divide"]),
    (["optim.schedule=warmup_cosine"], ["optim.warmup_steps", ">= 1"]),
    (["model.kind=gpt", "data.name=synthetic", "bottleneck.block=0", "bottleneck.width=3"], ["bottleneck.block", "gpt"]),
    (["feedback.error_at=output"], ["feedback.error_at", "logits, hidden"]),
]


@pytest.mark.parametrize("overrides,words", MALFORMED, ids=[" ".join(o) for o, _ in MALFORMED])
def test_malformed_settings_give_one_line_naming_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        config.load(None, overrides)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_malformed_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\nkind = 'mlp'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


def test_defaults_and_overrides():
    cfg = config.load(None, ["optim.lr=0.5", "model.widths=[10, 20]", "optim.name=adam", 'data.name="cifar10"'])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.model.widths == [10, 20]
    assert cfg.optim.name == "adam" and cfg.data.name == "cifar10"
    assert config.Config().model.kind == "mlp"


def test_int_is_accepted_for_float():
    assert config.load(None, ["optim.lr=1"]).optim.lr == 1.0


def test_saved_toml_round_trips():
    cfg = config.load(None, ["optim.lr=0.003", "train.name=run-1.a_b", "data.dir=a \"quoted\" dir",
                             "runtime.blocks_per_stage=[2, 1]"])
    again = config.from_dict(tomllib.loads(config.to_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("name", ["a\nb", "../x", "a/b", ".hidden", "x" * 201, "tab\there", "é"])
def test_a_run_name_that_is_not_a_plain_directory_name_is_refused_in_one_line(name):
    """(`--set 'train.name="a\\nb"'` used to write a config.toml that did not parse; `../x` wrote outside
    train.root.)"""
    with pytest.raises(ConfigError, match=r"train.name: .* is not a plain directory name") as err:
        config.load(None, [f"train.name={tomli_w.dumps({'v': name})[4:].strip()}"])
    assert "\n" not in str(err.value)


def test_any_other_string_round_trips_through_the_saved_toml():
    cfg = config.load(None, [r'data.dir="a\nb\u0001 \\ \"c\""'])  # as typed in a shell
    assert cfg.data.dir == 'a\nb\x01 \\ "c"'
    assert config.from_dict(tomllib.loads(config.to_toml(cfg))) == cfg


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg = config.load(path)
    assert cfg.num_blocks() >= 2


def test_every_setting_has_a_docstring():
    text = config.describe()
    assert "optim.lr = 0.001" in text
    for line in text.splitlines()[1::2]:
        assert line.strip(), "empty docstring"


def test_narrow_bottleneck_changes_the_width():
    cfg = config.load(None, ["bottleneck.block=1", "bottleneck.width=8", "bottleneck.form=narrow"])
    assert cfg.hidden_widths() == [800, 8]


# -- property tests of the settings parser -------------------------------------------------------------------
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from dfa_async import config as config_mod  # noqa: E402
from dfa_async.config.schema import section_class  # noqa: E402

KEYS = [f"{section}.{f}" for section in config_mod.SECTIONS
        for f in dataclasses.fields(section_class(section))]
VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=12), st.lists(st.integers(-5, 2000), max_size=4),
                   st.sampled_from(["auto", "mlp", "cnn", "dfa", "bp", "sgd", "adam", "paper", "relu", "[]", ""]))


@hsettings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS + ["model.nope", "nosection.key"]), VALUES, max_size=6))
def test_any_settings_give_a_config_or_one_line_naming_a_key(assignments):
    """Any values for any keys: either a validated Config that round-trips through its TOML, or a
    ConfigError of one line that names a setting."""
    raw = {}
    for key, value in assignments.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    try:
        cfg = config_mod.from_dict(raw)
    except ConfigError as err:
        text = str(err)
        assert "\n" not in text
        assert any(k.split(".")[0] in text for k in [*KEYS, "nosection", "config"]), text
        return
    assert config_mod.from_dict(tomllib.loads(config_mod.to_toml(cfg))) == cfg


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgilmnoprstuwx._=[]0123456789-\" ,", max_size=30), max_size=4))
def test_any_override_strings_give_a_config_or_one_line(texts):
    try:
        config_mod.load(None, texts)
    except ConfigError as err:
        assert "\n" not in str(err)


def test_the_old_name_of_a_renamed_setting_loads_with_a_warning(capsys, tmp_path):
    cfg = config.load(None, ["runtime.stages=[2, 1]"])
    assert cfg.runtime.blocks_per_stage == [2, 1]
    err = capsys.readouterr().err
    assert err.strip() == ("dfa-async: warning: runtime.stages is now called runtime.blocks_per_stage; "
                           "please rename it")
    path = tmp_path / "old.toml"
    path.write_text("[runtime]\nstages = \"auto\"\n")
    assert config.load(path).runtime.blocks_per_stage == "auto"
    with pytest.raises(ConfigError, match="runtime.stages: is the old name of runtime.blocks_per_stage, which is also"):
        config.load(None, ["runtime.stages=[2, 1]", "runtime.blocks_per_stage=[2, 1]"])


@pytest.mark.parametrize("layer, block", [(2, 1), (1, 0), (0, -1)])
def test_the_one_based_bottleneck_layer_is_read_as_the_zero_based_block(layer, block, capsys):
    """Blocks are numbered from 0 everywhere; the old 1-based setting (0 meant off) still loads, converted."""
    cfg = config.load(None, [f"bottleneck.layer={layer}", "bottleneck.width=8"])
    assert cfg.bottleneck.block == block
    assert capsys.readouterr().err.strip() == ("dfa-async: warning: bottleneck.layer is now called bottleneck.block; "
                                               f"please rename it (read as bottleneck.block = {block})")
