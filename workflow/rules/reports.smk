# PSNR report tables (per shard / class / phase, failures), per-class plots, the 3D scene filter,
# and the dataset summary that mirrors the paper's Table 1.


rule report:
    input:
        manifest=f"{R}/{{ds}}/manifest.csv",
        plans=checkpoint_files,
        archives=lambda w: archive_files(w.ds),
        verified=lambda w: [a.replace(".h5", ".verified.txt") for a in archive_files(w.ds)],
        basic=lambda w: phase_reports(w.ds, "basic"),
        extended=lambda w: phase_reports(w.ds, "extended"),
        until_threshold=lambda w: phase_reports(w.ds, "until_threshold"),
        fit_benchmarks=lambda w: [
            f"{L}/{w.ds}/fit_basic/{s}.benchmark.tsv" for s in shard_ids(w.ds)
        ]
        + [
            f"{L}/{w.ds}/fit_{p}/{j}.benchmark.tsv"
            for p in REFINE_PHASES
            for j in refine_plan(w.ds, p)["jobs"]
        ]
        + meta_init_benchmarks(w.ds),
    output:
        summary=f"{R}/{{ds}}/reports/summary.json",
        item_table=f"{R}/{{ds}}/reports/items.csv",
        failures=f"{R}/{{ds}}/reports/failures.csv",
        by_shard=f"{R}/{{ds}}/reports/psnr_by_shard.md",
        by_phase=report(f"{R}/{{ds}}/reports/psnr_by_phase.md", category="PSNR", labels={"dataset": "{ds}", "table": "by phase"}),
        by_class=report(f"{R}/{{ds}}/reports/psnr_by_class.md", category="PSNR", labels={"dataset": "{ds}", "table": "by class"}),
        plot=report(f"{R}/{{ds}}/reports/psnr_by_class.png", category="PSNR", labels={"dataset": "{ds}", "table": "plot"}),
    params:
        cfg=lambda w: ds_json(w.ds),
        out_dir=lambda w: f"{R}/{w.ds}/reports",
    log:
        f"{L}/{{ds}}/report.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo report --dataset {wildcards.ds} --dataset-config {params.cfg:q} --manifest {input.manifest}"
        " --archives {input.archives} --reports {input.basic} {input.extended} {input.until_threshold}"
        " --fit-benchmarks {input.fit_benchmarks} --out-dir {params.out_dir} > {log} 2>&1"


rule filter_scenes:
    """3D: scenes below the gate leave the benchmark split; classes with too few scenes are dropped."""
    input:
        item_table=f"{R}/{{ds}}/reports/items.csv",
    output:
        kept=f"{R}/{{ds}}/reports/kept_scenes.csv",
        dropped=report(f"{R}/{{ds}}/reports/dropped_scenes.csv", category="Scene filter", labels={"dataset": "{ds}"}),
    params:
        gate=lambda w: ds_cfg(w.ds).fit.gate_psnr,
        min_per_class=lambda w: ds_cfg(w.ds).min_scenes_per_class,
    log:
        f"{L}/{{ds}}/filter_scenes.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo filter-scenes --reports {input.item_table} --gate {params.gate} --min-per-class {params.min_per_class}"
        " --out-kept {output.kept} --out-dropped {output.dropped} > {log} 2>&1"


rule summary:
    """The paper's Table 1 for every dataset built here: items, model, GPU-hours, size, mean PSNR."""
    input:
        summaries=expand(f"{R}/{{ds}}/reports/summary.json", ds=DATASETS),
        scene_filters=[f"{R}/{ds}/reports/{name}" for ds in DATASETS if is_nerf(ds)
                       for name in ("kept_scenes.csv", "dropped_scenes.csv")],
    output:
        md=report(f"{R}/summary.md", category="Summary"),
        csv=f"{R}/summary.csv",
    log:
        f"{L}/summary.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo summary --inputs {input.summaries} --scene-filters {input.scene_filters} --out-md {output.md} --out-csv {output.csv} 2> {log} | tee -a {log}"
