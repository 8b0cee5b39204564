"""Paper-layout tables from the collected runs: Markdown, LaTeX (booktabs) and CSV.

Per dataset: methods x IF for the headline metric (last epoch by default), the best-validation
epoch, and the best-test epoch (selected on the test set: optimistic, printed only to compare
with papers, which mostly report it); a many/medium/few block; and, for CIFAR, our best-test
numbers next to the published ones.
"""
from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd

from ltbench.report.collect import GROUPS

HERE = Path(__file__).parent
SPEC_NAMES = HERE / "spec_names.csv"
REPORTED_CSV = HERE / "reported_results.csv"
# Our dataset names -> the dataset strings of the published-results CSV.
SPEC_DATASETS = {"cifar10": "CIFAR-10-LT", "cifar100": "CIFAR-100-LT"}

TITLES = {
    "top1_last": "top-1 (%) at the last epoch",
    "top1_best_val": "top-1 (%) at the epoch with the best validation top-1",
    "top1_best_test": "top-1 (%) at the epoch with the best test top-1 -- selected on the test set, "
                      "optimistic; for comparison with published numbers only",
}

Cell = namedtuple("Cell", "mean std n")
Table = namedtuple("Table", "stem caption header rows numeric spans")


def stats(values):
    """Mean and sample std (ddof=1) of the non-NaN values; std is NaN for a single value."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return Cell(float("nan"), float("nan"), 0)
    return Cell(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), len(v))


def fmt_imb(imb):
    return f"{float(imb):g}"


def methods_in_order(df, methods_order=None):
    """The config's order; methods that ran but are not in it follow in order of appearance."""
    present = list(dict.fromkeys(df["method"]))
    order = [m for m in (methods_order or []) if m in present]
    return order + [m for m in present if m not in order]


def _seeds_note(cells):
    ns = sorted({c.n for c in cells if isinstance(c, Cell) and c.n})
    if not ns:
        return "no runs"
    if ns == [1]:
        return "one seed per cell (n=1), no std"
    span = f"{ns[0]}-{ns[-1]}" if len(ns) > 1 else f"{ns[0]}"
    note = f"mean ± std (sample std, ddof=1) over n={span} seeds"
    return note + (f"; cells with fewer than {ns[-1]} seeds give their n" if len(ns) > 1 else "")


def _cell_text(cell, n_max, pm):
    if not isinstance(cell, Cell):
        return str(cell)
    if cell.n == 0:
        return "--"
    text = f"{cell.mean:.2f}" if cell.n == 1 else f"{cell.mean:.2f} {pm} {cell.std:.2f}"
    return text + (f" (n={cell.n})" if cell.n < n_max else "")


def _n_max(rows):
    return max([c.n for r in rows for c in r if isinstance(c, Cell)] or [0])


def _backbones(runs):
    return "/".join(sorted({str(b) for b in runs["backbone"] if str(b)}))


def metric_table(df, dataset, metric, methods_order=None):
    """Rows = methods, columns = IF (largest first), + backbone and mean minutes per run."""
    d = df[df["dataset"] == dataset]
    imbs = sorted(d["imb"].unique(), reverse=True)
    header = ["method", "backbone"] + [f"IF {fmt_imb(i)}" for i in imbs] + ["min/run"]
    rows, numeric = [], []
    for m in methods_in_order(d, methods_order):
        runs = d[d["method"] == m]
        minutes = runs["wall_s"].mean() / 60
        cells = [stats(runs.loc[runs["imb"] == i, metric]) for i in imbs]
        rows.append([m, _backbones(runs)] + cells + [f"{minutes:.1f}"])
        numeric += [dict(dataset=dataset, method=m, backbone=_backbones(runs), imb=i, metric=metric,
                         mean=c.mean, std=c.std, n=c.n, minutes_per_run=minutes)
                    for i, c in zip(imbs, cells) if c.n]
    title = TITLES.get(metric, metric)
    caption = f"{dataset}: {title}; {_seeds_note([c for r in rows for c in r])}. min/run: mean wall time of one run."
    return Table(f"{dataset}_{metric}", caption, header, rows, pd.DataFrame(numeric), None)


def _group_size(runs, group):
    sizes = sorted({int(s) for s in runs[f"n_{group}"].dropna()})
    return "/".join(map(str, sizes)) or "?"


