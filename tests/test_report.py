"""The report stage end to end on a real MLflow SQLite store with known numbers."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from ltbench.report import collect, report
from ltbench.report.tables import REPORTED_CSV, SPEC_NAMES, metric_table, to_markdown

METHODS, IMBS, SEEDS = ("ce", "ldam_drw"), (100.0, 10.0), (0, 1, 2)
C = 10


def counts_of(imb):
    return np.round(500 * imb ** (-np.arange(C) / (C - 1))).astype(int)


def groups_of(counts):
    return {"many": int((counts > 100).sum()), "medium": int(((counts >= 20) & (counts <= 100)).sum()),
            "few": int((counts < 20).sum())}


def values_of(method, imb, seed):
    """Known, distinct numbers for one run."""
    rng = np.random.default_rng([METHODS.index(method), int(imb), seed])
    v = {f"top1_{s}": float(v) for s, v in zip(("last", "best_val", "best_test"), 40 + 30 * rng.random(3))}
    sizes = groups_of(counts_of(imb))
    for g in ("many", "medium", "few"):
        for s in ("last", "best_val", "best_test"):
            if sizes[g]:  # the trainer logs nothing for an empty group
                v[f"{g}_{s}"] = float(100 * rng.random())
    v.update(ece_last=0.1, nll_last=1.5, wall_s=60.0 + 30 * seed)
    per_class = pd.DataFrame({"class": np.arange(C), "train_count": counts_of(imb),
                              "acc_last": 100 * rng.random(C), "acc_best_val": 100 * rng.random(C)})
    return v, per_class


REPORTED = """method,dataset,imbalance_factor,backbone,split,top1,source
CE,CIFAR-10-LT,100,ResNet-32,overall,33.3,"survey table; suspect: misprint"
CE,CIFAR-10-LT,100,ResNet-32,overall,21.1,"survey table (Top-1, ResNet-32)"
CE,CIFAR-10-LT,100,ResNet-32,overall,11.1,"paper X Table 1 (RECALLED, verify)"
CE,CIFAR-10-LT,100,ResNet-32,overall,22.2,repo a/b@123 README.md
CE,CIFAR-10-LT,10,ResNet-32,overall,44.4,"paper Y; suspect: same value printed twice"
CE,CIFAR-10-LT,10,ResNet-32,overall,55.5,"paper X Table 1 (RECALLED, verify)"
LDAM-DRW,CIFAR-10-LT,100,ResNet-32 (BBN variant),overall,66.6,repo c/d@456 fig.png
LDAM-DRW,CIFAR-10-LT,100,ResNet-32,many,77.7,repo c/d@456 README.md
LDAM-DRW,CIFAR-100-LT,100,ResNet-32,overall,99.9,repo c/d@456 README.md
LDAM-DRW,CIFAR-10-LT,100,ResNet-32,overall,12.3,"paper Z (RECALLED)"
LDAM-DRW,CIFAR-10-LT,100,ResNet-32,overall,12.9,"survey table (Top-1, ResNet-32)"
LDAM-DRW,CIFAR-10-LT,10,ResNet-32,overall,88.8,"repo c/d@456 README.md; suspect: misprint"
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 finished runs (2 methods x 2 IF x 3 seeds) on cifar10, their result.json files."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("ltbench", artifact_location=str(tmp / "mlartifacts"))
    files, truth = [], {}
    for method in METHODS:
        for imb in IMBS:
            for seed in SEEDS:
                v, pc = values_of(method, imb, seed)
                truth[method, imb, seed] = v, pc
                run_id = client.create_run(exp, tags={"dataset": "cifar10", "imb": str(imb), "method": method,
                                                      "base": method, "seed": str(seed)}).info.run_id
                sizes = groups_of(counts_of(imb))
                params = {"backbone": "resnet32", "epochs": "16", **{f"n_{g}": str(n) for g, n in sizes.items()}}
                client.log_batch(run_id, metrics=[Metric(k, x, 0, 0) for k, x in v.items()],
                                 params=[Param(k, x) for k, x in params.items()])
                run_dir = tmp / "runs" / "cifar10" / f"if{imb:g}" / method / f"seed{seed}"
                run_dir.mkdir(parents=True)
                pc.to_csv(run_dir / "per_class.csv", index=False)
                client.log_artifact(run_id, str(run_dir / "per_class.csv"))
                # result.json carries a stale copy of a number: the tables must show MLflow's.
                result = {"run_id": run_id, "tracking_uri": uri, "dataset": "cifar10", "imb": imb,
                          "method": method, "base": method, "seed": seed, "top1_last": -1.0}
                (run_dir / "result.json").write_text(json.dumps(result))
                files.append(run_dir / "result.json")
    reported = tmp / "reported.csv"
    reported.write_text(REPORTED)
    paths = report(files, uri, tmp / "tables", tmp / "plots", methods_order=["ldam_drw", "ce"],
                   reported_csv=reported)
    return dict(tmp=tmp, uri=uri, files=files, truth=truth, paths=paths)


