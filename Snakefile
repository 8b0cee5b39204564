# ltbench: LT datasets -> training runs -> MLflow -> tables and plots.
#   snakemake                              the demo preset (Fashion-MNIST-LT), locally
#   snakemake --config preset=paper -n     plan the paper grid
#   snakemake --profile slurm              the same DAG on a cluster
import sys

from ltbench import experiment


configfile: "config.yaml"


try:
    experiment.coerce_cli(config)
    experiment.validate(config, workflow.source_path("workflow/schemas/config.schema.yaml"))
except ValueError as err:
    sys.exit(str(err))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