def groups_table(df, dataset, select="last", methods_order=None):
    """Per IF: many / medium / few / all, group sizes (classes) in the header."""
    d = df[df["dataset"] == dataset]
    imbs = sorted(d["imb"].unique(), reverse=True)
    header, spans = ["method"], [("", 1)]
    for i in imbs:
        at = d[d["imb"] == i]
        header += [f"{g} ({_group_size(at, g)})" for g in GROUPS] + ["all"]
        spans.append((f"IF {fmt_imb(i)}", len(GROUPS) + 1))
    rows, numeric = [], []
    for m in methods_in_order(d, methods_order):
        row = [m]
        for i in imbs:
            runs = d[(d["method"] == m) & (d["imb"] == i)]
            for g, col in [(g, f"{g}_{select}") for g in GROUPS] + [("all", f"top1_{select}")]:
                c = stats(runs[col])
                row.append(c)
                if c.n:
                    numeric.append(dict(dataset=dataset, method=m, imb=i, group=g, select=select,
                                        classes=None if g == "all" else _group_size(runs, g),
                                        mean=c.mean, std=c.std, n=c.n))
        rows.append(row)
    caption = (f"{dataset}: top-1 (%) by class group at the {select.replace('_', '-')} epoch "
               f"(groups by training images per class, > 100 / 20-100 / < 20 unless the run's config moved "
               f"the thresholds; classes per group in brackets; -- = empty group or no run); {_seeds_note([c for r in rows for c in r])}.")
    return Table(f"{dataset}_groups_{select}", caption, header, rows, pd.DataFrame(numeric), spans)


def source_rank(source):
    """0: read directly from an official repo or issue; 1: another citable table; 2: unverified.

    Unverified = the source says RECALLED (quoted, not read from the paper) or asks to verify.
    """
    s = source.lower()
    if "recalled" in s or "verify" in s:
        return 2
    return 0 if s.startswith("repo ") or "github issue" in s else 1


def load_reported(path=REPORTED_CSV):
    """Published overall top-1 rows usable for comparison, best source first.

    Rows whose source marks them suspect (known misprints) are dropped; the rest are ranked by
    `source_rank`, file order breaking ties.
    """
    rep = pd.read_csv(path, dtype=str, keep_default_na=False)
    need = {"method", "dataset", "imbalance_factor", "backbone", "split", "top1", "source"}
    if not need <= set(rep.columns):
        raise ValueError(f"{path}: missing columns {', '.join(sorted(need - set(rep.columns)))}; "
                         f"it needs {', '.join(sorted(need))}")
    rep = rep[(rep["split"] == "overall") & ~rep["source"].str.contains("suspect", case=False)].copy()
    rep["rank"] = rep["source"].map(source_rank)
    rep["imb"] = pd.to_numeric(rep["imbalance_factor"].replace("", np.nan))
    rep["top1"] = rep["top1"].astype(float)
    return rep.sort_values("rank", kind="stable")


def load_spec_names(path=SPEC_NAMES):
    names = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {r.method: (r.spec_method, r.backbone) for r in names.itertuples()}


