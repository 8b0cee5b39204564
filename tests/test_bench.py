"""`ltbench bench`: a tiny CPU run gives both paths, a ratio, a packed rate and projections; the
projected view-image counts equal the recipes written out by hand."""
import contextlib
import io
import json

import pytest

from ltbench import bench, cli


@pytest.fixture(scope="module")
def report():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["bench", "--device", "cpu", "--methods", "ce,bcl,glmc", "--steps", "1", "--warmup", "0",
                  "--batch", "2", "--workers", "1", "--packed", "2", "--config", "", "--json"])
    return json.loads(out.getvalue())


def test_every_method_is_timed_on_both_paths_with_positive_rates(report):
    rows = {(r["method"], r["path"]): r for r in report["results"]}
    assert set(rows) == {(m, p) for m in ("ce", "bcl", "glmc") for p in ("ltbench", "reference")}
    for (method, path), r in rows.items():
        assert r["device"] == "cpu" and r["batch"] == 2 and r["steps"] == 1
        assert r["view_images"] == 2 * {"ce": 1, "bcl": 3, "glmc": 4}[method]
        assert r["seconds"] > 0 and r["view_images_per_s"] == pytest.approx(r["view_images"] / r["seconds"])
        assert r["workers"] == (1 if path == "reference" else 0)
    assert rows["glmc", "ltbench"]["backbone"] == "resnet32_w4"


def test_the_table_has_both_paths_and_their_ratio(report):
    text = bench.table(report)
    header = next(line for line in text.splitlines() if line.startswith("device") and "ratio" in line)
    assert header.split()[-3:] == ["ltbench", "reference", "ratio"]
    lines = text.splitlines()
    for method in ("ce", "bcl", "glmc"):
        row = next(line for line in lines if line.startswith("cpu ") and f" {method} " in line)
        fast, ref, ratio = map(float, row.split()[-3:])
        exact = {r["path"]: r["view_images_per_s"] for r in report["results"] if r["method"] == method}
        assert fast == pytest.approx(exact["ltbench"], abs=0.051) and ref == pytest.approx(exact["reference"], abs=0.051)
        assert fast > 0 and ref > 0 and ratio == pytest.approx(exact["ltbench"] / exact["reference"], abs=0.0051)
    assert "packed: 2 x ce on cpu at once" in text


def test_packed_runs_report_an_aggregate_rate(report):
    (p,) = report["packed"]
    assert p["k"] == 2 and len(p["per_run"]) == 2 and all(r > 0 for r in p["per_run"])
    # the aggregate is over the span from the first start to the last end, so at most the sum
    assert 0 < p["view_images_per_s"] <= sum(p["per_run"]) * 1.0001


def test_projection_of_the_core_table(report):
    (core,) = [p for p in report["projection"] if p["table"] == "core"]
    assert core["runs"] == 2 * 3 * 3 * 12      # tau_norm's stage 1 is the table's ce run, not one more
    assert core["view_images"] == pytest.approx(970.5e6, rel=1e-3)
    rates = {path: {r["method"]: r["view_images_per_s"] for r in report["results"] if r["path"] == path}
             for path in ("ltbench", "reference")}
    runs = bench.grid_runs(bench.CORE, "core")
    by_key = {1: rates["ltbench"]["ce"], 3: rates["ltbench"]["bcl"], "paired": rates["ltbench"]["glmc"]}
    assert core["ltbench_hours"] == pytest.approx(sum(v / by_key[k] for v, k in runs if v) / 3600)
    assert core["reference_hours"] > 0


def ldam_counts(n_max, classes, imb):
    return [int(n_max * (1 / imb) ** (i / (classes - 1))) for i in range(classes)]


def test_view_images_of_a_grid_follow_epochs_times_images_times_views():
    n = {(d, imb): sum(ldam_counts(*size, imb)) for d, size in (("cifar10", (5000, 10)), ("cifar100", (500, 100)))
         for imb in (100, 50, 10)}
    assert n["cifar10", 100] == 12406 and n["cifar100", 100] == 10847
    per_image_epochs = 8 * 200 * 1 + 2 * 200 * 3 + 200 * 4 + 0          # one-view x8, bcl/proco, glmc, tau_norm
    runs = bench.grid_runs(bench.CORE, "core")
    assert sum(v for v, _ in runs) == per_image_epochs * sum(n.values()) * 3
    # a two-stage method brings its stage-1 run once, however many stage 2s use it
    config = {**bench.CORE, "presets": {"x": dict(datasets=["cifar10"], imbalance_factors=[10], seeds=[0],
                                                    methods=["crt", "ce", "lws", "kcl"], train={})}}
    runs = sorted(bench.grid_runs(config, "x"))
    n10 = n["cifar10", 10]
    assert runs == sorted([(200 * n10, 1), (10 * n10, 1), (5 * n10, 1), (200 * n10, 1), (1000 * n10 * 2, 2)])


def test_hours_use_the_rate_of_the_family_with_as_many_views():
    runs = [(3600 * 10, 1), (3600 * 30, 3), (3600 * 40, "paired"), (0, 1)]
    rates = {"ce": 10.0, "bcl": 20.0, "proco": 40.0, "glmc": 40.0}
    assert bench.project(runs, rates) == pytest.approx(1 + 1 + 1)
    assert bench.project(runs, {"ce": 10.0}) is None
