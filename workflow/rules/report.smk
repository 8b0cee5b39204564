# Tables and plots, regenerated from MLflow (runs selected by their result.json files).


rule report:
    input:
        run_results(),
    output:
        tables=report(
            directory("results/tables"),
            patterns=["{name}.md"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        plots=report(
            directory("results/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    params:
        methods=",".join(GRID["methods"]),
    log:
        "logs/report.log",
    shell:
        "ltbench report {input} --tables {output.tables} --plots {output.plots} "
        "--methods {params.methods} > {log} 2>&1"
