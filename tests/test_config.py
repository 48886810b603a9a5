"""Config validation: every key at every depth is known, bad values are one line naming the key and the file.

The workflow validates the merged YAML with jsonschema; ``izoo fit`` validates its ``--dataset-config`` against the
same schema, with jsonschema where it is installed and with izoo's plain check where it is not (the GPU machines).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from izoo.cli import main
from izoo.config import deep_merge, load_config, validate_config
from izoo.errors import IzooError
from test_fitting_cli import _dataset, _fit_args

REPO = Path(__file__).resolve().parent.parent


def _demo_config() -> dict:
    merged: dict = {}
    for name in ("config.yaml", "config/demo.yaml"):
        merged = deep_merge(merged, yaml.safe_load((REPO / name).read_text()))
    return merged


def test_shipped_configs_pass():
    """Every key the shipped configs and test overlays use is in the schema."""
    for overlays in ([], ["config/demo.yaml"], ["config/demo.yaml", "tests/workflow/tiny.yaml"],
                     ["config/demo.yaml", "tests/slurm/demo-small.yaml"]):
        load_config(*[REPO / f for f in ["config.yaml", *overlays]])


@pytest.mark.parametrize("section, typo", [
    ("fit", {"iteratons": 10}), ("model", {"widht": 32}), ("source", {"on_bad_items": "skip"}),
    ("fit", {"extended": {"patiense": 5}}), ("fit", {"until_threshold": {"cap_iteration": 5}}),
    ("seed", {"mod": "shared"}), ("archive", {"virtal": True}),
])
def test_typos_in_nested_sections_are_rejected(section, typo):
    cfg = _demo_config()
    cfg["datasets"]["demo_cifar10"] = deep_merge(cfg["datasets"]["demo_cifar10"], {section: typo})
    with pytest.raises(IzooError) as err:
        validate_config(cfg, source="my.yaml")
    key = next(iter(typo))
    inner = typo[key]
    name = next(iter(inner)) if isinstance(inner, dict) else key
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("my.yaml: ") and f"unknown key {name!r}" in msg, msg
    assert f"datasets.demo_cifar10.{section}" in msg and "fix:" in msg, msg


def test_typo_in_a_benchmark_is_rejected():
    cfg = _demo_config()
    cfg["benchmarks"]["demo_classification"]["tokeniser"] = ["lc"]
    with pytest.raises(IzooError, match="unknown key 'tokeniser'.*benchmarks.demo_classification"):
        validate_config(cfg, source="my.yaml")


def _fit_error(tmp_path: Path, capsys, cfg: dict, as_file: bool) -> tuple[int, str, str]:
    manifest = _dataset(tmp_path)[1]
    where = "--dataset-config"
    args = _fit_args(cfg, manifest, tmp_path)
    if as_file:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(cfg))
        args[args.index("--dataset-config") + 1] = f"@{path}"
        where = str(path)
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err.strip(), where


@pytest.mark.parametrize("plain", [False, True], ids=["jsonschema", "plain"])
@pytest.mark.parametrize("change, key", [
    ({"fit": {"gate_psnr": "30"}}, "fit.gate_psnr"), ({"fit": {"batch_size": 0}}, "fit.batch_size"),
    ({"fit": {"iteratons": 10}}, "iteratons"), ({"model": {"widht": 8}}, "widht"),
    ({"source": {"on_bad_item": "ignore"}}, "source.on_bad_item"),
])
def test_izoo_fit_rejects_a_bad_dataset_config_naming_key_and_file(tmp_path, capsys, monkeypatch, change, key, plain):
    if plain:   # as on a GPU machine without jsonschema
        monkeypatch.setitem(sys.modules, "jsonschema", None)
    cfg = deep_merge(_dataset(tmp_path)[0], change)
    for as_file in (False, True):
        rc, err, where = _fit_error(tmp_path, capsys, cfg, as_file)
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert f"izoo fit: error: {where}: " in err and key in err and "fix:" in err, err
    assert not (tmp_path / "work").exists()   # rejected before any fitting


def test_izoo_fit_never_imports_jsonschema(tmp_path):
    """The fitting path runs where jsonschema is not installed."""
    import subprocess

    cfg, manifest = _dataset(tmp_path, n=2, iterations=2)
    code = ("import sys; sys.modules['jsonschema'] = None; from izoo.cli import main; "
            f"sys.exit(main({_fit_args(cfg, manifest, tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


def test_plain_check_accepts_every_shipped_dataset_entry(monkeypatch):
    """Without jsonschema, the entries the workflow passes to izoo fit (defaults filled, NeRF keys too) pass."""
    from izoo.config import DatasetConfig

    filled = validate_config(_demo_config())
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    for name, entry in filled["datasets"].items():
        assert DatasetConfig.parse(entry, f"datasets.{name}").to_dict() == entry, name


@pytest.mark.parametrize("where, typo", [
    ((), {"result": "out"}), (("demo_data",), {"n_per_clas": 5}),
    (("datasets", "demo_cifar10"), {"shard_sise": 4}),
    (("datasets", "demo_cifar10", "meta_init"), {"outer_step": 3}),
])
def test_typos_at_every_other_depth_are_rejected(where, typo):
    cfg = _demo_config()
    section = cfg
    for key in where:
        section = section.setdefault(key, {})
    section.update(typo)
    with pytest.raises(IzooError) as err:
        validate_config(cfg, source="my.yaml")
    msg = str(err.value)
    assert f"unknown key {next(iter(typo))!r}" in msg and ".".join(where) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("task, tokenizer", [("segmentation", "s"), ("pose", "lp_rand")])
def test_a_tokenizer_the_task_lacks_is_rejected_at_config_time(task, tokenizer):
    cfg = _demo_config()
    name = next(n for n, b in cfg["benchmarks"].items() if b["task"] == task)
    cfg["benchmarks"][name]["tokenizers"] = ["uniform", tokenizer]
    with pytest.raises(IzooError, match=rf"benchmarks\.{name}\.tokenizers\.1: '{tokenizer}' is not one of"):
        validate_config(cfg, source="my.yaml")


def test_the_tokenizer_registry_implements_exactly_the_schema_names():
    """The schema's name lists are the one definition; the code that builds tokenizers covers exactly them."""
    from izoo.benchmarks.tokenizers import DISPLAY_NAMES, TOKENIZERS
    from izoo.config import schema_names

    assert set(TOKENIZERS) == set(DISPLAY_NAMES) == set(schema_names("tokenizer"))
    for task_list in ("segmentation_tokenizer", "pose_tokenizer"):
        assert set(schema_names(task_list)) <= set(schema_names("tokenizer")), task_list
    with pytest.raises(IzooError, match="no name list 'benchmark'"):
        schema_names("benchmark")