def reported_table(df, reported_csv=REPORTED_CSV, methods_order=None):
    """Our best-test-epoch mean next to the published top-1, for the CIFAR-LT datasets."""
    rep, names = load_reported(reported_csv), load_spec_names()
    d = df[df["dataset"].isin(SPEC_DATASETS)]
    header = ["method", "dataset", "IF", "backbone", "epochs", "ours", "reported", "diff",
              "reported backbone", "source"]
    rows, numeric = [], []
    for ds in [x for x in SPEC_DATASETS if x in set(d["dataset"])]:
        for m in methods_in_order(d, methods_order):
            for i in sorted(d["imb"].unique(), reverse=True):
                runs = d[(d["dataset"] == ds) & (d["method"] == m) & (d["imb"] == i)]
                if runs.empty:
                    continue
                ours = stats(runs["top1_best_test"])
                spec_method, spec_backbone = names.get(m, ("", ""))
                hit = rep[(rep["method"] == spec_method) & (rep["dataset"] == SPEC_DATASETS[ds])
                          & (rep["imb"] == i) & ((rep["backbone"] == spec_backbone) | (spec_backbone == ""))]
                best = hit.iloc[0] if spec_method and len(hit) else None
                epochs = "/".join(map(str, sorted({int(e) for e in runs["epochs"].dropna()})))
                top1 = best["top1"] if best is not None else float("nan")
                diff = ours.mean - top1
                rows.append([m, SPEC_DATASETS[ds], fmt_imb(i), _backbones(runs), epochs, ours,
                             "--" if best is None else f"{top1:.2f}",
                             "--" if best is None else f"{diff:+.2f}",
                             "" if best is None else best["backbone"],
                             "no published number" if best is None else best["source"]])
                numeric.append(dict(method=m, spec_method=spec_method, dataset=SPEC_DATASETS[ds], imb=i,
                                    backbone=_backbones(runs), epochs=epochs, mean=ours.mean, std=ours.std,
                                    n=ours.n, reported_top1=top1, diff=diff,
                                    reported_backbone="" if best is None else best["backbone"],
                                    unverified=None if best is None else bool(best["rank"] == 2),
                                    source="" if best is None else best["source"]))
    caption = ("Reported vs reproduced: ours is top-1 (%) at the best test epoch (the selection most papers "
               f"use), {_seeds_note([c for r in rows for c in r])}; reported is the published overall top-1, "
               "taken from the official repo where possible, else another citable table, else an unverified "
               "(RECALLED) one; rows marked suspect are never used; "
               "diff = ours - reported. Our backbone and epochs may differ from the paper's.")
    return Table("reported_vs_reproduced", caption, header, rows, pd.DataFrame(numeric), None)


def _md_escape(text):
    return text.replace("|", "\\|")


def _align(t):
    """Right-align columns of numbers, left-align text."""
    return ["r" if j and any(isinstance(r[j], Cell) or _numeric(r[j]) for r in t.rows) else "l"
            for j in range(len(t.header))]


def to_markdown(t):
    n_max = _n_max(t.rows)
    header = t.header
    if t.spans:
        # Markdown has one header row: prefix each column with its span's label.
        labels = [label for label, width in t.spans for _ in range(width)]
        header = [f"{label}: {h}" if label else h for label, h in zip(labels, header)]
    lines = [f"**{_md_escape(t.caption)}**", "", "| " + " | ".join(map(_md_escape, header)) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in _align(t)) + "|"]
    lines += ["| " + " | ".join(_md_escape(_cell_text(c, n_max, "±")) for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
        "<": r"$<$", ">": r"$>$"}


def tex_escape(text):
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(t):
    n_max = _n_max(t.rows)
    cols = "".join(_align(t))
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(t.caption)}}}", rf"\label{{tab:{t.stem.replace('_', '-')}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule"]
    if t.spans:
        lines.append(" & ".join(rf"\multicolumn{{{w}}}{{c}}{{{tex_escape(label)}}}" if w > 1 else tex_escape(label)
                                for label, w in t.spans) + r" \\")
        start, rules = 1, []
        for label, w in t.spans:
            if label:
                rules.append(rf"\cmidrule(lr){{{start}-{start + w - 1}}}")
            start += w
        lines.append(" ".join(rules))
    lines += [" & ".join(map(tex_escape, t.header)) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(_cell_text(c, n_max, "±")) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _numeric(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def write(t, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{t.stem}.md", out / f"{t.stem}.tex", out / f"{t.stem}.csv"]
    paths[0].write_text(to_markdown(t))
    paths[1].write_text(to_latex(t))
    t.numeric.to_csv(paths[2], index=False)
    return paths


def write_tables(df, out_dir, methods_order=None, reported_csv=REPORTED_CSV, metric="top1_last"):
    """Write every table of the report; returns the paths written.

    `metric` is the headline (any per-run column, e.g. `top1_last`, `ece_last`); the best-val and
    best-test top-1 tables are always written next to it.
    """
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} is not a collected column; choose one of "
                         f"{', '.join(c for c in df.columns if df[c].dtype.kind == 'f')}")
    paths = []
    for ds in dict.fromkeys(df["dataset"]):
        for m in dict.fromkeys([metric, "top1_best_val", "top1_best_test"]):
            paths += write(metric_table(df, ds, m, methods_order), out_dir)
        paths += write(groups_table(df, ds, "last", methods_order), out_dir)
    if df["dataset"].isin(SPEC_DATASETS).any():
        paths += write(reported_table(df, reported_csv, methods_order), out_dir)
    return paths
