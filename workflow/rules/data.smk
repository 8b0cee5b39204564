# Data: read each source once (downloads happen here, on the submit host), then one LT split per IF.


localrules:
    prepare_data,
    init_tracking,


def prepare_flags(wc):
    d = dataset_cfg(wc.dataset)
    flags = [f"--source {d['source']}", f"--root {d.get('root', 'data')}"]
    if d.get("download"):
        flags.append("--download")
    if d.get("image_size"):
        flags.append(f"--image-size {d['image_size']}")
    flags += [f"--option {k}={v}" for k, v in d.get("options", {}).items()]
    return " ".join(flags)


def split_flags(wc):
    d = dataset_cfg(wc.dataset)
    flags = [f"--profile {d.get('profile', 'exp')}", f"--val-per-class {d.get('val_per_class', 0)}"]
    for key in ("max_per_class", "test_per_class"):
        if d.get(key):
            flags.append(f"--{key.replace('_', '-')} {d[key]}")
    return " ".join(flags)


rule prepare_data:
    output:
        npz="results/data/{dataset}.npz",
        sha="results/data/{dataset}.npz.sha256",
    params:
        flags=prepare_flags,
    log:
        "logs/prepare_data/{dataset}.log",
    shell:
        "ltbench prepare {params.flags} --out {output.npz} > {log} 2>&1"


rule lt_split:
    input:
        rules.prepare_data.output.npz,
    output:
        "results/splits/{dataset}/if{imb}.npz",
    params:
        flags=split_flags,
    log:
        "logs/lt_split/{dataset}/if{imb}.log",
    shell:
        "ltbench split --data {input} --imb {wildcards.imb} {params.flags} --out {output} > {log} 2>&1"


rule init_tracking:
    output:
        "results/tracking.ready",
    params:
        uri=TRACKING_URI,
    log:
        "logs/init_tracking.log",
    shell:
        "ltbench init-tracking --tracking-uri {params.uri} --touch {output} > {log} 2>&1"
