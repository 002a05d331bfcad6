"""Adapter plans: which blocks share which low-rank paths, and what is trained.

A plan assigns every Swin block a kind (``shared`` / ``branch`` / ``streams``, see
:mod:`mtlora.models.swin`) and the names of its low-rank paths.  :func:`apply_plan` runs the
registered adapter method (:mod:`mtlora.models.methods`) in three steps: resolve the block plans,
inject the method's modules, mark what trains.  MTLoRA, MTLoRA+, task-agnostic LoRA and the
progressive task-specific scheme are all plans over the same encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from mtlora.models.lora import SharedMode
from mtlora.models.methods.marker import adapter_parameter_names
from mtlora.models.methods.registry import AdapterMethod, adapter_method_names, get_adapter_method
from mtlora.models.non_lora_adapters import AdapterPosition
from mtlora.models.swin import BlockKind, SwinEncoder

LINEAR_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class AdapterConfig:
    """How the encoder is adapted.

    Args:
        method: a registered adapter method (:func:`mtlora.models.methods.register_adapter_method`);
            built in: ``mtlora`` (TA-LoRA everywhere + TS-LoRA in the last block of every stage),
            ``full`` (full fine-tuning, no adapters), ``decoders`` (frozen encoder, train only the
            decoders), ``progressive`` (shared -> task groups -> tasks, see ``groups``); the
            Table-1 baselines (one shared stream, :mod:`mtlora.models.non_lora_adapters`): ``bitfit`` (no
            adapters: biases and position-bias tables train), ``houlsby`` (bottleneck
            adapters), ``compacter`` (PHM adapters), ``vpt_shallow`` / ``vpt_deep`` (prompts).
        shared_rank: rank of the task-agnostic path, one value or one per stage.
        task_rank: rank of the task-specific paths (None: equal to ``shared_rank``, as the
            official MTLoRA+ r4/r8/r16 configs).
        shared_scale: raw multiplier of the shared path (not alpha/r), per stage or one value.
        task_scale: multiplier of the task paths (None: equal to ``shared_scale``; the official
            code never reads its TASK_SCALE option).
        dropout: dropout on the low-rank input, per stage or one value.
        shared_mode: how task outputs combine with the shared path (``matrix``, ``matrixv2``,
            ``addition``, ``lora_only``; see docs/official_implementation.md).
        targets: linear layers that get adapters.
        task_targets: layers that get task-specific paths in task-specific blocks.
        patch_merging: MTLoRA+: low-rank (shared) adapter on the patch-merging reductions,
            whose dense weights are then frozen.
        groups: ``progressive`` only: per stage, the task partition used from the stage's
            ``split_block`` on; ``"shared"``, ``"tasks"`` or a list of task lists.
        split_block: ``progressive`` only: per stage, first block that uses the stage's groups
            (earlier blocks of the stage keep the previous partition); None = block 0.
        plan: explicit sharing plan, one entry per stage: a token for all its blocks or a list
            with one token per block; tokens: ``shared`` (task-agnostic path), ``branch``
            (MTLoRA task-specific block whose task streams exit to the decoders), ``tasks``
            (one stream per task from here on), or a list of task groups (one stream per group).
            Overrides what ``method`` would build.
        train_patch_embed / train_norms / train_relative_position_bias: unfreeze those
            backbone parameters (None: the method's default; ``mtlora``/``progressive``: True
            as the official MTLoRA; ``bitfit``: position bias only; ``houlsby``/``compacter``:
            norms only; VPT: none).
        train_patch_merging: unfreeze the dense patch-merging reductions (None: True unless
            ``patch_merging`` (official behaviour); False for the baselines).
        train_biases: also unfreeze every bias in the backbone (None: only for ``bitfit``).
        adapter_reduction: ``houlsby``/``compacter``: bottleneck width = block width // this
            (Swin widths grow per stage, so a factor, not a fixed width).
        adapter_positions: ``houlsby``/``compacter``: where adapters go: ``attn`` (after the
            attention projection), ``mlp`` (after the MLP); Compacter++ is ``[mlp]``.
        prompt_tokens: ``vpt_*``: prompt tokens per prompted block (VPT/Polyhistor: 50).
        compacter_n: ``compacter``: number ``n`` of shared ``n x n`` PHM rules (must divide
            every block width and bottleneck).
        compacter_rank: ``compacter``: rank of the per-layer PHM factors ``s_i t_i^T``.
        per_task: one adapter set per task, the encoder run once per task (the setting of the
            paper's Adapter/BitFit/VPT/Compacter rows, from Polyhistor): the trainable encoder
            parameters exist once per task, the frozen ones once.  For the PEFT methods and
            ``bitfit``; per-task LoRA is ``plan: [tasks, tasks, tasks, tasks]``.
    """

    method: str = "mtlora"
    shared_rank: int | list[int] = 16
    task_rank: int | list[int] | None = 4
    shared_scale: float | list[float] = 4.0
    task_scale: float | list[float] | None = None
    dropout: float | list[float] = 0.05
    shared_mode: SharedMode = "matrix"
    targets: list[str] = field(default_factory=lambda: list(LINEAR_TARGETS))
    task_targets: list[str] = field(default_factory=lambda: ["proj", "fc1", "fc2"])
    patch_merging: bool = False
    groups: list | None = None
    split_block: list[int | None] | None = None
    plan: list | None = None
    train_patch_embed: bool | None = None
    train_norms: bool | None = None
    train_relative_position_bias: bool | None = None
    train_patch_merging: bool | None = None
    train_biases: bool | None = None
    adapter_reduction: int = 4
    adapter_positions: list[AdapterPosition] = field(default_factory=lambda: ["attn", "mlp"])
    prompt_tokens: int = 50
    compacter_n: int = 4
    compacter_rank: int = 1
    per_task: bool = False

    def resolved_task_rank(self) -> int | list[int]:
        """Rank of the task-specific paths: ``task_rank``, or ``shared_rank`` where it is None."""
        return self.task_rank if self.task_rank is not None else self.shared_rank

    def resolved_task_scale(self) -> float | list[float]:
        """Multiplier of the task-specific paths: ``task_scale``, or ``shared_scale`` where it is None."""
        return self.task_scale if self.task_scale is not None else self.shared_scale


def per_stage(value, n: int, option: str) -> list:
    """Broadcast one value (or a 1-element list) to ``n`` stages, as the official config does."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{option}: expected one value or {n} (one per stage), got {values}")
    return values


