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


def train_flags(wc):
    base, overrides = run_settings(config, wc.dataset, wc.method)
    stage1 = stage1_of(config, wc.method)
    if stage1:
        overrides["init_from"] = f"{run_dir(wc, stage1)}/ckpt/last.pt"
    family = dataset_cfg(wc.dataset).get("family", "cifar")
    return f"--base {base} --family {family} {set_flags(overrides)}"
