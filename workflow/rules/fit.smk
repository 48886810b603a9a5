# Fitting in three quality-control phases (SPEC §2):
#   basic            one job per shard, every item;
#   extended         dense jobs of the items below the gate after basic (planned by a checkpoint);
#   until_threshold  dense jobs of the items still below the gate (planned by a checkpoint).
# Progress lives in the undeclared work dir, so a killed or timed-out job resumes on retry; the
# declared outputs are written only at the end (Snakemake deletes a failed job's outputs).


rule meta_init:
    """model.init: learned — one shared SIREN init meta-learned from a subset of the train split (one GPU job)."""
    input:
        manifest=f"{R}/{{ds}}/manifest.csv",
    output:
        f"{R}/{{ds}}/meta_init/init.h5",
    params:
        cfg=lambda w: fit_json(w.ds),
        workdir=lambda w: f"{W}/{w.ds}/meta_init",
        runtime=runtime_arg,
    log:
        f"{L}/{{ds}}/meta_init.log",
    benchmark:
        f"{L}/{{ds}}/meta_init.benchmark.tsv"
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo meta-init --dataset {wildcards.ds} --dataset-config {params.cfg:q} --manifest {input.manifest}"
        " --workdir {params.workdir} --out {output} {params.runtime} >> {log} 2>&1"


rule fit_basic:
    input:
        manifest=f"{R}/{{ds}}/manifest.csv",
        init=learned_init_inputs,
    output:
        h5=f"{R}/{{ds}}/fit/basic/{{shard}}.h5",
        csv=f"{R}/{{ds}}/fit/basic/{{shard}}.csv",
    params:
        cfg=lambda w: fit_json(w.ds),
        workdir=lambda w: f"{W}/{w.ds}/basic/{w.shard}",
        runtime=runtime_arg,
    log:
        f"{L}/{{ds}}/fit_basic/{{shard}}.log",
    benchmark:
        f"{L}/{{ds}}/fit_basic/{{shard}}.benchmark.tsv"
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo fit --dataset {wildcards.ds} --dataset-config {params.cfg:q} --manifest {input.manifest}"
        " --shard {wildcards.shard} --phase basic --workdir {params.workdir}"
        " --out-weights {output.h5} --out-report {output.csv} {params.runtime} >> {log} 2>&1"


for _phase in REFINE_PHASES:

    checkpoint:
        name:
            f"plan_{_phase}"
        input:
            checkpoints=lambda w, phase=_phase: checkpoint_files(w, upto=previous_phase(phase)),
            reports=lambda w, phase=_phase: phase_reports(w.ds, previous_phase(phase)),
        output:
            plan=f"{R}/{{ds}}/fit/{_phase}/plan.json",
        params:
            cfg=lambda w: ds_json(w.ds),
            phase=_phase,
        log:
            f"{L}/{{ds}}/plan_{_phase}.log",
        conda:
            "../../envs/izoo.yaml"
        shell:
            "izoo plan-refinement --dataset {wildcards.ds} --dataset-config {params.cfg:q} --phase {params.phase}"
            " --reports {input.reports} --out {output.plan} > {log} 2>&1"

    rule:
        name:
            f"fit_{_phase}"
        input:
            plan=f"{R}/{{ds}}/fit/{_phase}/plan.json",
            manifest=f"{R}/{{ds}}/manifest.csv",
            checkpoints=lambda w, phase=_phase: checkpoint_files(w, upto=phase),
            init=lambda w, phase=_phase: refine_init_files(w.ds, phase, w.job),
            learned_init=learned_init_inputs,
        output:
            h5=f"{R}/{{ds}}/fit/{_phase}/{{job}}.h5",
            csv=f"{R}/{{ds}}/fit/{_phase}/{{job}}.csv",
        params:
            cfg=lambda w: fit_json(w.ds),
            workdir=lambda w, phase=_phase: f"{W}/{w.ds}/{phase}/{w.job}",
            phase=_phase,
            runtime=runtime_arg,
        log:
            f"{L}/{{ds}}/fit_{_phase}/{{job}}.log",
        benchmark:
            f"{L}/{{ds}}/fit_{_phase}/{{job}}.benchmark.tsv"
        conda:
            "../../envs/izoo.yaml"
        shell:
            "izoo fit --dataset {wildcards.ds} --dataset-config {params.cfg:q} --manifest {input.manifest}"
            " --plan {input.plan} --job {wildcards.job} --phase {params.phase} --workdir {params.workdir}"
            " --out-weights {output.h5} --out-report {output.csv} {params.runtime} >> {log} 2>&1"