@pytest.mark.parametrize("change, defines_inr", [
    ({"fit": {"tf32": False}}, True), ({"fit": {"lr": 5e-4}}, True), ({"fit": {"extended": {"patience": 7}}}, True),
    ({"seed": {"value": 7}}, True), ({"model": {"width": 16}}, True), ({"source": {"max_items": 3}}, True),
    ({"fit": {"batch_size": 3}}, False), ({"fit": {"device": "cpu"}}, False), ({"fit": {"compile": "off"}}, False),
    ({"shard_size": 3}, False), ({"refine_job_size": 3}, False), ({"archive": {"virtual": True}}, False),
])
def test_fit_params_and_fingerprint_agree_on_what_defines_an_inr(change, defines_inr):
    """The workflow reruns a fit job when its params (fit_job_settings) change; a resumed job reuses its groups
    while the fingerprint holds. Both come from DatasetConfig.inr_settings, so every setting that changes the
    fingerprint changes the params, and speed-only settings change the params but not the fingerprint."""
    import pandas as pd

    from izoo.config import DatasetConfig
    from izoo.fitting.shard import fingerprint

    base = validate_config(_demo_config())["datasets"]["demo_cifar10"]
    changed = deep_merge(base, change)
    items = pd.DataFrame({"index": [0, 1]})
    fingerprint_changed = fingerprint(base, "basic", items) != fingerprint(changed, "basic", items)
    params_changed = DatasetConfig.parse(base).fit_job_settings() != DatasetConfig.parse(changed).fit_job_settings()
    assert fingerprint_changed == defines_inr
    assert params_changed == (defines_inr or "fit" in change)   # the job still reads the speed-only fit keys
