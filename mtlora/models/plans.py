"""Adapter plans: which blocks share which low-rank paths, and what is trained.

A plan assigns every Swin block a kind (``shared`` / ``branch`` / ``streams``, see
:mod:`mtlora.models.swin`) and the names of its low-rank paths, then injects
:class:`~mtlora.models.lora.MultiPathLoRALinear` layers by module name and sets
``requires_grad`` by the trainable-set rules.  MTLoRA, MTLoRA+, task-agnostic LoRA and the
progressive task-specific scheme are all plans over the same encoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from mtlora.models.lora import LoRASpec, SharedMode, inject_lora
from mtlora.models.peft import PEFT_METHODS, AdapterPosition, inject_peft
from mtlora.models.swin import BlockKind, SwinEncoder
from mtlora.options import check_number

Method = Literal[
    "mtlora", "full", "decoders", "progressive", "bitfit", "houlsby", "compacter", "vpt_shallow", "vpt_deep"
]

# trainable-set flags left at None take these values (patch_embed, norms, position bias, merging, biases)
_TRAIN_DEFAULTS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "bitfit": (False, False, True, False, True),  # every "*bias*" tensor: what Table 1's 2.85M counts
    "houlsby": (False, True, False, False, False),  # Houlsby et al. also train the layer norms
    "compacter": (False, True, False, False, False),  # Compacter also trains the layer norms
    "vpt_shallow": (False, False, False, False, False),  # VPT: prompts (+ heads) only
    "vpt_deep": (False, False, False, False, False),
}

LINEAR_TARGETS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class AdapterConfig:
    """How the encoder is adapted.

    Args:
        method: ``mtlora`` (TA-LoRA everywhere + TS-LoRA in the last block of every stage),
            ``full`` (full fine-tuning, no adapters), ``decoders`` (frozen encoder, train only the
            decoders), ``progressive`` (shared -> task groups -> tasks, see ``groups``); the
            Table-1 baselines (one shared stream, :mod:`mtlora.models.peft`): ``bitfit`` (no
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

    method: Method = "mtlora"
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
    """What a plan did: wrapped layers and the stream layout seen by the decoders."""

    wrapped: list[str]
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


def block_plans(cfg: AdapterConfig, tasks: list[str], depths: list[int]) -> list[list[BlockPlan]]:
    """Resolve ``cfg`` to the kind and paths of every block, and validate the stream tree.

    ``cfg.plan`` (explicit) wins; otherwise ``mtlora`` and ``progressive`` build theirs.  A plan
    is one entry per stage: a token for all its blocks or a list with one token per block.
    Streams may only split as they go deeper (each group inside one earlier group), and once
    the encoder has split into streams no block can be ``shared`` or ``branch`` again.
    """
    if cfg.method in ("full", "decoders", "bitfit", *PEFT_METHODS):
        if cfg.plan is not None and cfg.method not in ("full", "decoders"):
            raise ValueError(
                f"adapter.plan: method {cfg.method!r} runs one shared stream; only mtlora and "
                "progressive take a sharing plan (set plan: null)"
            )
        return [[BlockPlan() for _ in range(d)] for d in depths]
    if cfg.plan is not None:
        raw = cfg.plan
    elif cfg.method == "progressive":
        raw = progressive_plan(cfg, depths)
    elif cfg.shared_mode == "lora_only":
        raw = [["shared"] * d for d in depths]
    else:
        raw = mtlora_plan(depths)
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


def apply_plan(encoder: SwinEncoder, cfg: AdapterConfig, tasks: list[str]) -> PlanReport:
    """Inject adapters into ``encoder`` as ``cfg`` says and set which parameters train."""
    depths = [len(stage.blocks) for stage in encoder.layers]
    n = len(depths)
    for opt in ("targets", "task_targets"):
        bad = sorted(set(getattr(cfg, opt)) - set(LINEAR_TARGETS))
        if bad:
            raise ValueError(f"adapter.{opt}: unknown layer names {bad}; choose from {list(LINEAR_TARGETS)}")
    shared_rank = per_stage(cfg.shared_rank, n, "adapter.shared_rank")
    task_rank = per_stage(
        cfg.task_rank if cfg.task_rank is not None else cfg.shared_rank, n, "adapter.task_rank"
    )
    shared_scale = per_stage(cfg.shared_scale, n, "adapter.shared_scale")
    task_scale = per_stage(
        cfg.task_scale if cfg.task_scale is not None else cfg.shared_scale, n, "adapter.task_scale"
    )
    dropout = per_stage(cfg.dropout, n, "adapter.dropout")
    for value in shared_scale + task_scale:
        check_number("adapter.shared_scale/task_scale", value)
    for value in dropout:
        check_number("adapter.dropout", value, minimum=0, below=1)
    uses_lora = cfg.method in ("mtlora", "progressive")
    if uses_lora:
        for opt, ranks in (("shared_rank", shared_rank), ("task_rank", task_rank)):
            if any(int(r) <= 0 for r in ranks):
                raise ValueError(f"adapter.{opt} must be a positive integer (per stage), got {ranks}")
    if cfg.per_task and cfg.method not in ("bitfit", *PEFT_METHODS):
        raise ValueError(
            f"adapter.per_task: only for bitfit and {list(PEFT_METHODS)}, not {cfg.method!r} "
            "(LoRA per task: plan: [tasks, tasks, tasks, tasks]; full fine-tuning per task: one run per task)"
        )
    plans = block_plans(cfg, tasks, depths)

    pattern = re.compile(r"layers\.(\d+)\.(?:blocks\.(\d+)\.(?:attn|mlp)\.(\w+)|downsample\.reduction)$")

    def spec_for(name: str, _layer: nn.Linear) -> LoRASpec | None:
        m = pattern.match(name)
        if not m or not uses_lora:
            return None
        i = int(m.group(1))
        common = dict(
            shared_scale=shared_scale[i], path_scale=task_scale[i], dropout=dropout[i], mode=cfg.shared_mode
        )
        if m.group(2) is None:  # patch-merging reduction (MTLoRA+): shared path only
            return LoRASpec(shared_rank=int(shared_rank[i]), **common) if cfg.patch_merging else None
        leaf, plan = m.group(3), plans[i][int(m.group(2))]
        if plan.kind == "streams":  # every adapted layer of a stream block has one path per stream
            if leaf not in cfg.targets:
                return None
            return LoRASpec(shared_rank=0, path_names=plan.paths, path_rank=int(task_rank[i]), **common)
        if leaf not in cfg.targets:
            return None
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
    if uses_lora:
        for target in cfg.targets:
            if not any(w.endswith("." + target) for w in wrapped):
                raise ValueError(f"adapter.targets: {target!r} matched no layer")

    stage_streams: list[list[int]] = []
    for i, stage in enumerate(encoder.layers):
        for blk, plan in zip(stage.blocks, plans[i]):
            blk.kind = plan.kind
            blk.num_streams = len(plan.paths) if plan.kind == "branch" else 1
        last = plans[i][-1]
        if last.kind == "branch":
            stage_streams.append(list(range(len(tasks))))
        elif last.kind == "streams":
            stage_streams.append([next(k for k, g in enumerate(last.groups) if t in g) for t in tasks])
        else:
            stage_streams.append([0] * len(tasks))
    _set_stream_routes(encoder, plans)
    if cfg.method in PEFT_METHODS:
        wrapped += inject_peft(
            encoder,
            cfg.method,
            reduction=cfg.adapter_reduction,
            positions=cfg.adapter_positions,
            prompt_tokens=cfg.prompt_tokens,
            compacter_n=cfg.compacter_n,
            compacter_rank=cfg.compacter_rank,
        )
    mark_trainable(encoder, cfg)
    return PlanReport(wrapped, plans, stage_streams)


def _set_stream_routes(encoder: SwinEncoder, plans: list[list[BlockPlan]]) -> None:
    """Give each stream block whose partition changes the parent index of every new stream."""
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
            if route is not None:
                blk.register_buffer("stream_route", route, persistent=False)
            else:
                blk.stream_route = None


def mark_trainable(encoder: nn.Module, cfg: AdapterConfig) -> None:
    """Set ``requires_grad`` on the encoder per the trainable-set rules (by default the official set,
    described in docs/official_implementation.md)."""
    if cfg.method == "full":
        encoder.requires_grad_(True)
        return
    flags = (
        cfg.train_patch_embed,
        cfg.train_norms,
        cfg.train_relative_position_bias,
        cfg.train_patch_merging,
        cfg.train_biases,
    )
    defaults = _TRAIN_DEFAULTS.get(cfg.method, (True, True, True, not cfg.patch_merging, False))
    embed, norms, rpb, train_merging, biases = (d if f is None else f for f, d in zip(flags, defaults))
    lora = cfg.method != "decoders"
    for name, p in encoder.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        p.requires_grad = bool(
            (lora and (".lora_" in f".{name}" or ".peft_" in f".{name}"))
            or (lora and embed and name.startswith("patch_embed."))
            or (lora and norms and (".norm" in f".{name}" or "lora_norm" in name))
            or (lora and rpb and leaf == "relative_position_bias_table")
            or (lora and train_merging and re.search(r"downsample\.reduction\.(linear\.)?weight$", name))
            or (biases and leaf == "bias")
        )
