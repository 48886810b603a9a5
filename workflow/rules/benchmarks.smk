# Benchmarks trained on the archives: one job per (tokenizer, seed), then a table per benchmark.
# Tokenizer names are the config schema's (validated when the config loads); the patterns below only keep a
# tokenizer from swallowing the '-' that separates the parts of a result's file name.
from izoo.benchmarks.pose.variants import TRAINING_JOBS
from izoo.benchmarks.results import run_command, table_command


def bench_archive(name, split_key):
    b = bench_cfg(name)
    return f"{R}/{b['dataset']}/archive/{b[split_key]}.h5"


def bench_settings(name, **overrides):
    return json.dumps({**bench_cfg(name)["settings"], **overrides}, sort_keys=True, separators=(",", ":"))


def pose_job_settings(name, variant):
    """Settings of one pose training job: the benchmark's, with the variant's pre-training / refinement flags."""
    return bench_settings(name, **pose_training_jobs(bench_cfg(name)["variants"])[variant])


rule bench_2d:
    """Classification or segmentation over INR queries with one tokenizer and one seed."""
    input:
        train=lambda w: bench_archive(w.bench, "train_split"),
        test=lambda w: bench_archive(w.bench, "test_split"),
    output:
        f"{R}/benchmarks/{{bench}}/{{tokenizer}}-seed{{seed}}.json",
    wildcard_constraints:
        tokenizer=r"[a-z_]+",
        seed=r"\d+",
    params:
        command=lambda w: run_command(bench_cfg(w.bench)["task"]),
        settings=lambda w: bench_settings(w.bench),
    log:
        f"{L}/benchmarks/{{bench}}/{{tokenizer}}-seed{{seed}}.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo {params.command} --train {input.train} --test {input.test} --tokenizer {wildcards.tokenizer}"
        " --seed {wildcards.seed} --settings {params.settings:q} --out {output} > {log} 2>&1"


rule bench_pose:
    """6-DoF pose regression from archived NeRFs (kept scenes only)."""
    input:
        archive=lambda w: f"{R}/{bench_cfg(w.bench)['dataset']}/archive/all.h5",
        kept=lambda w: f"{R}/{bench_cfg(w.bench)['dataset']}/reports/kept_scenes.csv",
    output:
        f"{R}/benchmarks/{{bench}}/pose-{{variant}}-{{tokenizer}}-seed{{seed}}.json",
    wildcard_constraints:
        variant="|".join(TRAINING_JOBS),
        tokenizer=r"[a-z_]+",
        seed=r"\d+",
    params:
        settings=lambda w: pose_job_settings(w.bench, w.variant),
    log:
        f"{L}/benchmarks/{{bench}}/pose-{{variant}}-{{tokenizer}}-seed{{seed}}.log",
    conda:
        "../../envs/izoo.yaml"
    # the command name is formatted in when the rule is parsed, so the recorded shell command stays as it was
    shell:
        f"izoo {run_command('pose')} --archive {{input.archive}} --kept {{input.kept}} --settings {{params.settings:q}}"
        " --tokenizer {wildcards.tokenizer} --seed {wildcards.seed} --out {output} > {log} 2>&1"


rule bench_table:
    """Mean ± std over seeds per tokenizer, like the paper's Tables 3 and 5."""
    input:
        runs=lambda w: bench_runs(w.bench),
    output:
        md=report(f"{R}/benchmarks/{{bench}}/table.md", category="Benchmarks", labels={"benchmark": "{bench}"}),
        csv=f"{R}/benchmarks/{{bench}}/table.csv",
    wildcard_constraints:
        bench=bench_name_pattern(["segmentation", "pose"]),
    params:
        command=lambda w: table_command(bench_cfg(w.bench)["task"]),
    log:
        f"{L}/benchmarks/{{bench}}/table.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo {params.command} --runs {input.runs} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule bench_classify_table:
    """Classification table like the paper's Table 2, and the learned token groupings like its Figure 6."""
    input:
        runs=lambda w: bench_runs(w.bench),
    output:
        md=report(f"{R}/benchmarks/{{bench}}/table.md", category="Benchmarks", labels={"benchmark": "{bench}"}),
        csv=f"{R}/benchmarks/{{bench}}/table.csv",
        png=report(f"{R}/benchmarks/{{bench}}/token_groups.png", category="Benchmarks", labels={"benchmark": "{bench}", "figure": "tokens"}),
    wildcard_constraints:
        bench=bench_name_pattern(["classification"]),
    params:
        # the most learnable tokenizer run shows the groupings best (LP+reg, else the last one)
        figure_run=lambda w, input: next((r for r in input.runs if "/lp_reg-" in r), input.runs[-1]),
    log:
        f"{L}/benchmarks/{{bench}}/table.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        f"izoo {table_command('classification')} --runs {{input.runs}} --out-csv {{output.csv}} --out-md {{output.md}}"
        " --figure-from {params.figure_run} --out-png {output.png} > {log} 2>&1"
