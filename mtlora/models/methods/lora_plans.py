"""The LoRA family: MTLoRA, MTLoRA+, task-agnostic / per-task LoRA and progressive plans.

All are one method, ``mtlora``, over different sharing plans (``adapter.plan``,
``shared_mode: lora_only`` for task-agnostic LoRA, ``patch_merging`` for MTLoRA+), plus
``progressive``, whose plan comes from ``groups`` / ``split_block``.  Each adapted linear layer
becomes a :class:`~mtlora.models.lora.MultiPathLoRALinear` with the paths its block's plan asks for.
"""

from __future__ import annotations

import re

from torch import nn

from mtlora.models.lora import LoRASpec, inject_lora
from mtlora.models.methods.registry import AdapterMethod, TrainableSet, register_adapter_method
from mtlora.models.plans import LINEAR_TARGETS, AdapterConfig, BlockPlan, PlanToken, per_stage
from mtlora.models.swin import SwinEncoder
from mtlora.options import check_number

_LAYER = re.compile(r"layers\.(\d+)\.(?:blocks\.(\d+)\.(?:attn|mlp)\.(\w+)|downsample\.reduction)$")
_READS = (
    "shared_rank",
    "task_rank",
    "shared_scale",
    "task_scale",
    "dropout",
    "shared_mode",
    "targets",
    "task_targets",
    "patch_merging",
    "plan",
)


def mtlora_plan(depths: list[int]) -> list[list[PlanToken]]:
    """Official MTLoRA: shared blocks, task branch in the last block of every stage."""
    return [["shared"] * (d - 1) + ["branch"] for d in depths]


def progressive_plan(cfg: AdapterConfig, depths: list[int]) -> list[list[PlanToken]]:
    """Per-stage ``groups`` switched on at ``split_block`` (earlier blocks keep the previous ones)."""
    groups = per_stage(cfg.groups if cfg.groups is not None else ["shared"], len(depths), "adapter.groups")
    split = per_stage(
        cfg.split_block if cfg.split_block is not None else [None], len(depths), "adapter.split_block"
    )
    plan, current = [], "shared"
    for i, d in enumerate(depths):
        start = split[i] or 0
        if not 0 <= start < d:
            raise ValueError(f"adapter.split_block[{i}] = {start} is outside stage {i} (blocks 0..{d - 1})")
        stage = []
        for j in range(d):
            if j == start and groups[i] is not None:
                current = groups[i]
            stage.append(current)
        plan.append(stage)
    return plan


def _mtlora_raw_plan(cfg: AdapterConfig, tasks: list[str], depths: list[int]) -> list:
    if cfg.plan is not None:
        return cfg.plan
    if cfg.shared_mode == "lora_only":
        return [["shared"] * d for d in depths]
    return mtlora_plan(depths)


def _progressive_raw_plan(cfg: AdapterConfig, tasks: list[str], depths: list[int]) -> list:
    return cfg.plan if cfg.plan is not None else progressive_plan(cfg, depths)


def inject_multipath_lora(
    encoder: SwinEncoder, cfg: AdapterConfig, plans: list[list[BlockPlan]]
) -> list[str]:
    """Wrap the ``targets`` of every block (and with ``patch_merging`` the reductions) as the plans say."""
    n = len(plans)
    for opt in ("targets", "task_targets"):
        bad = sorted(set(getattr(cfg, opt)) - set(LINEAR_TARGETS))
        if bad:
            raise ValueError(f"adapter.{opt}: unknown layer names {bad}; choose from {list(LINEAR_TARGETS)}")
    shared_rank = per_stage(cfg.shared_rank, n, "adapter.shared_rank")
    task_rank = per_stage(cfg.resolved_task_rank(), n, "adapter.task_rank")
    shared_scale = per_stage(cfg.shared_scale, n, "adapter.shared_scale")
    task_scale = per_stage(cfg.resolved_task_scale(), n, "adapter.task_scale")
    dropout = per_stage(cfg.dropout, n, "adapter.dropout")
    for value in shared_scale + task_scale:
        check_number("adapter.shared_scale/task_scale", value)
    for value in dropout:
        check_number("adapter.dropout", value, minimum=0, below=1)
    for opt, ranks in (("shared_rank", shared_rank), ("task_rank", task_rank)):
        if any(int(r) <= 0 for r in ranks):
            raise ValueError(f"adapter.{opt} must be a positive integer (per stage), got {ranks}")

    def spec_for(name: str, _layer: nn.Linear) -> LoRASpec | None:
        m = _LAYER.match(name)
        if not m:
            return None
        i = int(m.group(1))
        common = dict(
            shared_scale=shared_scale[i], path_scale=task_scale[i], dropout=dropout[i], mode=cfg.shared_mode
        )
        if m.group(2) is None:  # patch-merging reduction (MTLoRA+): shared path only
            return LoRASpec(shared_rank=int(shared_rank[i]), **common) if cfg.patch_merging else None
        leaf, plan = m.group(3), plans[i][int(m.group(2))]
        if leaf not in cfg.targets:
            return None
        if plan.kind == "streams":  # every adapted layer of a stream block has one path per stream
            return LoRASpec(shared_rank=0, path_names=plan.paths, path_rank=int(task_rank[i]), **common)
        paths = plan.paths if plan.kind == "branch" and leaf in cfg.task_targets else ()
        mode = cfg.shared_mode if paths else "matrix"
        return LoRASpec(
            int(shared_rank[i]),
            paths,
            int(task_rank[i]) if paths else 0,
            shared_scale[i],
            task_scale[i],
            dropout[i],
            mode,
        )

    wrapped = inject_lora(encoder, spec_for)
    for target in cfg.targets:
        if not any(w.endswith("." + target) for w in wrapped):
            raise ValueError(f"adapter.targets: {target!r} matched no layer")
    return wrapped


def _official_trainable(cfg: AdapterConfig) -> TrainableSet:
    """The official MTLoRA set: patch embed, norms, position bias, and the dense patch-merging
    reductions unless MTLoRA+ adapts them."""
    return TrainableSet(
        patch_embed=True, norms=True, relative_position_bias=True, patch_merging=not cfg.patch_merging
    )


register_adapter_method(
    AdapterMethod(
        "mtlora",
        inject_multipath_lora,
        _official_trainable,
        reads=_READS,
        plan=_mtlora_raw_plan,
        lora=True,
    )
)
register_adapter_method(
    AdapterMethod(
        "progressive",
        inject_multipath_lora,
        _official_trainable,
        reads=(*_READS, "groups", "split_block"),
        plan=_progressive_raw_plan,
        lora=True,
        label="Progressive",
    )
)
