# TSC: the targets, one file per (classes, dim), and the static assignment of a KCL warm-up run's
# class centroids to them (spec §4). Methods ask for these files through `dag_inputs`.
wildcard_constraints:
    classes="[0-9]+",
    dim="[0-9]+",


# Known per source; an image folder or synthetic set says it in config (`num_classes:` or its
# options), so the whole DAG, targets included, is planned up front (`snakemake -n` sees it all).
SOURCE_CLASSES = {"fmnist": 10, "cifar10": 10, "cifar100": 100, "imagenet_lt": 1000, "inat2018": 8142}


def num_classes(dataset):
    d = dataset_cfg(dataset)
    n = d.get("num_classes") or d.get("options", {}).get("num_classes") or SOURCE_CLASSES.get(d["source"])
    if not n:
        raise ValueError(f"config.yaml: key 'data.{dataset}.num_classes': needed by TSC's targets for a "
                         f"{d['source']} source; set it to the number of classes")
    return int(n)


def targets_file(dataset, dim):
    return f"results/targets/c{num_classes(dataset)}_d{dim}.npy"


rule tsc_targets:
    output:
        npy="results/targets/c{classes}_d{dim}.npy",
        checks="results/targets/c{classes}_d{dim}.json",
    log:
        "logs/tsc_targets/c{classes}_d{dim}.log",
    shell:
        "ltbench targets --classes {wildcards.classes} --dim {wildcards.dim} --out {output.npy} "
        "--checks {output.checks} > {log} 2>&1"


# From the warm-up run's last checkpoint: centroids of its projections of the training images
# (no augmentation), Hungarian-matched to the targets. Written next to that run.
rule tsc_assign:
    input:
        run="results/runs/{dataset}/if{imb}/{method}/seed{seed}/result.json",
        data=rules.prepare_data.output.npz,
        split=rules.lt_split.output,
        targets=lambda wc: targets_file(wc.dataset, wc.dim),
    output:
        "results/runs/{dataset}/if{imb}/{method}/seed{seed}/tsc_assign_d{dim}.json",
    params:
        ckpt=lambda wc: f"{run_dir(wc, wc.method)}/ckpt/last.pt",
    log:
        "logs/tsc_assign/{dataset}/if{imb}/{method}/seed{seed}_d{dim}.log",
    shell:
        "ltbench assign --checkpoint {params.ckpt} --data {input.data} --split {input.split} "
        "--targets {input.targets} --out {output} > {log} 2>&1"


DAG_FILES.update(
    tsc_targets=lambda wc, params: targets_file(wc.dataset, params["feat_dim"]),
    tsc_assign=lambda wc, params: f"{run_dir(wc, stage1_of(config, wc.method))}/tsc_assign_d{params['feat_dim']}.json",
)
