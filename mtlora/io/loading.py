"""Matching a converted state dict against a module, with a report of what happened.

Conversions (one module per source format) only rename and restack tensors; this module decides
what loads: exact names, or the same name with/without the ``.linear.`` level that adapter
injection adds (so a plain Swin checkpoint loads before *or* after adapters are injected),
shape checks, and bicubic resizing of relative position bias tables when only the window size
differs.  Every outcome is listed in a :class:`LoadReport`, logged, and turned into an error where
it means the checkpoint does not fit the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora.io.serialization import CheckpointError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


def nonfinite_tensor_names(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinite value (one host sync).

    A diverged run leaves such tensors behind; loading or writing them only spreads the NaN to
    every prediction, so loaders and checkpoint writers refuse them by name.
    """
    floats = [
        (k, v)
        for k, v in tensors.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not v.is_meta  # meta: shapes only
    ]
    if not floats:
        return []
    # one fused norm pass (20x faster than isfinite on a CPU); a norm can also overflow for huge
    # finite values, so only the tensors it flags are checked element-wise
    device = floats[0][1].device
    norms = torch._foreach_norm([v.detach() for _, v in floats])
    flagged = (~torch.isfinite(torch.stack([n.to(device) for n in norms]))).nonzero().flatten().tolist()
    return [floats[i][0] for i in flagged if not bool(torch.isfinite(floats[i][1]).all())]


def refuse_nonfinite(tensors: Mapping[str, Any], target: Any) -> None:
    """Raise before ``target`` is written from tensors holding NaN/inf (a diverged model)."""
    bad = nonfinite_tensor_names(tensors)
    if bad:
        raise CheckpointError(
            f"{target} was not written: {describe_nonfinite(bad)}; the model had diverged, export an "
            "earlier checkpoint"
        )


def describe_nonfinite(names: list[str], shown: int = 5) -> str:
    """``"3 tensors hold NaN or infinite values (a, b, c)"`` for messages."""
    more = f", ... and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} tensors hold NaN or infinite values ({', '.join(names[:shown])}{more})"


@dataclass
class Converted:
    """Output of a conversion: the renamed state dict, where each key came from, what was dropped."""

    state_dict: dict[str, Tensor]
    origin: dict[str, str] = field(default_factory=dict)  # new key -> source key(s), only where renamed
    dropped: list[str] = field(default_factory=list)  # source keys removed on purpose


@dataclass
class LoadReport:
    """What a checkpoint load did.

    Attributes:
        source: the file (or ``timm:<name>``) that was read.
        source_format: detected layout (``microsoft``, ``timm``, ``official_mtlora``).
        loaded: model keys that received a tensor.
        renamed: model key -> checkpoint key(s) for every loaded key whose name changed.
        missing: model keys the checkpoint did not provide (and that should have been).
        kept_init: model keys intentionally left at their initialisation (adapters when loading
            ImageNet weights).
        unexpected: checkpoint keys (after conversion) that match nothing in the model.
        ignored: checkpoint keys dropped on purpose (classifier head, final norm, attention masks and
            position indices, which the model recomputes).
        mismatched: ``(key, expected shape, checkpoint shape)`` for tensors that do not fit.
        resized: ``(key, model shape, checkpoint shape)`` of bias tables interpolated to the window.
        unsupported: checkpoint entries that cannot be represented (e.g. trained LoRA scales).
        config: settings read from the checkpoint (official MTLoRA: tasks, ranks, ...).
        config_mismatches: differences between those settings and the model.
        meta: other checkpoint facts (epoch, top-level keys).
    """

    source: str
    source_format: str
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    resized: list[tuple[str, Shape, Shape]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    config_mismatches: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """One line per issue that makes the loaded model differ from the checkpoint's."""
        out = [f"config: {c}" for c in self.config_mismatches]
        out += [f"unsupported: {u}" for u in self.unsupported]
        out += [
            f"shape mismatch: {k}: model expects {list(e)}, checkpoint has {list(g)}"
            for k, e, g in self.mismatched
        ]
        out += [f"missing: {k}" for k in self.missing]
        out += [f"unexpected: {k}" for k in self.unexpected]
        return out

    def summary(self, limit: int = 30) -> str:
        """Counts, resized tables and up to ``limit`` problem lines (for logs)."""
        lines = [
            f"{self.source} ({self.source_format}): loaded {len(self.loaded)} tensors ({len(self.renamed)} renamed), "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.ignored)} ignored, "
            f"{len(self.kept_init)} kept at init, {len(self.resized)} resized"
        ]
        lines += [f"  resized {k}: {list(g)} -> {list(e)} (bicubic)" for k, e, g in self.resized]
        problems = self.problems
        lines += [f"  {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more problems")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _short_list(items: Iterable[str], limit: int = 20) -> str:
    items = list(items)
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {shown}{more}"


