"""Architecture configs as stored in weight files: flattening and comparing them.

A checkpoint, an adapter file and an export each store the model's ``config_dict()``; loading
one into a model built from another config must say which options differ, in one wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"adapter.shared_rank": 4, ...}``: nested mappings joined with dots, other values as leaves."""
    if isinstance(config, Mapping):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flatten_config(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): config}


def config_differences(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], keys: tuple[str, ...], label: str = "model"
) -> list[str]:
    """``"adapter.shared_rank: checkpoint 4, model 8"`` for every differing (nested) option under ``keys``."""
    a = flatten_config({k: ours.get(k) for k in keys})
    b = flatten_config({k: theirs.get(k) for k in keys})
    return [
        f"{k}: checkpoint {b.get(k)!r}, {label} {a.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
