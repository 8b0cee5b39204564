# One job per (dataset, IF, method, seed): one MLflow run, result.json written last.
# Checkpoints live in the run folder but are not outputs, so a failed or killed job keeps them
# and the rerun resumes into the same MLflow run. A dataset with `gpus: N > 1` trains on N GPUs in
# one job: torchrun starts one process per GPU (data-parallel, see ltbench/dist.py).


def gpus(wc):
    return int(dataset_cfg(wc.dataset).get("gpus", 1))


def launcher(wc):
    n = gpus(wc)
    return "ltbench" if n == 1 else f"torchrun --standalone --nproc_per_node {n} -m ltbench.cli"


# Several runs per GPU on a cluster: `--group-components gpu_pack0=K gpu_pack1=K gpu_pack2=K` (see
# profiles/slurm/config.yaml) puts K one-GPU train jobs in one Slurm job that holds one GPU and
# runs them side by side, each still its own job, MLflow run and result.json. A pack holds runs of
# one stage depth (0: one-stage and stage-1 runs, 1: what starts from those, 2: TSC's classifier),
# so no pack waits for a run in another pack that waits for it. Group resources are summed over
# jobs that run side by side; so a packed job claims its GPU as the string gres "gpu:1", which
# Snakemake passes on unsummed when all jobs of a group agree (Slurm: --gres=gpu:1), and an int
# gpu of 0; CPUs (cpus_per_gpu) and memory do add up, K times one run's.
def packed(wc):
    # read when the DAG is built: Snakemake sets the group settings after parsing the Snakefile
    sizes = workflow.group_settings.group_components
    return gpus(wc) == 1 and any(n > 1 for g, n in sizes.items() if g.startswith("gpu_pack"))


def stage_depth(method):
    stage1 = stage1_of(config, method)
    return 1 + stage_depth(stage1) if stage1 else 0


def pack(wc):
    return f"gpu_pack{stage_depth(wc.method)}" if packed(wc) else None


def gpu_count(wc):
    return 0 if packed(wc) else gpus(wc)


def gpu_gres(wc):
    return "gpu:1" if packed(wc) else ""


rule train:
    input:
        data=rules.prepare_data.output.npz,
        split=rules.lt_split.output,
        tracking=rules.init_tracking.output,
        stage1=stage1_result,
        made=dag_file_paths,
    output:
        "results/runs/{dataset}/if{imb}/{method}/seed{seed}/result.json",
    params:
        flags=train_flags,
        uri=TRACKING_URI,
        out=subpath(output[0], parent=True),
        launcher=launcher,
    threads: config.get("threads", 1)
    group:
        pack
    resources:
        gpu=gpu_count,
        gres=gpu_gres,
    log:
        "logs/train/{dataset}/if{imb}/{method}/seed{seed}.log",
    shell:
        "{params.launcher} train --data {input.data} --split {input.split} --dataset {wildcards.dataset} "
        "--imb {wildcards.imb} --method {wildcards.method} --seed {wildcards.seed} {params.flags} "
        "--set threads={threads} --out {params.out} --tracking-uri {params.uri} > {log} 2>&1"
