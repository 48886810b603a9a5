# Per-shard weights (+ refined items, each from the last phase that ran it) → one HDF5 archive per split.


rule merge:
    input:
        manifest=f"{R}/{{ds}}/manifest.csv",
        plans=checkpoint_files,
        shards=lambda w: basic_files(w.ds, "h5", w.split),
        extended=lambda w: refine_files(w.ds, "extended", "h5"),
        until_threshold=lambda w: refine_files(w.ds, "until_threshold", "h5"),
    output:
        f"{R}/{{ds}}/archive/{{split}}.h5",
    params:
        virtual=lambda w: "--virtual" if ds_cfg(w.ds).archive.virtual else "",
    log:
        f"{L}/{{ds}}/merge_{{split}}.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo merge --dataset {wildcards.ds} --manifest {input.manifest} --split {wildcards.split}"
        " --shards {input.shards} --refined {input.extended} {input.until_threshold}"
        " --out {output} {params.virtual} > {log} 2>&1"


rule verify:
    """Re-read every archive: structure, counts against the manifest, finite weights, stored PSNR.

    The report goes to the log (kept when verify fails, with its problems and fix); --out is written only
    when the archive passed, so a failed verify leaves no OK file behind.
    """
    input:
        archive=f"{R}/{{ds}}/archive/{{split}}.h5",
        manifest=f"{R}/{{ds}}/manifest.csv",
    output:
        f"{R}/{{ds}}/archive/{{split}}.verified.txt",
    params:
        cfg=lambda w: ds_json(w.ds),
    log:
        f"{L}/{{ds}}/verify_{{split}}.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo verify {input.archive} --manifest {input.manifest} --dataset-config {params.cfg:q} --out {output}"
        " > {log} 2>&1"