def resize_relative_position_bias_table(table: Tensor, length: int) -> Tensor:
    """``(L1, heads)`` -> ``(length, heads)`` by bicubic interpolation over the offset grid.

    The table holds one bias per relative offset on a ``(2w-1) x (2w-1)`` grid; a different window
    ``w`` only changes the grid size, so resampling it (as Swin's own fine-tuning recipe does)
    keeps the learned geometry.
    """
    n_old, n_new = math.isqrt(table.shape[0]), math.isqrt(length)
    if n_old * n_old != table.shape[0] or n_new * n_new != length:
        raise CheckpointError(
            f"relative position bias tables of {table.shape[0]} and {length} rows are not square grids"
        )
    heads = table.shape[1]
    grid = table.t().reshape(1, heads, n_old, n_old).float()
    out = F.interpolate(grid, size=(n_new, n_new), mode="bicubic", align_corners=False)
    return out.reshape(heads, length).t().contiguous().to(table.dtype)


def _linear_alias(key: str, targets: Mapping[str, Any]) -> str:
    """``key`` itself if the model has it, else its twin with/without the adapter's ``.linear.``."""
    if key in targets:
        return key
    head, _, leaf = key.rpartition(".")
    alias = f"{head[: -len('.linear')]}.{leaf}" if head.endswith(".linear") else f"{head}.linear.{leaf}"
    return alias if alias in targets else key


def apply_state_dict(
    module: nn.Module,
    converted: Converted,
    report: LoadReport,
    *,
    keep_init: Callable[[str], bool] = lambda key: False,
    strict: bool = True,
    dry_run: bool = False,
) -> LoadReport:
    """Load ``converted`` into ``module``, filling ``report``; raise where the checkpoint does not fit.

    Args:
        keep_init: model keys for which a missing tensor is expected (reported as ``kept_init``).
        strict: also fail on missing/unexpected keys, unsupported entries and config mismatches
            (shape mismatches and "nothing matched" always fail).
        dry_run: only match and report; leave the module untouched.
    """
    targets = module.state_dict()
    tensors: dict[str, Tensor] = {}
    report.ignored.extend(converted.dropped)
    for key, value in converted.state_dict.items():
        name = _linear_alias(key, targets)
        if name not in targets:
            report.unexpected.append(key)
            continue
        source = converted.origin.get(key, key)
        expected = targets[name]
        if value.shape != expected.shape:
            if (
                name.endswith("relative_position_bias_table")
                and value.dim() == 2
                and expected.dim() == 2
                and value.shape[1] == expected.shape[1]
            ):
                report.resized.append((name, tuple(expected.shape), tuple(value.shape)))
                value = resize_relative_position_bias_table(value, expected.shape[0])
            else:
                report.mismatched.append((name, tuple(expected.shape), tuple(value.shape)))
                continue
        tensors[name] = value
        if source != name:
            report.renamed[name] = source
    report.loaded = list(tensors)
    bad = nonfinite_tensor_names(tensors)
    if bad:
        raise CheckpointError(
            f"{report.source}: {describe_nonfinite(bad)}: it was written by a run that had diverged; "
            "use an earlier checkpoint"
        )
    for name in targets:
        if name in tensors or any(m[0] == name for m in report.mismatched):
            continue
        (report.kept_init if keep_init(name) else report.missing).append(name)

    if not tensors:
        raise CheckpointError(
            f"{report.source}: nothing in the checkpoint matches the model ({report.source_format} layout, "
            f"{len(converted.state_dict)} keys). Checkpoint keys:\n{_short_list(converted.state_dict, 8)}\n"
            f"model keys:\n{_short_list(targets, 8)}"
        )
    if report.mismatched:
        raise CheckpointError(
            f"{report.source}: the checkpoint is for another architecture; {len(report.mismatched)} tensors have "
            f"other shapes (key: model expects, checkpoint has):\n"
            + _short_list(f"{k}: {list(e)} vs {list(g)}" for k, e, g in report.mismatched)
        )
    if strict and report.problems:
        raise CheckpointError(
            f"{report.source}: the checkpoint does not fit the model ({report.source_format} layout; "
            f"{len(report.config_mismatches)} config differences, {len(report.unsupported)} unsupported entries, "
            f"{len(report.missing)} missing and {len(report.unexpected)} unexpected keys):\n"
            + _short_list(report.problems, 30)
            + "\nwrong architecture or options? (pass strict=False to load the matching tensors anyway)"
        )
    for key, expected, got in report.resized:
        log.warning(
            "%s: resized %s from %s to %s (bicubic; the window size differs from the checkpoint's)",
            report.source,
            key,
            list(got),
            list(expected),
        )
    if report.problems:
        log.warning("%s: loaded with problems:\n%s", report.source, _short_list(report.problems, 30))
    if not dry_run:
        with torch.no_grad():
            result = module.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:  # cannot happen: every name was checked against state_dict()
            raise CheckpointError(
                f"{report.source}: internal error, unexpected keys {result.unexpected_keys}"
            )
    log.info("%s", report.summary())
    return report
