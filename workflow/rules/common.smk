from ltbench.config import build
from ltbench.methods import get as method_class
from ltbench.experiment import effective, run_settings, set_flags, stage1_of

GRID = effective(config)
TRACKING_URI = config.get("tracking_uri", "sqlite:///results/mlflow.db")


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    imb="[0-9.]+",
    method="[A-Za-z0-9_@.-]+",
    seed="[0-9]+",


def fmt_imb(imb):
    return f"{float(imb):g}"


def run_results():
    return [
        f"results/runs/{d}/if{fmt_imb(i)}/{m}/seed{s}/result.json"
        for d in GRID["datasets"]
        for i in GRID["imbalance_factors"]
        for m in GRID["methods"]
        for s in GRID["seeds"]
    ]


def dataset_cfg(name):
    return config["data"][name]


def run_dir(wc, method):
    return f"results/runs/{wc.dataset}/if{wc.imb}/{method}/seed{wc.seed}"


def stage1_result(wc):
    """A two-stage method waits for its stage-1 run; one stage-1 run feeds every stage 2 of it."""
    stage1 = stage1_of(config, wc.method)
    return [f"{run_dir(wc, stage1)}/result.json"] if stage1 else []


# Files a method asks the DAG to make before it runs (TSC's targets and assignment): the method's
# `dag_inputs(params, family)` maps a hyper-parameter to the name of the rule that makes its file;
# the rule file registers here how that rule names its file for a run:
# DAG_FILES[rule](wildcards, params) -> path. The train job waits for the file and gets its path.
DAG_FILES = {}


def family_of(wc):
    return dataset_cfg(wc.dataset).get("family", "cifar")


def dag_files(wc):
    """{hyper-parameter: path} of the files this run needs from other rules."""
    base, overrides = run_settings(config, wc.dataset, wc.method)
    cls = method_class(base)
    if not hasattr(cls, "dag_inputs"):
        return {}
    params = build(wc.dataset, float(wc.imb), wc.method, int(wc.seed), base=base, family=family_of(wc),
                   overrides=overrides).params
    return {key: DAG_FILES[rule](wc, params) for key, rule in cls.dag_inputs(params, family_of(wc)).items()}


def dag_file_paths(wc):
    return list(dag_files(wc).values())


def train_flags(wc):
    base, overrides = run_settings(config, wc.dataset, wc.method)
    stage1 = stage1_of(config, wc.method)
    if stage1:
        overrides["init_from"] = f"{run_dir(wc, stage1)}/ckpt/last.pt"
    overrides.update(dag_files(wc))
    return f"--base {base} --family {family_of(wc)} {set_flags(overrides)}"