@dataclass(frozen=True)
class BlockPlan:
    kind: BlockKind = "shared"
    paths: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()


@dataclass
class PlanReport:
    """What a plan did: the block plans and the stream layout seen by the decoders."""

    blocks: list[list[BlockPlan]]
    stage_task_streams: list[list[int]]  # per stage: stream index serving each task


PlanToken = str | list  # "shared" | "branch" | "tasks" | [[task, ...], ...]


def _is_partition(entry) -> bool:
    return (
        isinstance(entry, (list, tuple))
        and bool(entry)
        and all(isinstance(g, (list, tuple)) and all(isinstance(t, str) for t in g) for g in entry)
    )


def _parse_token(token, tasks: list[str], where: str) -> BlockPlan:
    """One block's entry of a plan -> its BlockPlan (groups validated as a partition of the tasks)."""
    if token == "shared":
        return BlockPlan("shared")
    if token == "branch":
        return BlockPlan("branch", tuple(tasks))
    if token == "tasks":
        groups = tuple((t,) for t in tasks)
    elif _is_partition(token):
        groups = tuple(tuple(g) for g in token)
    else:
        raise ValueError(
            f"{where}: expected 'shared', 'branch', 'tasks' or a list of task groups, got {token!r}"
        )
    if any(not g for g in groups):
        raise ValueError(f"{where}: empty task group in {[list(g) for g in groups]}")
    seen = [t for g in groups for t in g]
    unknown = sorted(set(seen) - set(tasks))
    missing = [t for t in tasks if t not in seen]
    dup = sorted({t for t in seen if seen.count(t) > 1})
    if unknown or missing or dup:
        raise ValueError(
            f"{where}: groups {[list(g) for g in groups]} must partition the tasks {tasks}: "
            f"unknown {unknown}, missing {missing}, in several groups {dup}"
        )
    return BlockPlan("streams", tuple("+".join(g) for g in groups), groups)


def block_plans(cfg: AdapterConfig, tasks: list[str], depths: list[int]) -> list[list[BlockPlan]]:
    """Resolve ``cfg`` to the kind and paths of every block, and validate the stream tree.

    The method's planner gives one entry per stage: a token for all its blocks or a list with one
    token per block (``adapter.plan`` wins where the method takes one).  Streams may only split
    as they go deeper (each group inside one earlier group), and once the encoder has split into
    streams no block can be ``shared`` or ``branch`` again.
    """
    method = get_adapter_method(cfg.method)
    if method.plan is None:
        if cfg.plan is not None:
            takes = [n for n in adapter_method_names() if get_adapter_method(n).lora]
            raise ValueError(
                f"adapter.plan: method {cfg.method!r} runs one shared stream; only {', '.join(takes)} "
                "take a sharing plan (set plan: null)"
            )
        return [[BlockPlan() for _ in range(d)] for d in depths]
    raw = method.plan(cfg, tasks, depths)
    if len(raw) != len(depths):
        raise ValueError(f"adapter.plan: expected {len(depths)} stages, got {len(raw)} (unknown stages?)")
    plans: list[list[BlockPlan]] = []
    current: tuple[tuple[str, ...], ...] | None = None
    for i, (entry, d) in enumerate(zip(raw, depths)):
        tokens = entry if isinstance(entry, (list, tuple)) and not _is_partition(entry) else [entry] * d
        if len(tokens) != d:
            raise ValueError(f"adapter.plan[{i}]: stage {i} has {d} blocks, the plan lists {len(tokens)}")
        stage = []
        for j, token in enumerate(tokens):
            blk = _parse_token(token, tasks, f"adapter.plan[{i}][{j}]")
            if blk.kind != "streams" and current is not None:
                raise ValueError(
                    f"adapter.plan[{i}][{j}]: {token!r} after the streams split at an earlier block"
                )
            if blk.kind == "streams":
                if current is not None and not all(
                    any(set(g) <= set(p) for p in current) for g in blk.groups
                ):
                    raise ValueError(
                        f"adapter.plan[{i}][{j}]: groups {[list(g) for g in blk.groups]} do not refine the "
                        f"previous {[list(g) for g in current]}: streams can only split as they go deeper"
                    )
                current = blk.groups
            stage.append(blk)
        plans.append(stage)
    return plans


