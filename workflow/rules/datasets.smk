# Source datasets → deterministic shard manifests (one checkpoint per dataset).


rule demo_data:
    """Generate the embedded demo data (CIFAR-format, Cityscapes-format, NeRF scenes) in official layouts."""
    output:
        touch(f"{CFG.demo_data.out}/.izoo-demo-complete"),
    params:
        out=CFG.demo_data.out,
        seed=CFG.demo_data.seed,
        n=CFG.demo_data.n_per_class,
    log:
        f"{L}/demo_data.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo demo-data --out {params.out} --seed {params.seed} --n-per-class {params.n} > {log} 2>&1"


checkpoint manifest:
    """List every item of the dataset once and assign it to a shard; shard ids never change."""
    input:
        demo=lambda w: demo_marker(w.ds),
    output:
        manifest=f"{R}/{{ds}}/manifest.csv",
        shards=f"{R}/{{ds}}/shards.json",
        bad_items=f"{R}/{{ds}}/bad_items.csv",
    params:
        cfg=lambda w: ds_json(w.ds),
        out_dir=lambda w: f"{R}/{w.ds}",
    log:
        f"{L}/{{ds}}/manifest.log",
    conda:
        "../../envs/izoo.yaml"
    shell:
        "izoo manifest --dataset {wildcards.ds} --dataset-config {params.cfg:q} --out-dir {params.out_dir} > {log} 2>&1"
