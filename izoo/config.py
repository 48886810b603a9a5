"""Pipeline configuration: one schema, defaults filled from it, validated with one-line errors, parsed once.

* ``workflow/schemas/config.schema.yaml`` is the only source of defaults (per-family ones in its ``allOf``) and of
  the name lists a config accepts (``schema_names("tokenizer")`` reads one); ``fill_defaults`` fills them.
* The workflow validates the merged YAML with jsonschema (``validate_config``, then cross-field checks) and parses it
  into a ``PipelineConfig``; ``izoo`` CLIs parse their ``--dataset-config`` with ``DatasetConfig.parse``, checked by
  ``_plain_problem``, a small check of the keywords this schema uses: the fitting path must run where jsonschema is
  not installed (the GPU machines), so jsonschema is imported lazily, only by ``validate_config``.
* The parsed objects are frozen stdlib dataclasses (one generic ``from_dict``, ``to_dict`` gives back the same
  dict), not pydantic: pydantic must stay off the fitting path for the same reason as jsonschema, and the schema
  already does the validating, so the classes only carry typed, read-only values.
* ``DatasetConfig.inr_settings`` is the one decision which settings define a fitted INR: the workflow's fit params
  (``fit_json`` in ``workflow/rules/common.smk``) and the resume fingerprint (``izoo.fitting.shard``) both use it.
"""

from __future__ import annotations

import copy
import functools
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, TypeVar

import yaml

from izoo.errors import IzooError
from izoo.recipes import DEFAULT_RECIPE, RECIPES

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA_NAME = "workflow/schemas/config.schema.yaml"
#: split names that are held out by convention (never meta-learned from), whatever the benchmarks say
HELD_OUT_SPLITS = ("val", "validation", "test")


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


def fill_defaults(schema: Mapping[str, Any], value: Any, root: Mapping[str, Any] | None = None) -> None:
    """Fill the schema's ``default`` values into ``value`` in place, at every depth; needs no jsonschema.

    The one default mechanism of both validation paths (jsonschema deliberately fills nothing). ``allOf`` entries
    whose ``if`` holds (the per-family defaults) fill before ``properties``, so their defaults win.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        fill_defaults(_resolve_ref(root, str(schema["$ref"])), value, root)
    for part in schema.get("allOf", ()):
        if "if" not in part:
            fill_defaults(part, value, root)
        elif _plain_problem(part["if"], value, (), root) is None:
            fill_defaults(part.get("then", {}), value, root)
        else:
            fill_defaults(part.get("else", {}), value, root)
    if not isinstance(value, dict):
        return
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            fill_defaults(sub, value[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, item in value.items():
            if key not in properties:
                fill_defaults(extra, item, root)


def _resolve_ref(root: Mapping[str, Any], ref: str) -> Any:
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


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
    for name, ds in (filled.get("datasets") or {}).items():
        if isinstance(ds, dict):
            resolved = resolve_recipe(ds, source)
            ds.clear()
            ds.update(resolved)
    fill_defaults(schema, filled)
    err = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(filled))
    if err is not None:
        raise _config_error(_jsonschema_problem(err), source)
    _check_cross_fields(filled, source)
    return filled


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
        yield from _plain_problems(_resolve_ref(root, str(schema["$ref"])), value, where, root)
    for part in schema.get("allOf", ()):
        if "if" not in part:
            yield from _plain_problems(part, value, where, root)
        elif _plain_problem(part["if"], value, where, root) is None:
            yield from _plain_problems(part.get("then", {}), value, where, root)
        else:
            yield from _plain_problems(part.get("else", {}), value, where, root)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, t) for t in names):
            yield _Problem(where, f"{value!r} is not of type {' or '.join(map(repr, names))}")
            return
    if "const" in schema and value != schema["const"]:
        yield _Problem(where, f"{schema['const']!r} was expected")
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

    if ds["model"]["family"] != "siren":
        raise IzooError(f"datasets.{name}.model.init: learned needs family siren (got {ds['model']['family']!r})",
                        source, "remove model.init for NeRF datasets")
    split = ds["meta_init"]["split"]
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


def resolve_recipe(dataset_cfg: Mapping[str, Any], source: str = "config.yaml") -> dict[str, Any]:
    """The dataset config with its recipe's defaults (``izoo.recipes``) filled in under what it sets itself
    (idempotent); only 2D SIREN datasets have recipes."""
    cfg = copy.deepcopy(dict(dataset_cfg))
    name = cfg.get("recipe", DEFAULT_RECIPE)
    if name not in RECIPES:
        raise IzooError(f"unknown fitting recipe {name!r}", source, f"set recipe to one of {', '.join(RECIPES)}")
    family = (cfg.get("model") or {}).get("family", "siren")
    if family != "siren":
        if name != DEFAULT_RECIPE:
            raise IzooError(f"recipe {name!r} is for 2D SIREN datasets, not model.family {family!r}", source,
                            "drop the recipe key and set fit.stop / fit.iterations directly")
        return cfg
    cfg["recipe"] = name
    return deep_merge(RECIPES[name], cfg)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``over`` merged into ``base`` recursively (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ----- the parsed config: frozen, typed, built once from the validated, defaults-filled dict

_FrozenT = TypeVar("_FrozenT", bound="_Section")


def _frozen(value: Any) -> Any:
    """``value`` with every dict read-only and every list a tuple (a parsed config is never changed)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """The plain JSON form of a frozen value (dicts and lists again)."""
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class _Section:
    """A config section: its keys are the dataclass fields; ``from_dict`` is the one way in, ``to_dict`` out."""

    #: the keys the dict held (an optional key left out stays left out in ``to_dict``; an explicit null stays)
    given: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False, compare=False)

    @classmethod
    def from_dict(cls: type[_FrozenT], data: Mapping[str, Any], where: str = "") -> _FrozenT:
        """The section from its validated dict (keys the schema may leave out are None; an unknown key raises)."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in fields(cls) if f.name != "given"}
        unknown = sorted(set(data) - names)
        if unknown:   # the schema rejects these first; this keeps the classes and the schema in step
            raise IzooError(f"unknown key {unknown[0]!r} in {where or '(top level)'}", SCHEMA_NAME,
                            f"add it to the schema and to izoo.config.{cls.__name__}, or remove it")
        values: dict[str, Any] = {}
        for name in names:
            value, kind = data.get(name), hints[name]
            section = _section_type(kind)
            if typing.get_origin(kind) is MappingProxyType:   # a named collection of sections (datasets:)
                entry = _section_type(typing.get_args(kind)[1])
                value = MappingProxyType({k: entry.from_dict(v, f"{where}.{name}.{k}".lstrip("."))
                                          for k, v in (value or {}).items()})
            elif section is not None and value is not None:
                value = section.from_dict(value, f"{where}.{name}".lstrip("."))
            else:
                value = _frozen(value)
            values[name] = value
        return cls(**values, given=frozenset(data))

    def to_dict(self) -> dict[str, Any]:
        """The plain dict (JSON types) this section was parsed from, keys left out then left out again."""
        return {f.name: _thawed(getattr(self, f.name)) for f in fields(self) if f.name in self.given}


def _section_type(kind: Any) -> type[_Section] | None:
    """The ``_Section`` class a field annotation names (``X`` or ``X | None``), else None."""
    for option in (kind, *(typing.get_args(kind) if typing.get_origin(kind) is not MappingProxyType else ())):
        if isinstance(option, type) and issubclass(option, _Section):
            return option
    return None


@dataclass(frozen=True)
class ExtendedConfig(_Section):
    """``fit.extended``: the second phase's budget factor and patience."""

    factor: float
    patience: int
    min_delta: float


