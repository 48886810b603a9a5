# izoo: image / 3D-scene datasets → quality-controlled INR datasets → benchmarks.
#   snakemake --profile profiles/slurm            # GPU cluster (edit partition/account there)
#   snakemake --profile profiles/local            # one machine, embedded demo data
# Targets: all (default), datasets (archives + PSNR reports + summary), benchmarks.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/fit.smk"
include: "workflow/rules/archive.smk"
include: "workflow/rules/reports.smk"
include: "workflow/rules/benchmarks.smk"


rule all:
    input:
        dataset_targets,
        benchmark_targets(),
    default_target: True


rule datasets:
    input:
        dataset_targets,


rule benchmarks:
    input:
        benchmark_targets(),


# Bookkeeping rules run on the submit host, not as cluster jobs.
localrules:
    all,
    datasets,
    benchmarks,
    demo_data,
    manifest,
    plan_extended,
    plan_until_threshold,
    report,
    filter_scenes,
    summary,
    bench_table,
    bench_classify_table,


onsuccess:
    if os.path.exists(f"{R}/summary.md"):
        print(f"izoo: done. Summary: {R}/summary.md; per-dataset PSNR reports: "
              + ", ".join(f"{R}/{ds}/reports/" for ds in DATASETS)
              + (f"; benchmark tables: {R}/benchmarks/*/table.md" if BENCHMARKS else ""))
