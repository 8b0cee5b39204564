"""config.yaml: schema errors in one line naming the key; grid, variants and overrides."""
from pathlib import Path

import pytest
import yaml

from ltbench import experiment
from ltbench.config import build

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_the_shipped_config_is_valid(cfg):
    experiment.validate(cfg, SCHEMA)


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["presets"]["demo"].__setitem__("seeds", ["a"]), "presets.demo.seeds[0]"),
    (lambda c: c.__setitem__("threads", 0), "'threads'"),
    (lambda c: c.__setitem__("imbalance_factors", [0.01]), "imbalance_factors"),
    (lambda c: c.__setitem__("methods", ["nope"]), "unknown method 'nope'"),
    (lambda c: c.__setitem__("datasets", ["nope_lt"]), "'nope_lt' is not defined under 'data:'"),
    (lambda c: c["data"]["fmnist"].__setitem__("source", "mnist"), "data.fmnist.source"),
    (lambda c: c.__setitem__("bogus", 1), "bogus"),
    (lambda c: c.__setitem__("train", {"epochz": 3}), "unknown setting 'epochz'"),
    (lambda c: c.__setitem__("variants", {"la2": {"base": "lax"}}), "variants.la2.base"),
])
def test_bad_config_fails_in_one_line_naming_the_key(cfg, mutate, needle):
    mutate(cfg)
    with pytest.raises(ValueError) as err:
        experiment.validate(cfg, SCHEMA)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_grid_keys_on_the_command_line_override_the_preset(cfg):
    cfg["seeds"] = [0, 1, 2]
    grid = experiment.effective(cfg)
    assert grid["seeds"] == [0, 1, 2] and grid["datasets"] == ["fmnist"]


def test_a_variant_is_config_with_its_own_name(cfg):
    cfg["variants"] = {"la_tau2": {"base": "la", "tau": 2.0}}
    cfg["methods"] = ["ce", "la_tau2"]
    experiment.validate(cfg, SCHEMA)
    base, over = experiment.run_settings(cfg, "fmnist", "la_tau2")
    run = build("fmnist", 100, "la_tau2", 0, base=base, overrides=over)
    assert (run.method, run.base, run.params["tau"], run.epochs) == ("la_tau2", "la", 2.0, 20)


def test_epoch_scale_shrinks_every_recipe_in_proportion():
    assert build("x", 10, "ce", 0, overrides={"epoch_scale": 0.08}).epochs == 16
    assert build("x", 10, "crt", 0, overrides={"epoch_scale": 0.08}).epochs == 1
    assert build("x", 10, "tau_norm", 0, overrides={"epoch_scale": 0.08}).epochs == 0
    assert build("x", 10, "ce", 0, overrides={"epoch_scale": 0.08, "epochs": 5}).epochs == 5


def test_batch_scale_shrinks_the_batch_and_the_lr_with_it_unless_either_is_given():
    ce = build("x", 10, "ce", 0, overrides={"batch_scale": 0.25})           # recipe: batch 128, lr 0.1
    assert (ce.batch_size, ce.lr) == (32, pytest.approx(0.025))
    bcl = build("x", 10, "bcl", 0, overrides={"batch_scale": 0.25})         # recipe: batch 256, lr 0.15
    assert (bcl.batch_size, bcl.lr) == (64, pytest.approx(0.0375))
    lr_given = build("x", 10, "ce", 0, overrides={"batch_scale": 0.25, "lr": 0.5})
    assert (lr_given.batch_size, lr_given.lr) == (32, 0.5)
    batch_given = build("x", 10, "ce", 0, overrides={"batch_scale": 0.25, "batch_size": 256})
    assert (batch_given.batch_size, batch_given.lr) == (256, pytest.approx(0.1))


def test_set_flags_round_trip_through_the_cli_parser():
    from ltbench.cli import parser
    from ltbench.config import parse_value
    flags = experiment.set_flags({"epochs": 16, "milestones": [8, 12], "backbone": "resnet8", "tau": 0.5})
    import shlex
    args = parser().parse_args(["train", "--data", "d", "--split", "s", "--dataset", "x", "--imb", "10",
                                "--method", "ce", "--out", "o", *shlex.split(flags)])
    parsed = dict(s.split("=", 1) for s in args.set)
    assert {k: parse_value(v) for k, v in parsed.items()} == {"epochs": 16, "milestones": [8, 12],
                                                              "backbone": "resnet8", "tau": 0.5}


def test_if_below_one_is_rejected():
    with pytest.raises(ValueError, match="IF = n_max / n_min"):
        build("cifar10", 0.01, "ce", 0)


def test_the_demo_maps_each_recipe_backbone_to_its_small_sibling(cfg):
    got = {}
    for m in ("ce", "bbn"):
        base, over = experiment.run_settings(cfg, "fmnist", m)
        got[m] = build("fmnist", 100, m, 0, base=base, overrides=over).backbone
    assert got == {"ce": "resnet8", "bbn": "resnet8_bbn"}
    assert build("cifar10", 100, "bbn", 0).backbone == "resnet32_bbn"


def test_command_line_lists_arrive_as_strings_and_are_read_as_yaml(cfg):
    cfg.update(seeds=["0", "1", "2"], imbalance_factors=["100"], methods=["ce", "la"])
    experiment.coerce_cli(cfg)
    experiment.validate(cfg, SCHEMA)
    assert cfg["seeds"] == [0, 1, 2] and cfg["imbalance_factors"] == [100] and cfg["methods"] == ["ce", "la"]