def md_rows(path):
    """Markdown table body as {first cell: [cells]} plus the header cells."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    return split[0], {row[0]: row for row in split[2:]}, [row[0] for row in split[2:]]


def expected(truth, method, imb, key):
    v = np.array([truth[method, imb, s][0][key] for s in SEEDS])
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


@pytest.mark.parametrize("metric", ["top1_last", "top1_best_val", "top1_best_test"])
def test_main_table_cells_are_numpy_mean_and_sample_std(store, metric):
    header, rows, order = md_rows(store["tmp"] / "tables" / f"cifar10_{metric}.md")
    assert order == ["ldam_drw", "ce"]  # the given order, not alphabetical
    for method in METHODS:
        for imb in IMBS:
            assert rows[method][header.index(f"IF {imb:g}")] == expected(store["truth"], method, imb, metric)
        assert rows[method][header.index("backbone")] == "resnet32"
        assert rows[method][header.index("min/run")] == "1.5"  # (60 + 90 + 120) / 3 s
    assert header.index("IF 100") < header.index("IF 10")


def test_groups_block_has_sizes_and_values(store):
    header, rows, _ = md_rows(store["tmp"] / "tables" / "cifar10_groups_last.md")
    # IF 100 counts 500..5: 4 many, 3 medium, 3 few; IF 10 counts 500..50: 7 many, 3 medium, no few.
    assert header[1:5] == ["IF 100: many (4)", "IF 100: medium (3)", "IF 100: few (3)", "IF 100: all"]
    assert header[5:9] == ["IF 10: many (7)", "IF 10: medium (3)", "IF 10: few (0)", "IF 10: all"]
    truth = store["truth"]
    assert rows["ce"][header.index("IF 100: medium (3)")] == expected(truth, "ce", 100.0, "medium_last")
    assert rows["ce"][header.index("IF 100: all")] == expected(truth, "ce", 100.0, "top1_last")
    assert rows["ldam_drw"][header.index("IF 10: few (0)")] == "--"


def test_latex_is_booktabs_and_escaped(store):
    for path in (store["tmp"] / "tables").glob("*.tex"):
        tex = path.read_text()
        assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule"), path
        assert not re.search(r"(?<!\\)_", tex), f"unescaped underscore in {path}"
        assert "±" not in tex
    tex = (store["tmp"] / "tables" / "cifar10_top1_last.tex").read_text()
    assert r"ldam\_drw" in tex and r"$\pm$" in tex
    assert r"\cmidrule(lr){2-5}" in (store["tmp"] / "tables" / "cifar10_groups_last.tex").read_text()


def test_csv_is_numeric(store):
    df = pd.read_csv(store["tmp"] / "tables" / "cifar10_top1_last.csv")
    assert len(df) == len(METHODS) * len(IMBS) and (df["n"] == 3).all()
    for r in df.itertuples():
        v = np.array([store["truth"][r.method, r.imb, s][0]["top1_last"] for s in SEEDS])
        assert r.mean == pytest.approx(v.mean(), abs=1e-9) and r.std == pytest.approx(v.std(ddof=1), abs=1e-9)


def test_reported_prefers_citable_and_never_suspect(store):
    df = pd.read_csv(store["tmp"] / "tables" / "reported_vs_reproduced.csv")
    got = {(r.method, r.imb): r for r in df.itertuples()}
    assert got["ce", 100.0].reported_top1 == 22.2      # repo over survey over RECALLED; suspect 33.3 skipped
    assert got["ce", 10.0].reported_top1 == 55.5       # only RECALLED left once the suspect row is dropped
    assert got["ldam_drw", 100.0].reported_top1 == 12.9  # citable over RECALLED; other backbone/split/dataset ignored
    assert got["ce", 10.0].unverified and not got["ce", 100.0].unverified
    assert np.isnan(got["ldam_drw", 10.0].reported_top1)  # a suspect row alone gives nothing
    v = np.array([store["truth"]["ce", 100.0, s][0]["top1_best_test"] for s in SEEDS])
    assert got["ce", 100.0].diff == pytest.approx(v.mean() - 22.2)
    assert got["ce", 100.0].source == "repo a/b@123 README.md"
    md = (store["tmp"] / "tables" / "reported_vs_reproduced.md").read_text()
    assert "33.30" not in md and "44.40" not in md and "88.80" not in md


def test_single_seed_cell_is_plain_mean(store):
    df = collect([f for f in store["files"] if f.parent.name == "seed1"])
    md = to_markdown(metric_table(df, "cifar10", "top1_last"))
    v = store["truth"]["ce", 100.0, 1][0]["top1_last"]
    assert f"| {v:.2f} |" in md and "±" not in md.split("\n", 2)[2]
    assert "n=1" in md.splitlines()[0]


def test_plots_are_png(store):
    for imb in IMBS:
        for kind in ("groups", "per_class"):
            path = store["tmp"] / "plots" / f"cifar10_if{imb:g}_{kind}.png"
            assert path in store["paths"]
            data = path.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_unknown_run_id_names_the_file(store, tmp_path):
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": store["uri"], "dataset": "cifar10",
                               "imb": 100.0, "method": "ce", "seed": 0}))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*not in the MLflow store"):
        collect([store["files"][0], bad])


def test_spec_names_cover_registry_and_exist_in_reported_csv():
    names = pd.read_csv(SPEC_NAMES, dtype=str, keep_default_na=False)
    assert set(names["method"]) == set(
        "ce focal cb_ce cb_focal ldam_drw la bs mixup bcl tsc kcl proco glmc glmc_maxnorm hybrid_sc "
        "hybrid_psc crt lws tau_norm ncm bbn disalign mislas tde ssp".split())
    rep = pd.read_csv(REPORTED_CSV, dtype=str, keep_default_na=False)
    pairs = set(zip(rep["method"], rep["backbone"]))
    for r in names[names["spec_method"] != ""].itertuples():
        assert (r.spec_method, r.backbone) in pairs, r.method
