"""Figures of the report: many/medium/few bars per method, per-class accuracy against class size.

Uses matplotlib's object API on the Agg canvas (no pyplot), so it never touches a display or
global state. Both figures stay readable from 2 to ~25 methods: bars are grouped by method with
one colour per class group, and the per-class curves are split into panels of a few methods.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, ScalarFormatter

from ltbench.report.collect import GROUPS
from ltbench.report.tables import fmt_imb, methods_in_order, stats

MARKERS = "osD^vP*X"
PER_PANEL = 6          # per-class curves per panel; more than this is unreadable on one axis


def _seeds(runs):
    ns = sorted(runs.groupby("method")["seed"].nunique().unique())
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def groups_plot(runs, methods, title, path, select="last"):
    """One cluster of bars per method: many / medium / few / all, mean with std error bars."""
    cats = []
    for g in GROUPS:
        if runs[f"{g}_{select}"].notna().any():  # an empty group (no class) has no bar
            size = runs[f"n_{g}"].dropna()
            cats.append((f"{g} ({int(size.iloc[0])} classes)" if len(size) else g, f"{g}_{select}"))
    cats.append(("all", f"top1_{select}"))
    width = 0.8 / len(cats)
    fig = Figure(figsize=(max(6.0, 2.0 + 0.13 * len(methods) * len(cats)), 4.2), layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    for k, (label, col) in enumerate(cats):
        cells = [stats(runs.loc[runs["method"] == m, col]) for m in methods]
        x = np.arange(len(methods)) - 0.4 + width * (k + 0.5)
        ax.bar(x, [c.mean for c in cells], width, color="0.35" if label == "all" else colors[k], label=label,
               yerr=[c.std if c.n > 1 else 0.0 for c in cells], capsize=1.5, error_kw={"elinewidth": 0.7})
    crowded = len(methods) > 6
    ax.set_xticks(np.arange(len(methods)), methods, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=130)


def _group_spans(counts, runs):
    """(group, low, high) class-size spans of the non-empty groups, from the logged group sizes."""
    sizes = [runs[f"n_{g}"].dropna() for g in GROUPS]
    if any(s.empty for s in sizes):
        return []
    desc = np.sort(np.asarray(counts, dtype=float))[::-1]
    spans, start = [], 0
    for g, size in zip(GROUPS, sizes):
        stop = start + int(size.iloc[0])
        if stop > start:
            spans.append((g, desc[stop - 1], desc[start]))
        start = stop
    # Borders sit halfway (on the log axis) between the last class of one group and the next.
    return [(g, lo if k == len(spans) - 1 else np.sqrt(lo * spans[k + 1][2]),
             hi if k == 0 else np.sqrt(hi * spans[k - 1][1])) for k, (g, lo, hi) in enumerate(spans)]


def _mean_per_class(runs, method, per_class_fn, select):
    frames = [per_class_fn(rid) for rid in runs.loc[runs["method"] == method, "run_id"]]
    pc = pd.concat(frames).groupby("class").agg(n=("train_count", "first"), acc=(f"acc_{select}", "mean"))
    return pc.sort_values("n")


def per_class_plot(runs, methods, per_class_fn, title, path, select="last"):
    """Per-class accuracy (mean over seeds) against training images per class, x on a log scale.

    Methods are split into panels of at most PER_PANEL; every later panel repeats the first
    method (the baseline of the config order) in grey as a common reference.
    """
    curves = {m: _mean_per_class(runs, m, per_class_fn, select) for m in methods}
    panels = [methods[i:i + PER_PANEL] for i in range(0, len(methods), PER_PANEL)]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.0 + 4.5 * ncols, 0.6 + 3.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    colors = colormaps["tab10"].colors
    counts = next(iter(curves.values()))["n"].to_numpy()
    spans = _group_spans(counts, runs)
    for ax, panel in zip(axes, panels):
        if methods[0] not in panel:
            ref = curves[methods[0]]
            ax.plot(ref["n"], ref["acc"], color="0.6", linewidth=1.2, label=f"{methods[0]} (reference)")
        for j, m in enumerate(panel):
            marker = MARKERS[j % len(MARKERS)] if len(counts) <= 200 else None  # 1000 markers are a smear
            ax.plot(curves[m]["n"], curves[m]["acc"], marker=marker, markersize=3,
                    linewidth=0.9, alpha=0.9, color=colors[j % len(colors)], label=m)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
        for _, lo, _ in spans[:-1]:
            ax.axvline(lo, color="0.5", linestyle=":", linewidth=1)
        for g, lo, hi in spans:
            ax.text(np.sqrt(lo * hi), 101, g, ha="center", va="top", fontsize=8, color="0.35")
        ax.set_ylim(-2, 104)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel("training images of the class (log scale)", fontsize=10)
    fig.supylabel("top-1 accuracy of the class (%)", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=130)


def write_plots(df, out_dir, per_class_fn, methods_order=None):
    """Two PNGs per dataset and IF: `{dataset}_if{imb}_groups.png`, `{dataset}_if{imb}_per_class.png`.

    `per_class_fn(run_id)` returns the run's per-class table (class, train_count, acc_last, ...).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for (ds, imb), runs in df.groupby(["dataset", "imb"], sort=False):
        methods = methods_in_order(runs, methods_order)
        stem = f"{ds}_if{fmt_imb(imb)}"
        where = f"{ds}, IF {fmt_imb(imb)}, last epoch, {_seeds(runs)} seeds"
        groups_plot(runs, methods, f"{where}: mean ± std (ddof=1)", out / f"{stem}_groups.png")
        per_class_plot(runs, methods, per_class_fn, f"{where}: per-class accuracy, mean over seeds",
                       out / f"{stem}_per_class.png")
        paths += [out / f"{stem}_groups.png", out / f"{stem}_per_class.png"]
    return paths
