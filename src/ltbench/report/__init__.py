"""The report stage: finished runs -> tables (Markdown, LaTeX, CSV) and plots (PNG).

Runs are selected by their result.json files; every number is read back from MLflow.
"""
from ltbench.report.collect import collect, per_class
from ltbench.report.plots import write_plots
from ltbench.report.tables import REPORTED_CSV, write_tables


def report(result_files, tracking_uri, tables_dir, plots_dir, methods_order=None,
           reported_csv=REPORTED_CSV, metric="top1_last"):
    """Collect the runs, write every table and plot; returns the paths written."""
    df = collect(result_files, tracking_uri)
    uri_of = dict(zip(df["run_id"], df["tracking_uri"]))
    tables = write_tables(df, tables_dir, methods_order, reported_csv, metric)
    plots = write_plots(df, plots_dir, lambda run_id: per_class(run_id, uri_of[run_id]), methods_order)
    return tables + plots


__all__ = ["collect", "per_class", "report", "write_plots", "write_tables"]
