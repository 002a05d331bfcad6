"""Official MTLoRA training checkpoints (``ckpt_epoch_<e>.pth`` of scale-lab/MTLoRA).

The file is a dict with ``model`` (the MultiTaskSwin state dict, docs/official_implementation.md, "Checkpoint layout"), ``optimizer``,
``lr_scheduler``, ``scaler``, ``epoch``, ``max_accuracy`` and ``config`` (a pickled yacs
``CfgNode``).  It is read with the restricted unpickler of
:mod:`~mtlora.io.serialization`, so neither yacs nor unsafe unpickling is needed.

Key differences to our :class:`~mtlora.models.model.MultiTaskModel`:

* task LoRA pairs are per-task entries ``<layer>.lora_tasks_A.<task>`` ``(r, in)`` /
  ``lora_tasks_B.<task>`` ``(out, r)`` stored alphabetically; ours are stacked
  ``lora_paths_A (P, r, in)`` / ``lora_paths_B (P, out, r)`` in the model's task order, so the
  conversion stacks by *name*;
* ``downsampler.<task>.*`` is our ``decoder.fusion.<task>.*`` and ``decoders.decoders.<task>.*``
  our ``decoder.heads.<task>.*``;
* ``attn_mask``/``relative_position_index`` buffers are recomputed by our model;
* trainable scales (``lora_shared_scale``, ``lora_task_scale.<task>``, only with the
  ``TRAINABLE_SCALE_*`` options) have no counterpart: our scales are fixed floats, so they are
  accepted only when equal to the model's configured scales and reported as unsupported otherwise.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlora.io.loading import Converted, LoadReport, apply_state_dict
from mtlora.io.microsoft_swin import is_recomputed_buffer
from mtlora.io.serialization import (
    CheckpointError,
    is_state_dict,
    safe_torch_load,
    strip_prefix,
)
from mtlora.models.lora import MultiPathLoRALinear

_TASK_LORA = re.compile(r"^(.+)\.lora_tasks_([AB])\.([^.]+)$")
_SHARED_SCALE = re.compile(r"^(.+)\.lora_shared_scale$")
_TASK_SCALE = re.compile(r"^(.+)\.lora_task_scale\.([^.]+)$")
_PREFIX_RENAMES = (("downsampler.", "decoder.fusion."), ("decoders.decoders.", "decoder.heads."))


def _convert_official(state_dict: Mapping[str, Tensor], tasks: Sequence[str]) -> Converted:
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks}")
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    task_pairs: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in strip_prefix(state_dict, "module.").items():
        if is_recomputed_buffer(key):
            dropped.append(key)
            continue
        m = _TASK_LORA.match(key)
        if m:
            task_pairs.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = value
            continue
        new = key
        for old, replacement in _PREFIX_RENAMES:
            if key.startswith(old):
                new = replacement + key[len(old) :]
                origin[new] = key
                break
        out[new] = value
    for (layer, ab), by_task in task_pairs.items():
        leftover = list(by_task)
        if all(t in by_task for t in tasks):
            shapes = {t: tuple(by_task[t].shape) for t in tasks}
            if len(set(shapes.values())) > 1:
                raise CheckpointError(
                    f"{layer}.lora_tasks_{ab}: the task paths have different shapes {shapes}; our layers stack "
                    f"task paths of one rank"
                )
            new = f"{layer}.lora_paths_{ab}"
            out[new] = torch.stack([by_task[t] for t in tasks])
            origin[new] = f"{layer}.lora_tasks_{ab}.{{{','.join(tasks)}}}"
            leftover = [t for t in by_task if t not in tasks]
        for t in leftover:  # tasks the model does not have (or an incomplete set): reported as unexpected
            out[f"{layer}.lora_tasks_{ab}.{t}"] = by_task[t]
    return Converted(out, origin, dropped)


def convert_official_mtlora(state_dict: Mapping[str, Tensor], tasks: Sequence[str]) -> dict[str, Tensor]:
    """Official MTLoRA ``model`` state dict -> our MultiTaskModel names, task paths in ``tasks`` order.

    Pure function.  ``lora_tasks_{A,B}.<task>`` of every layer are stacked into
    ``lora_paths_{A,B}`` when all ``tasks`` are present (entries of other tasks keep their names
    and so show up as unexpected); ``downsampler.`` -> ``decoder.fusion.``,
    ``decoders.decoders.`` -> ``decoder.heads.``; mask/index buffers dropped.  ``.linear.``
    levels are kept as they are (the loader matches them with or without).
    """
    return _convert_official(state_dict, tasks).state_dict


def _get(cfg: Mapping, path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _stages(value: Any, n: int) -> list | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * n if len(values) == 1 else values


def _collapse(values: list | None) -> Any:
    """One value when all stages agree (how our configs are usually written), else the list."""
    if values is None:
        return None
    return values[0] if len({repr(v) for v in values}) == 1 else values


def _per_task(per_stage: list | None, tasks: list[str], fallback: list | None) -> list | None:
    """Per-stage value shared by all tasks; a ``{task: value}`` dict where tasks differ."""
    if not per_stage:
        return fallback
    out = []
    for stage in per_stage:
        values = {t: stage[t] for t in tasks if t in stage}
        out.append(next(iter(values.values())) if len(set(values.values())) == 1 else values)
    return out


def official_config_summary(cfg: Mapping) -> dict[str, Any]:
    """The settings of an official MTLoRA config that decide the model, in our option names.

    ``encoder``/``adapter``/``decoder`` hold values for our
    :class:`~mtlora.models.model.EncoderConfig`, :class:`~mtlora.models.plans.AdapterConfig`
    and :class:`~mtlora.models.model.DecoderConfig` (None where the config lacks the option);
    ``official`` keeps raw options that have no counterpart.  Task scales follow the official
    code: ``SCALE_PER_TASK`` when given, else ``SHARED_SCALE`` (``TASK_SCALE`` is never read).
    """
    tasks = list(_get(cfg, "TASKS") or [])
    depths = _get(cfg, "MODEL.SWIN.DEPTHS")
    n = len(depths) if depths else 4
    img = _get(cfg, "DATA.IMG_SIZE")
    if isinstance(img, (list, tuple)) and len(set(img)) == 1:
        img = img[0]
    enabled = bool(_get(cfg, "MODEL.MTLORA.ENABLED", False))
    r_list = _get(cfg, "MODEL.MTLORA.R_PER_TASK_LIST")
    shared_rank = [stage["shared"] for stage in r_list] if r_list else _stages(_get(cfg, "MODEL.MTLORA.R"), n)
    shared_scale = _stages(_get(cfg, "MODEL.MTLORA.SHARED_SCALE"), n)
    mode = _get(cfg, "MODEL.MTLORA.SHARED_MODE", "matrix")
    return {
        "tasks": tasks,
        "encoder": {
            "img_size": img,
            "patch_size": _get(cfg, "MODEL.SWIN.PATCH_SIZE"),
            "window_size": _get(cfg, "MODEL.SWIN.WINDOW_SIZE"),
            "embed_dim": _get(cfg, "MODEL.SWIN.EMBED_DIM"),
            "depths": list(depths) if depths else None,
            "num_heads": list(_get(cfg, "MODEL.SWIN.NUM_HEADS") or []) or None,
            "drop_path_rate": _get(cfg, "MODEL.DROP_PATH_RATE"),
        },
        "adapter": {
            "method": "mtlora" if enabled else None,
            "shared_rank": _collapse(shared_rank),
            "task_rank": _collapse(_per_task(r_list, tasks, shared_rank)),
            "shared_scale": _collapse(shared_scale),
            "task_scale": _collapse(
                _per_task(_get(cfg, "MODEL.MTLORA.SCALE_PER_TASK_LIST"), tasks, shared_scale)
            ),
            "dropout": _collapse(_stages(_get(cfg, "MODEL.MTLORA.DROPOUT"), n)),
            "shared_mode": {"add": "addition"}.get(mode, mode),
            "patch_merging": bool(_get(cfg, "MODEL.MTLORA.DOWNSAMPLER_ENABLED", False)),
        },
        "decoder": {"channels": list(_get(cfg, "MODEL.DECODER_CHANNELS") or []) or None},
        "official": {
            key: _get(cfg, key)
            for key in (
                "MODEL.TYPE",
                "MODEL.NAME",
                "MODEL.MTLORA.TRAINABLE_SCALE_SHARED",
                "MODEL.MTLORA.TRAINABLE_SCALE_PER_TASK",
                "MODEL.MTLORA.INTERMEDIATE_SPECIALIZATION",
                "MODEL.MTLORA.QKV_ENABLED",
                "MODEL.MTLORA.PROJ_ENABLED",
                "MODEL.MTLORA.FC1_ENABLED",
                "MODEL.MTLORA.FC2_ENABLED",
                "DATA.DBNAME",
            )
        },
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def compare_official_config(summary: Mapping[str, Any], model: nn.Module) -> list[str]:
    """Differences between an :func:`official_config_summary` and a MultiTaskModel, one line each.

    Shapes are checked separately by the loader; this catches what shapes cannot: scales, the
    shared mode, the image size, task sets.
    """
    from mtlora.models.plans import per_stage

    out: list[str] = []
    tasks = summary.get("tasks") or []
    if tasks and set(tasks) != set(model.tasks):
        out.append(f"tasks: checkpoint {tasks}, model {model.tasks}")
    swin = model.backbone.cfg
    ours = {
        "img_size": swin.img_size,
        "patch_size": swin.patch_size,
        "window_size": swin.window_size,
        "embed_dim": swin.embed_dim,
        "depths": list(swin.depths),
        "num_heads": list(swin.num_heads),
    }
    for key, value in ours.items():
        theirs = summary["encoder"].get(key)
        if theirs is not None and not _same(theirs, value):
            out.append(f"encoder.{key}: checkpoint {theirs}, model {value}")
    adapter, cfg = summary["adapter"], model.adapter_config
    official = summary.get("official", {})
    if adapter.get("method") == "mtlora":
        if cfg.method != "mtlora":
            out.append(f"adapter.method: checkpoint mtlora, model {cfg.method}")
        else:
            n = len(swin.depths)
            ours_ad = {
                "shared_rank": per_stage(cfg.shared_rank, n, "shared_rank"),
                "task_rank": per_stage(cfg.resolved_task_rank(), n, "task_rank"),
                "shared_scale": per_stage(cfg.shared_scale, n, "shared_scale"),
                "task_scale": per_stage(cfg.resolved_task_scale(), n, "task_scale"),
            }
            for key, value in ours_ad.items():
                theirs = adapter.get(key)
                if theirs is not None and not _same(_stages(theirs, n), value):
                    out.append(f"adapter.{key}: checkpoint {theirs}, model {_collapse(value)}")
            for key, value in (("shared_mode", cfg.shared_mode), ("patch_merging", cfg.patch_merging)):
                if adapter.get(key) is not None and adapter[key] != value:
                    out.append(f"adapter.{key}: checkpoint {adapter[key]}, model {value}")
        if official.get("MODEL.MTLORA.INTERMEDIATE_SPECIALIZATION"):
            out.append("INTERMEDIATE_SPECIALIZATION=True (task paths in every block) is not supported")
    channels = summary["decoder"].get("channels")
    if channels is not None and list(channels) != list(model.decoder_config.channels):
        out.append(f"decoder.channels: checkpoint {channels}, model {model.decoder_config.channels}")
    return out


def _resolve_trainable_scales(converted: Converted, model: nn.Module, report: LoadReport) -> None:
    """Take trained scale entries out of the state dict: equal to ours -> ignored, else unsupported."""
    for key in [k for k in converted.state_dict if _SHARED_SCALE.match(k) or _TASK_SCALE.match(k)]:
        value = converted.state_dict.pop(key)
        m = _SHARED_SCALE.match(key) or _TASK_SCALE.match(key)
        try:
            layer = model.get_submodule(m.group(1))
        except AttributeError:
            layer = None
        if not isinstance(layer, MultiPathLoRALinear) or value.numel() != 1:
            report.unsupported.append(
                f"{key}: trainable LoRA scale without a matching adapter layer in the model"
            )
            continue
        ours = layer.shared_scale if key.endswith("lora_shared_scale") else layer.path_scale
        if math.isclose(float(value), ours, rel_tol=1e-6):
            report.ignored.append(key)
        else:
            report.unsupported.append(
                f"{key} = {float(value):g} but the model's scale is {ours:g}: trained LoRA scales are not supported "
                f"(scales are fixed floats here; set adapter.shared_scale/task_scale if one value per stage fits)"
            )


def load_official_mtlora_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, strict: bool = True, allow_unsafe: bool = False
) -> LoadReport:
    """Load an official MTLoRA training checkpoint into a :class:`~mtlora.models.model.MultiTaskModel`.

    Reads the file without executing pickled code and without yacs, converts the ``model`` state
    dict (see the module doc), checks the stored config against ``model``
    (``LoadReport.config`` holds it as :func:`official_config_summary`), and loads.  Optimizer,
    scheduler and scaler states are not restored.

    Args:
        strict: fail on missing/unexpected keys, unsupported entries and config mismatches; with
            ``False`` they are reported and logged, and the matching tensors load.  Shape
            mismatches always fail.
        allow_unsafe: unpickle arbitrary objects (only for trusted files).

    The released checkpoint is for ``mtlora_tiny_448_r64_scale4_pertask``, i.e.
    ``EncoderConfig()`` with ``AdapterConfig(shared_rank=64, task_rank=4)`` and the four PASCAL tasks.
    """
    source = os.fspath(path)
    obj = safe_torch_load(source, allow_unsafe=allow_unsafe)
    if not isinstance(obj, Mapping) or not is_state_dict(obj.get("model")):
        keys = list(obj)[:12] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{source}: not an official MTLoRA training checkpoint: expected a dict with the model state dict under "
            f"'model' (got {keys})"
        )
    state_dict = obj["model"]
    if not any(k.startswith("backbone.") for k in strip_prefix(state_dict, "module.")):
        raise CheckpointError(
            f"{source}: the 'model' state dict has no backbone.* keys: not an MTLoRA model (ImageNet Swin weights "
            f"are loaded with load_pretrained_backbone / encoder.pretrained)"
        )
    report = LoadReport(source=source, source_format="official_mtlora")
    report.meta = {"keys": list(obj), "epoch": obj.get("epoch"), "max_accuracy": obj.get("max_accuracy")}
    config = obj.get("config")
    if isinstance(config, Mapping):
        report.config = official_config_summary(config)
        report.config_mismatches = compare_official_config(report.config, model)
    else:
        report.notes.append("the checkpoint has no config: only key names and shapes were checked")
    if any(k in obj for k in ("optimizer", "lr_scheduler", "scaler")):
        report.notes.append("optimizer/lr_scheduler/scaler states are not restored (weights only)")
    converted = _convert_official(state_dict, model.tasks)
    _resolve_trainable_scales(converted, model, report)
    return apply_state_dict(model, converted, report, strict=strict)
