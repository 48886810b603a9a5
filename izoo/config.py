"""Pipeline configuration: defaults filled from the JSON schema, then validated with one-line errors.

The workflow validates the merged YAML with jsonschema (``validate_config``, which also fills defaults).
``izoo fit`` checks its ``--dataset-config`` against the same schema's dataset entry (``check_dataset_entry``):
with jsonschema where it is installed, else with ``_plain_problem``, a small check of the keywords this schema
uses, because the fitting path must run where jsonschema is not installed (the GPU machines). jsonschema is
therefore imported lazily, never at module import.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from izoo.errors import IzooError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA_NAME = "workflow/schemas/config.schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config JSON schema (YAML on disk); a fresh copy the caller may change."""
    return copy.deepcopy(_cached_schema(str(path)))


@functools.lru_cache(maxsize=4)
def _cached_schema(path: str) -> dict:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise IzooError("the config schema is missing", path,
                        "install izoo from its repository (pip install -e .)") from exc


def schema_names(name: str) -> tuple[str, ...]:
    """The names a config may use for ``name``: the enum of ``$defs/<name>`` in the schema (their one definition)."""
    definition = _cached_schema(str(SCHEMA_PATH))["$defs"].get(name) or {}
    if "enum" not in definition:
        raise IzooError(f"the config schema defines no name list {name!r}", SCHEMA_PATH,
                        "use one of the $defs with an enum (e.g. tokenizer, pose_tokenizer)")
    return tuple(definition["enum"])


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills ``default`` values into the instance while validating.

    jsonschema deliberately does not fill defaults; this is the extension pattern from its FAQ.
    """
    import jsonschema

    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001 - jsonschema hook signature
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if "default" in subschema and prop not in instance:
                    instance[prop] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@dataclass
class _Problem:
    """The first thing wrong with a config: where (dotted path), what, and for an unknown key the known ones."""

    where: tuple[str, ...]
    message: str
    unknown: str | None = None
    known: tuple[str, ...] = ()


def _config_error(problem: _Problem, source: str, prefix: tuple[str, ...] = ()) -> IzooError:
    """The one-line error for ``problem`` in the config that came from ``source``."""
    where = ".".join((*prefix, *problem.where)) or "(top level)"
    if problem.unknown is not None:
        return IzooError(f"unknown key {problem.unknown!r} in {where} (a typo?)", source,
                         f"correct or remove it; {where} takes only {', '.join(problem.known)}")
    return IzooError(f"bad config value at {where}: {problem.message}", source,
                     f"change {where} in {source} (allowed values: see {SCHEMA_NAME})")


def _jsonschema_problem(error: Any) -> _Problem:
    where = tuple(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = tuple(sorted(error.schema.get("properties", {})))
        unknown = sorted(k for k in error.instance if k not in known)
        if unknown:
            return _Problem(where, error.message, unknown[0], known)
    return _Problem(where, error.message)


def validate_config(config: Mapping[str, Any], source: str = "config.yaml", schema: dict | None = None) -> dict:
    """Return a copy of ``config`` with defaults filled; a bad value or unknown key raises a one-line ``IzooError``."""
    import jsonschema

    schema = schema or load_schema()
    filled = json.loads(json.dumps(config))  # deep copy and plain types only
    validator_cls = _with_defaults(jsonschema.validators.validator_for(schema))
    from izoo.fitting.recipes import resolve_recipe

    for name, ds in (filled.get("datasets") or {}).items():
        if isinstance(ds, dict):
            _fill_family_defaults(ds)
            resolved = resolve_recipe(ds, source)
            ds.clear()
            ds.update(resolved)
    # the properties hook fills a default before descending into it, so one pass fills nested defaults too
    err = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(filled))
    if err is not None:
        raise _config_error(_jsonschema_problem(err), source)
    _check_cross_fields(filled, source)
    return filled


def check_dataset_entry(entry: Mapping[str, Any], source: str) -> None:
    """Check one dataset's config (one entry of ``datasets:``, as ``izoo fit`` gets it) against the schema.

    Nothing is filled in; the first unknown key or bad value raises a one-line ``IzooError`` naming ``source``.
    """
    schema = load_schema()
    dataset_schema = {**schema["$defs"]["dataset"], "$defs": schema["$defs"]}
    value = json.loads(json.dumps(entry))
    try:
        import jsonschema
    except ImportError:
        problem = _plain_problem(dataset_schema, value, (), dataset_schema)
    else:
        validator = jsonschema.validators.validator_for(schema)(dataset_schema)
        err = jsonschema.exceptions.best_match(validator.iter_errors(value))
        problem = None if err is None else _jsonschema_problem(err)
    if problem is not None:
        raise _config_error(problem, source)


_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value: Any, name: str) -> bool:
    if name in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return name == "number" or float(value).is_integer()
    return isinstance(value, _JSON_TYPES[name])


def _plain_problem(schema: Mapping[str, Any], value: Any, where: tuple[str, ...],
                   root: Mapping[str, Any]) -> _Problem | None:
    """The first problem of ``value`` under ``schema``, for the keywords the config schema uses (or None)."""
    for problem in _plain_problems(schema, value, where, root):
        return problem
    return None


def _plain_problems(schema: Mapping[str, Any], value: Any, where: tuple[str, ...],
                    root: Mapping[str, Any]) -> Iterator[_Problem]:
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        yield from _plain_problems(target, value, where, root)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in names):
            yield _Problem(where, f"{value!r} is not of type {' or '.join(map(repr, names))}")
            return
    if "enum" in schema and value not in schema["enum"]:
        yield _Problem(where, f"{value!r} is not one of {schema['enum']}")
        return
    if _is_type(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            yield _Problem(where, f"{value!r} is less than the minimum of {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            yield _Problem(where, f"{value!r} is greater than the maximum of {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            yield _Problem(where, f"{value!r} is less than or equal to the minimum of {schema['exclusiveMinimum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        yield _Problem(where, f"{value!r} is too short")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield _Problem(where, f"{value!r} should have at least {schema['minItems']} items")
        for k, item in enumerate(value):
            yield from _plain_problems(schema.get("items", {}), item, (*where, str(k)), root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield _Problem(where, f"{key!r} is a required property")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                yield from _plain_problems(properties[key], item, (*where, key), root)
            elif extra is False:
                yield _Problem(where, f"unknown key {key!r}", key, tuple(sorted(properties)))
            elif isinstance(extra, dict):
                yield from _plain_problems(extra, item, (*where, key), root)


#: per-family defaults that differ from the schema's (the schema's are the 2D SIREN ones)
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "siren": {"model": {"depth": 3, "width": 64, "w0": 30.0}},   # init: from the recipe (izoo.fitting.recipes)
    "nerf": {
        "model": {"depth": 4, "width": 128, "pos_freqs": 10, "dir_freqs": 4},
        "fit": {"batch_size": 8, "iterations": 20000, "lr": 5.0e-4, "lr_min": 5.0e-5, "gate_psnr": 25.0,
                "check_every": 500, "checkpoint_every": 1000, "rays_per_batch": 2048, "samples_per_ray": 64,
                "near": 2.0, "far": 6.0, "object_ray_fraction": 0.5,
                "extended": {"factor": 3, "patience": 2000, "min_delta": 0.05},
                "until_threshold": {"cap_iterations": 60000}},
        "shard_size": 16,
        "refine_job_size": 16,
    },
}


def _fill_family_defaults(ds: dict) -> None:
    family = (ds.get("model") or {}).get("family")
    if family in FAMILY_DEFAULTS:
        merged = deep_merge(FAMILY_DEFAULTS[family], ds)
        ds.clear()
        ds.update(merged)


def _check_cross_fields(config: dict, source: str) -> None:
    """Checks JSON schema cannot express: references between sections and ordered values."""
    for name, ds in config["datasets"].items():
        fit = ds["fit"]
        if fit["min_iterations"] > fit["iterations"]:
            raise IzooError(f"datasets.{name}.fit.min_iterations ({fit['min_iterations']}) is larger than "
                            f"fit.iterations ({fit['iterations']})", source,
                            "set min_iterations to at most iterations (with stop: gate, iterations is the cap)")
        if fit["lr_min"] > fit["lr"]:
            raise IzooError(f"datasets.{name}.fit.lr_min ({fit['lr_min']}) is larger than fit.lr ({fit['lr']})", source,
                            "set lr_min below lr (the cosine schedule decays from lr to lr_min)")
        _check_learned_init(name, ds, config, source)
        if not all(ch.isalnum() or ch in "_-" for ch in name):
            raise IzooError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'", source,
                            "rename the dataset key (it becomes part of file paths)")
    for name, bench in config.get("benchmarks", {}).items():
        ds = bench["dataset"]
        if bench["task"] != "pose" and bench.get("variants", ["plain"]) != ["plain"]:
            raise IzooError(f"benchmarks.{name}.variants {bench['variants']} are pose variants, but the task is "
                            f"{bench['task']}", source, "remove variants (only task: pose has them)")
        if ds not in config["datasets"]:
            raise IzooError(f"benchmarks.{name}.dataset names unknown dataset {ds!r}", source,
                            f"use one of {sorted(config['datasets'])}")
        if bench["enabled"] and not config["datasets"][ds]["enabled"]:
            raise IzooError(f"benchmarks.{name} needs dataset {ds!r}, which is disabled", source,
                            f"enable datasets.{ds} or set benchmarks.{name}.enabled: false")


def _check_learned_init(name: str, ds: Mapping[str, Any], config: Mapping[str, Any], source: str) -> None:
    """``model.init: learned`` needs a SIREN and a meta-init split that no benchmark holds out."""
    if ds["model"].get("init") != "learned":
        return
    from izoo.fitting.learned_init import HELD_OUT_SPLITS  # only then: it imports the fitting package (torch)

    if ds["model"]["family"] != "siren":
        raise IzooError(f"datasets.{name}.model.init: learned needs family siren (got {ds['model']['family']!r})",
                        source, "remove model.init for NeRF datasets")
    split = (ds.get("meta_init") or {}).get("split", "train")
    held_out = set(HELD_OUT_SPLITS) | {b["test_split"] for b in config.get("benchmarks", {}).values()
                                       if b["dataset"] == name}
    if split in held_out:
        raise IzooError(f"datasets.{name}.meta_init.split is {split!r}, a held-out split", source,
                        "meta-learn from the train split (held-out items must stay unseen)")
    if ds["source"].get("splits") and split not in ds["source"]["splits"]:
        raise IzooError(f"datasets.{name}.meta_init.split {split!r} is not one of source.splits "
                        f"{ds['source']['splits']}", source, "set meta_init.split to the dataset's train split")


def load_config(*paths: str | Path) -> dict:
    """Load YAML config files (later ones deep-merged over earlier ones) and validate."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise IzooError("config file not found", path, "pass an existing --configfile")
        try:
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise IzooError(f"config file is not valid YAML ({exc.__class__.__name__})", path, "fix the YAML syntax") from exc
        merged = deep_merge(merged, data)
    return validate_config(merged, source=", ".join(str(p) for p in paths))


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``over`` merged into ``base`` recursively (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def enabled_datasets(config: Mapping[str, Any]) -> list[str]:
    """Names of the datasets the workflow builds, in config order."""
    return [name for name, ds in config["datasets"].items() if ds["enabled"]]


def dataset_json(config: Mapping[str, Any], name: str) -> str:
    """One dataset's section as the compact JSON string the ``izoo`` CLIs take (stable key order)."""
    return json.dumps(config["datasets"][name], sort_keys=True, separators=(",", ":"))
