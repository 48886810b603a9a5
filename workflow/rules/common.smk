# Shared helpers of the izoo workflow: validated config, paths, and the input functions that read
# the per-dataset checkpoints (manifest, refinement plans). No fitting logic lives here.
import json
import sys

from izoo.archive.layout import PHASES
from izoo.benchmarks.pose.variants import pose_training_jobs
from izoo.config import PipelineConfig
from izoo.datasets.manifest import load_shards_info
from izoo.errors import IzooError
from izoo.fitting.refine import read_plan

try:   # parsed once: every rule reads this frozen, typed, defaults-filled object
    CFG = PipelineConfig.parse(config, source="config (config.yaml + --configfile/--config overrides)")
except IzooError as _err:
    sys.exit(f"izoo: {_err}")

R = CFG.results
W = CFG.workdir
L = CFG.logs
DATASETS = CFG.enabled_datasets()
BENCHMARKS = CFG.enabled_benchmarks()
REFINE_PHASES = list(PHASES[1:])


wildcard_constraints:
    ds="|".join(DATASETS) if DATASETS else "(?!)",
    shard=r"[^/]+-\d{5}",
    job=r"job-\d{4}",
    split=r"[^/]+",


def ds_cfg(ds):
    return CFG.datasets[ds]


def ds_json(ds):
    """The dataset's config as one JSON string for the izoo CLIs."""
    return ds_cfg(ds).to_json()


def fit_json(ds):
    """What a fitting job reads (DatasetConfig.fit_job_settings: the INR-defining settings, which the fit
    fingerprint hashes too, plus the speed-only fit keys), with the init file if learned. As the jobs' params,
    a change to it refits; editing anything else (shard_size, archive, ...) does not."""
    section = ds_cfg(ds).fit_job_settings()
    if is_learned(ds):
        section["model"] = {**section["model"], "init_file": learned_init_file(ds)}
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def is_learned(ds):
    return ds_cfg(ds).is_learned


def learned_init_file(ds):
    """The init file every item of ``ds`` starts from: model.init_file if given, else the meta_init rule's output."""
    return ds_cfg(ds).model.init_file or f"{R}/{ds}/meta_init/init.h5"


def learned_init_inputs(wildcards):
    return [learned_init_file(wildcards.ds)] if is_learned(wildcards.ds) else []


def meta_init_benchmarks(ds):
    """The meta_init job's timing, counted in the dataset's device-hours (none with a ready model.init_file)."""
    made_here = is_learned(ds) and not ds_cfg(ds).model.init_file
    return [f"{L}/{ds}/meta_init.benchmark.tsv"] if made_here else []


def is_nerf(ds):
    return ds_cfg(ds).model.family == "nerf"


def runtime_arg(wildcards, resources):
    """Let fitting jobs stop themselves (exit 75, progress kept) shortly before their time limit."""
    runtime = resources.get("runtime")
    return f"--runtime-minutes {runtime}" if runtime else ""


def manifest_info(ds):
    """shards.json of the dataset (waits for the manifest checkpoint)."""
    return load_shards_info(checkpoints.manifest.get(ds=ds).output.shards)


def shard_ids(ds, split=None):
    shards = manifest_info(ds)["shards"]
    return [s for s, meta in shards.items() if split is None or meta["split"] == split]


def splits_of(ds):
    return list(manifest_info(ds)["splits"])


def basic_files(ds, ext, split=None):
    return [f"{R}/{ds}/fit/basic/{s}.{ext}" for s in shard_ids(ds, split)]


def refine_plan(ds, phase):
    """The refinement plan of ``phase`` (waits for its checkpoint; izoo.fitting.refine owns the file)."""
    return read_plan(getattr(checkpoints, f"plan_{phase}").get(ds=ds).output.plan)


def checkpoint_files(wildcards, upto="until_threshold"):
    """The checkpoint outputs (manifest, plans up to phase ``upto``) that a rule's input functions read.

    Listing them as inputs makes the rule depend on the checkpoint jobs, so Snakemake re-evaluates
    its inputs whenever a checkpoint reruns, instead of trusting a plan left by an earlier run.
    """
    ds = wildcards.ds
    files = [f"{R}/{ds}/shards.json"]
    for phase in REFINE_PHASES[: PHASES.index(upto)]:
        files.append(f"{R}/{ds}/fit/{phase}/plan.json")
    return files


def refine_files(ds, phase, ext):
    return [f"{R}/{ds}/fit/{phase}/{job}.{ext}" for job in refine_plan(ds, phase)["jobs"]]


def refine_init_files(ds, phase, job):
    """Weight files the items of a refinement job start from (previous phase's outputs).

    While Snakemake builds the DAG it may read a plan left by an earlier run that is about to be
    replaced (the checkpoint reruns once the phase before it has rerun). Such a stale plan can name
    jobs and init files the current plans no longer have; they are left out here so no stale job is
    ever demanded, and the DAG is re-evaluated once the checkpoint has rewritten the plan.
    """
    before = previous_phase(phase)
    current = set(basic_files(ds, "h5") if before == "basic" else refine_files(ds, before, "h5"))
    items = refine_plan(ds, phase)["jobs"].get(job, [])
    return sorted({item["init"] for item in items} & current)


def phase_reports(ds, phase):
    return basic_files(ds, "csv") if phase == "basic" else refine_files(ds, phase, "csv")


def previous_phase(phase):
    return {"extended": "basic", "until_threshold": "extended"}[phase]


def archive_files(ds):
    return [f"{R}/{ds}/archive/{split}.h5" for split in splits_of(ds)]


def demo_marker(ds):
    return [f"{CFG.demo_data.out}/.izoo-demo-complete"] if ds_cfg(ds).demo else []


def dataset_targets(wildcards=None):
    """Summary, reports, and every archive with its verify result: demanded directly, so a deleted or failed
    archive is rebuilt even when the reports made from it are still there (Snakemake does not recreate a
    missing intermediate file whose consumers are up to date). An input function: the splits come from the
    manifest checkpoint, whose shards.json is listed too so a rerun manifest re-evaluates these targets."""
    targets = [f"{R}/summary.md"]
    for ds in DATASETS:
        targets += [f"{R}/{ds}/shards.json", f"{R}/{ds}/reports/summary.json"]
        for archive in archive_files(ds):
            targets += [archive, archive.replace(".h5", ".verified.txt")]
    return targets


def bench_cfg(name):
    """One benchmark's section as a plain dict (workflow/rules/benchmarks.smk reads it by key)."""
    return CFG.benchmarks[name].to_dict()


def bench_runs(name):
    b = CFG.benchmarks[name]
    if b.task == "pose":
        return [f"{R}/benchmarks/{name}/pose-{variant}-{tok}-seed{seed}.json"
                for variant in pose_training_jobs(list(b.variants)) for tok in b.tokenizers for seed in b.seeds]
    return [f"{R}/benchmarks/{name}/{tok}-seed{seed}.json" for tok in b.tokenizers for seed in b.seeds]


def bench_name_pattern(tasks):
    """Wildcard regex matching the enabled benchmarks of the given tasks (matches nothing when none)."""
    names = [n for n in BENCHMARKS if CFG.benchmarks[n].task in tasks]
    return "|".join(names) if names else "(?!)"


def benchmark_targets():
    return [f"{R}/benchmarks/{name}/table.md" for name in BENCHMARKS]
