# One job per (dataset, IF, method, seed): one MLflow run, result.json written last.
# Checkpoints live in the run folder but are not outputs, so a failed or killed job keeps them
# and the rerun resumes into the same MLflow run.


rule train:
    input:
        data=rules.prepare_data.output.npz,
        split=rules.lt_split.output,
        tracking=rules.init_tracking.output,
        stage1=stage1_result,
    output:
        "results/runs/{dataset}/if{imb}/{method}/seed{seed}/result.json",
    params:
        flags=train_flags,
        uri=TRACKING_URI,
        out=subpath(output[0], parent=True),
    threads: config.get("threads", 1)
    resources:
        gpu=1,
    log:
        "logs/train/{dataset}/if{imb}/{method}/seed{seed}.log",
    shell:
        "ltbench train --data {input.data} --split {input.split} --dataset {wildcards.dataset} "
        "--imb {wildcards.imb} --method {wildcards.method} --seed {wildcards.seed} {params.flags} "
        "--set threads={threads} --out {params.out} --tracking-uri {params.uri} > {log} 2>&1"
