"""One convention for JSON-valued command-line arguments (``--dataset-config``, ``--settings``).

A value is inline JSON (``'{"epochs": 10}'``), ``@path`` or a plain path to a ``.json``/``.yaml`` file.
Every ``izoo`` command that takes a JSON object goes through ``load_json_object``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, TypeVar

from izoo.errors import IzooError

SettingsT = TypeVar("SettingsT")


def json_file_of(value: str | None) -> Path | None:
    """The file a JSON argument names (``@path`` or an existing path), or None when it is inline JSON."""
    if not value:
        return None
    text = str(value)
    if text.startswith("@"):
        return Path(text[1:])
    if not text.lstrip().startswith("{") and Path(text).is_file():
        return Path(text)
    return None


def load_json_object(value: str | None, option: str = "--settings",
                     example: str = '\'{"epochs": 10}\'') -> dict[str, Any]:
    """The JSON object an argument holds or names (empty for None/''); a bad value is a one-line ``IzooError``."""
    if not value:
        return {}
    path = json_file_of(value)
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise IzooError(f"cannot read {option} file ({exc.strerror})", path, "pass an existing file or inline JSON") from exc
    else:
        text = str(value)
    try:
        if path is not None and path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise IzooError(f"{option} is not valid JSON/YAML ({exc})", path if path is not None else option,
                        f"pass a JSON object such as {example}, or a path to a .json/.yaml file") from exc
    if not isinstance(doc, dict):
        raise IzooError(f"{option} must be a JSON object, got {type(doc).__name__}", path if path is not None else option,
                        f"pass a JSON object such as {example}")
    return doc


def settings_from_json(cls: type[SettingsT], value: str | Mapping[str, Any] | None, what: str) -> SettingsT:
    """A settings dataclass from a JSON argument (or an already parsed mapping); unknown keys are a one-line error
    naming them and the known ones.

    JSON has no tuples, so a list given for a field whose default is a tuple becomes a tuple.
    """
    from_mapping = isinstance(value, Mapping)
    raw = dict(value) if from_mapping else load_json_object(value)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise IzooError(f"unknown {what} settings {unknown}", (None if from_mapping else json_file_of(value)) or
                        "--settings", f"use only {', '.join(sorted(known))}")
    defaults = cls()
    for key, val in raw.items():
        if isinstance(getattr(defaults, key), tuple) and isinstance(val, list):
            raw[key] = tuple(val)
    return cls(**raw)