@dataclass(frozen=True)
class UntilThresholdConfig(_Section):
    """``fit.until_threshold``: the last phase's hard cap."""

    cap_iterations: int


@dataclass(frozen=True)
class FitConfig(_Section):
    """``fit:`` of a dataset: schedule, gate, stop rule, device; the NeRF keys are None for SIREN datasets."""

    batch_size: int
    iterations: int
    lr: float
    lr_min: float
    gate_psnr: float
    check_every: int
    stop: str
    min_iterations: int
    checkpoint_every: int
    device: str
    tf32: bool
    compile: str | bool
    extended: ExtendedConfig
    until_threshold: UntilThresholdConfig
    rays_per_batch: int | None = None
    samples_per_ray: int | None = None
    near: float | None = None
    far: float | None = None
    object_ray_fraction: float | None = None
    eval_views: int | None = None
    eval_size: int | None = None
    eval_chunk_rays: int | None = None
    ray_seed: int | None = None
    archived_views: int | None = None

    @classmethod
    def parse(cls, section: Mapping[str, Any] | None, source: str = "config.yaml") -> "FitConfig":
        """A ``fit:`` section as given (possibly partial) with the schema's defaults filled, then checked."""
        return cls.from_dict(filled_section("fit", section, source), "fit")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model:`` of a dataset (the family's keys; the others are None)."""

    family: str
    depth: int | None = None
    width: int | None = None
    w0: float | None = None
    init: str | None = None
    init_file: str | None = None
    pos_freqs: int | None = None
    dir_freqs: int | None = None


@dataclass(frozen=True)
class SeedConfig(_Section):
    """``seed:``: one seed for every item, or one per item derived from ``value``."""

    mode: str
    value: int


@dataclass(frozen=True)
class ArchiveConfig(_Section):
    """``archive:`` of a dataset."""

    virtual: bool


#: dataset keys that never change a fitted INR: how items are cut into jobs, what else is built from them
NOT_INR_KEYS = frozenset({"enabled", "demo", "shard_size", "refine_job_size", "min_scenes_per_class", "archive"})
#: fit keys that change only how fast (or where) an INR is fitted, never its weights: a job may resume under others
SPEED_ONLY_FIT_KEYS = frozenset({"device", "compile", "checkpoint_every", "batch_size"})


@dataclass(frozen=True)
class DatasetConfig(_Section):
    """One entry of ``datasets:``. ``source`` and ``meta_init`` stay read-only mappings: their readers
    (``izoo.datasets``, ``izoo.fitting.meta_init``) own the format-specific keys."""

    source: Mapping[str, Any]
    model: ModelConfig
    fit: FitConfig
    seed: SeedConfig
    enabled: bool
    demo: bool
    shard_size: int
    refine_job_size: int
    min_scenes_per_class: int
    archive: ArchiveConfig
    recipe: str | None = None
    meta_init: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, entry: Mapping[str, Any], source: str = "--dataset-config") -> "DatasetConfig":
        """One dataset entry as ``izoo`` CLIs get it: recipe resolved, schema defaults filled, checked (no jsonschema
        needed); a bad key or value raises a one-line ``IzooError`` naming ``source``."""
        return cls.from_dict(filled_section("", resolve_recipe(entry, source), source))

    @property
    def is_learned(self) -> bool:
        """Items start from one meta-learned init (``model.init: learned``)."""
        return self.model.init == "learned"

    def to_json(self) -> str:
        """The compact JSON string the ``izoo`` CLIs take (stable key order)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fit_job_settings(self) -> dict[str, Any]:
        """What a fitting job reads: the settings that define an INR plus the fit keys that only change its speed."""
        settings = {k: v for k, v in self.to_dict().items() if k not in NOT_INR_KEYS}
        if not self.is_learned:
            settings.pop("meta_init", None)
        return settings

    def inr_settings(self) -> dict[str, Any]:
        """The settings that define a fitted INR (the one decision: the workflow's fit params and the resume
        fingerprint both come from here); ``tf32`` is one of them, it changes the weights on a GPU."""
        settings = self.fit_job_settings()
        settings["fit"] = {k: v for k, v in settings["fit"].items() if k not in SPEED_ONLY_FIT_KEYS}
        return settings


def dataset_config(entry: DatasetConfig | Mapping[str, Any], source: str = "--dataset-config") -> DatasetConfig:
    """``entry`` as a ``DatasetConfig``: a parsed one as is, a dict parsed (``DatasetConfig.parse``)."""
    return entry if isinstance(entry, DatasetConfig) else DatasetConfig.parse(entry, source)


@dataclass(frozen=True)
class BenchmarkConfig(_Section):
    """One entry of ``benchmarks:``; ``settings`` belong to the task (``izoo bench-*`` checks them)."""

    task: str
    dataset: str
    enabled: bool
    train_split: str
    test_split: str
    tokenizers: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class DemoDataConfig(_Section):
    """``demo_data:``: where ``izoo demo-data`` writes the embedded demo datasets."""

    out: str
    seed: int
    n_per_class: int


@dataclass(frozen=True)
class PipelineConfig(_Section):
    """The whole validated config, parsed once; the workflow's rules and the CLIs read it."""

    results: str
    workdir: str
    logs: str
    demo_data: DemoDataConfig
    datasets: MappingProxyType[str, DatasetConfig]
    benchmarks: MappingProxyType[str, BenchmarkConfig]

    @classmethod
    def parse(cls, config: Mapping[str, Any], source: str = "config.yaml") -> "PipelineConfig":
        """Validate (jsonschema, defaults filled, cross-field checks) and parse the merged YAML."""
        return cls.from_dict(validate_config(config, source))

    def enabled_datasets(self) -> list[str]:
        """Names of the datasets the workflow builds, in config order."""
        return [name for name, ds in self.datasets.items() if ds.enabled]

    def enabled_benchmarks(self) -> list[str]:
        """Names of the benchmarks the workflow runs, in config order."""
        return [name for name, bench in self.benchmarks.items() if bench.enabled]


def filled_section(key: str, section: Mapping[str, Any] | None, source: str = "config.yaml") -> dict:
    """One dataset's section ``key`` (``""``: the whole entry) as plain JSON types, the schema's defaults filled,
    then checked without jsonschema (a one-line ``IzooError`` naming ``source``)."""
    schema = _cached_schema(str(SCHEMA_PATH))
    node = schema["$defs"]["dataset"]
    prefix: tuple[str, ...] = ()
    if key:
        node, prefix = node["properties"][key], (key,)
    value = json.loads(json.dumps(dict(section or {})))
    fill_defaults(node, value, schema)
    problem = _plain_problem(node, value, (), schema)
    if problem is not None:
        raise _config_error(problem, source, prefix)
    return value
