"""config.yaml, read once: validation, the run grid, and each run's overrides.

The Snakefile calls these; so do the tests. Nothing here trains or touches data.
"""
from __future__ import annotations

import json
import shlex

import yaml

GRID_KEYS = ("datasets", "imbalance_factors", "seeds", "methods")


def _where(err):
    path = ""
    for p in err.absolute_path:
        path += f"[{p}]" if isinstance(p, int) else (f".{p}" if path else str(p))
    return path or "(top level)"


def coerce_cli(config):
    """`snakemake --config seeds=[0,1,2]` hands list items over as strings: read them as YAML."""
    for key in GRID_KEYS:
        if isinstance(config.get(key), list):
            config[key] = [yaml.safe_load(v) if isinstance(v, str) else v for v in config[key]]
    return config


def validate(config, schema_path):
    """Validate against the JSON schema and the registry; raise ValueError with one line."""
    import jsonschema

    from ltbench import methods

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise ValueError(f"config.yaml: key '{_where(e)}': {e.message} (see workflow/schemas/config.schema.yaml)")
    if config["preset"] not in config["presets"]:
        raise ValueError(f"config.yaml: key 'preset': {config['preset']!r} is not one of the presets "
                         f"({', '.join(config['presets'])})")
    grid = effective(config)
    for name, v in config.get("variants", {}).items():
        if v["base"] not in methods.METHODS:
            raise ValueError(f"config.yaml: key 'variants.{name}.base': unknown method {v['base']!r}; "
                             f"known: {', '.join(sorted(methods.METHODS))}")
        if name in methods.METHODS:
            raise ValueError(f"config.yaml: key 'variants.{name}': the name is already a registered method; pick another")
    for m in (part for name in grid["methods"] for part in split_stage(name) if part):
        if m not in methods.METHODS and m not in config.get("variants", {}):
            raise ValueError(f"config.yaml: key 'methods': unknown method {m!r}; known: "
                             f"{', '.join(sorted(methods.METHODS))}, or define it under 'variants:'")
    for d in grid["datasets"]:
        if d not in config["data"]:
            raise ValueError(f"config.yaml: key 'datasets': {d!r} is not defined under 'data:' "
                             f"({', '.join(config['data'])})")
    for imb in grid["imbalance_factors"]:
        if imb < 1:
            raise ValueError(f"config.yaml: key 'imbalance_factors': {imb} < 1; ltbench uses IF = n_max / n_min >= 1 "
                             f"(write 100, not 0.01)")
    # every run's settings must resolve before any compute is spent
    for d in grid["datasets"]:
        for m in grid["methods"]:
            base, overrides = run_settings(config, d, m)
            from ltbench.config import build
            try:
                build(d, grid["imbalance_factors"][0], m, 0, base=base,
                      family=config["data"][d].get("family", "cifar"), overrides=overrides)
            except (ValueError, KeyError) as err:
                raise ValueError(f"config.yaml: run {m} on {d}: {err}") from None


def effective(config):
    """The grid: the preset's block, with any top-level key (e.g. --config seeds=[0,1,2]) winning."""
    preset = dict(config["presets"][config["preset"]])
    for key in GRID_KEYS + ("train",):
        if config.get(key) is not None:
            preset[key] = config[key]
    preset.setdefault("train", {})
    return preset


def split_stage(method):
    """`crt@ldam_drw` -> ("crt", "ldam_drw"): a two-stage method named with its stage 1."""
    head, _, stage1 = method.partition("@")
    return head, stage1


def stage1_of(config, method):
    """The run whose final checkpoint initialises `method`, or "" for one-stage methods."""
    from ltbench import methods
    head, stage1 = split_stage(method)
    if stage1:
        return stage1
    base = config.get("variants", {}).get(head, {}).get("base", head)
    return methods.get(base).stage1


def run_settings(config, dataset, method):
    """(base method, overrides) of one run, later winning: the preset's `train`, the dataset's
    `train`, the preset's `per_method` entry for this name, the variant's overrides."""
    grid = effective(config)
    method, _ = split_stage(method)
    variant = dict(config.get("variants", {}).get(method, {}))
    base = variant.pop("base", method)
    overrides = {**grid["train"], **config["data"][dataset].get("train", {}),
                 **grid.get("per_method", {}).get(method, {}), **variant}
    return base, overrides


def set_flags(overrides):
    """`--set key=value` flags for `ltbench train`; JSON values are YAML flow values."""
    return " ".join("--set " + shlex.quote(f"{k}={json.dumps(v)}") for k, v in overrides.items())