def resolve_method(
    cfg: AdapterConfig, tasks: list[str], depths: list[int]
) -> tuple[AdapterMethod, list[list[BlockPlan]]]:
    """Step 1: the registered method and the plan of every block (options validated)."""
    method = get_adapter_method(cfg.method)
    if cfg.per_task and not method.per_task:
        allowed = [n for n in adapter_method_names() if get_adapter_method(n).per_task]
        raise ValueError(
            f"adapter.per_task: only for {', '.join(allowed)}, not {cfg.method!r} "
            "(LoRA per task: plan: [tasks, tasks, tasks, tasks]; full fine-tuning per task: one run per task)"
        )
    return method, block_plans(cfg, tasks, depths)


def stage_task_streams(plans: list[list[BlockPlan]], tasks: list[str]) -> list[list[int]]:
    """Per stage: the index of the stream (of the stage's output stack) serving each task."""
    out: list[list[int]] = []
    for stage in plans:
        last = stage[-1]
        if last.kind == "branch":
            out.append(list(range(len(tasks))))
        elif last.kind == "streams":
            out.append([next(k for k, g in enumerate(last.groups) if t in g) for t in tasks])
        else:
            out.append([0] * len(tasks))
    return out


def configure_blocks(encoder: SwinEncoder, plans: list[list[BlockPlan]]) -> None:
    """Give every block its kind, stream count and (where the partition changes) stream route."""
    import torch

    previous: tuple[tuple[str, ...], ...] | None = None
    for stage, stage_plans in zip(encoder.layers, plans):
        for blk, plan in zip(stage.blocks, stage_plans):
            route = None
            if plan.kind == "streams" and plan.groups != previous:
                parents = previous or (tuple(t for g in plan.groups for t in g),)
                route = torch.tensor(
                    [next(k for k, p in enumerate(parents) if set(g) <= set(p)) for g in plan.groups]
                )
                previous = plan.groups
            blk.configure(plan.kind, len(plan.paths) if plan.kind == "branch" else 1, route)


def apply_plan(encoder: SwinEncoder, cfg: AdapterConfig, tasks: list[str]) -> PlanReport:
    """Inject adapters into ``encoder`` as ``cfg`` says and set which parameters train:
    resolve (:func:`resolve_method`), inject (the method's ``inject``), :func:`mark_trainable`."""
    depths = [len(stage.blocks) for stage in encoder.layers]
    method, plans = resolve_method(cfg, tasks, depths)
    configure_blocks(encoder, plans)
    if method.inject is not None:
        method.inject(encoder, cfg, plans)
    mark_trainable(encoder, cfg)
    return PlanReport(plans, stage_task_streams(plans, tasks))


def mark_trainable(encoder: nn.Module, cfg: AdapterConfig) -> None:
    """Set ``requires_grad`` on the encoder per the method's trainable set and the ``train_*`` options
    (by default the official set, described in docs/official_implementation.md).  Adapter weights
    are recognised by module type (:mod:`mtlora.models.methods.marker`), not by name."""
    ts = get_adapter_method(cfg.method).trainable_set(cfg)
    if ts.everything:
        encoder.requires_grad_(True)
        return
    adapters = set(adapter_parameter_names(encoder))
    on = not ts.frozen_encoder
    for name, p in encoder.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        p.requires_grad = bool(
            (on and name in adapters)
            or (on and ts.patch_embed and name.startswith("patch_embed."))
            or (on and ts.norms and ".norm" in f".{name}")
            or (on and ts.relative_position_bias and leaf == "relative_position_bias_table")
            or (on and ts.patch_merging and re.search(r"downsample\.reduction\.(linear\.)?weight$", name))
            or (ts.biases and leaf == "bias")
        )
