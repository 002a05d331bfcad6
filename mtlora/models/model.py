"""MultiTaskModel: Swin encoder with adapters + per-task fusion and heads (pure nn.Module)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from mtlora.models.decoders import MultiTaskDecoder
from mtlora.models.plans import AdapterConfig, PlanReport, apply_plan
from mtlora.models.recompute import checkpoint_mode
from mtlora.models.swin import SWIN_SIZES, SwinConfig, SwinEncoder
from mtlora.options import check_number
from mtlora.tasks import validate_tasks

C = TypeVar("C")


def as_config(cls: type[C], value: Any, where: str = "") -> C:
    """A config dataclass from itself, None (the defaults) or the plain dict a checkpoint stores.

    The one rule for unknown keys wherever a model is rebuilt from a dict: they fail, named, so a
    file written by a newer version or a typo never silently builds another architecture.
    """
    if value is None:
        return cls()
    if is_dataclass(value):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where}{cls.__name__}: unknown options {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{where}{cls.__name__}: expected a dict or {cls.__name__}, got {type(value).__name__}")


@dataclass
class EncoderConfig:
    """Swin encoder options.

    Args:
        arch: ``swin_tiny``, ``swin_small`` or ``swin_base`` (Microsoft V1 sizes); ``embed_dim``,
            ``depths`` and ``num_heads`` override its defaults (tests use tiny custom sizes).
        embed_dim: channels of the first stage (None: the size's default, 96 for Swin-T).
        depths: blocks per stage (None: the size's default, [2, 2, 6, 2] for Swin-T).
        num_heads: attention heads per stage (None: the size's default, [3, 6, 12, 24] for Swin-T).
        img_size: square input size; every stage grid must divide by the window.
        window_size: attention window (7 for the released weights).
        drop_path_rate: stochastic depth, linear over all blocks (official 0.2).
        pretrained: ImageNet weights: a Microsoft release ``.pth`` (key ``model``), a timm
            ``.pth``/``.safetensors`` file, or ``timm:<model name>`` (downloaded by timm).
            None: random init.
        gradient_checkpointing: recompute activations of every block and patch merging in
            backward to save memory. ``true`` recomputes whole blocks (keeps only block inputs);
            ``selective`` keeps the outputs of dense matmuls, attention and convolutions and
            recomputes the cheap rest, including MTLoRA's per-task element-wise work
            (mtlora/models/recompute.py).  Exact either way.
    """

    arch: str = "swin_tiny"
    img_size: int = 448
    window_size: int = 7
    drop_path_rate: float = 0.2
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    pretrained: str | None = None
    gradient_checkpointing: bool | Literal["selective"] = False

    def swin_config(self) -> SwinConfig:
        if self.arch not in SWIN_SIZES:
            raise ValueError(f"encoder.arch: unknown {self.arch!r}; choose one of {list(SWIN_SIZES)}")
        overrides = dict(
            embed_dim=self.embed_dim,
            depths=tuple(self.depths) if self.depths else None,
            num_heads=tuple(self.num_heads) if self.num_heads else None,
        )
        checkpoint_mode(self.gradient_checkpointing, "encoder.gradient_checkpointing")  # validates
        check_number("encoder.img_size", self.img_size, above=0, integer=True)
        check_number("encoder.window_size", self.window_size, above=0, integer=True)
        check_number("encoder.drop_path_rate", self.drop_path_rate, minimum=0, below=1)
        return SwinConfig.named(
            self.arch,
            img_size=self.img_size,
            window_size=self.window_size,
            drop_path_rate=self.drop_path_rate,
            gradient_checkpointing=self.gradient_checkpointing,
            **overrides,
        )


@dataclass
class DecoderConfig:
    """Decoder options.

    Args:
        channels: output widths of the per-task 1x1 fusion convolutions, one per stage feature
            (official: the HRNet-W18 widths 18/36/72/144; the head's hidden width is 4x their sum).
    """

    channels: list[int] = field(default_factory=lambda: [18, 36, 72, 144])


class MultiTaskModel(nn.Module):
    """``forward(image) -> {task: logits (B, C_t, H, W)}`` for every task in ``task_channels``."""

    def __init__(
        self,
        task_channels: dict[str, int],
        encoder: EncoderConfig | None = None,
        adapter: AdapterConfig | None = None,
        decoder: DecoderConfig | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = validate_tasks(list(task_channels), "task_channels")
        self.encoder_config = encoder or EncoderConfig()
        self.adapter_config = adapter or AdapterConfig()
        self.decoder_config = decoder or DecoderConfig()
        for width in self.decoder_config.channels:
            check_number("decoder.channels", width, above=0, integer=True)
        self.backbone = SwinEncoder(self.encoder_config.swin_config())
        self.task_backbones: nn.ModuleDict | None = None  # adapter.per_task: copies made below
        if load_pretrained and self.encoder_config.pretrained:
            self.load_pretrained()
        self.plan: PlanReport = apply_plan(self.backbone, self.adapter_config, self.tasks)
        if self.adapter_config.per_task:  # one adapter set per task, sharing the frozen weights
            from mtlora.models.per_task import register_tied_state_hooks, tied_copy

            copies = {t: tied_copy(self.backbone) for t in self.tasks[1:]}
            self.task_backbones = nn.ModuleDict({t: c for t, (c, _) in copies.items()})
            tied = next(iter(copies.values()))[1] if copies else []
            register_tied_state_hooks(self, "task_backbones", "backbone", tied)
        self.decoder = MultiTaskDecoder(
            task_channels, self.backbone.out_channels, self.decoder_config.channels
        )

    def load_pretrained(self, source: str | None = None):
        """Load ImageNet Swin weights into the encoder (before or after adapter injection)."""
        from mtlora.io.checkpoints import load_pretrained_backbone

        source = source or self.encoder_config.pretrained
        if not source:
            raise ValueError("no pretrained weights given: set encoder.pretrained")
        report = load_pretrained_backbone(self.backbone, source)
        for encoder in (self.task_backbones or {}).values():  # their own trained copies start there too
            load_pretrained_backbone(encoder, source)
        return report

    def encoders(self) -> list[nn.Module]:
        """The encoder, plus one per further task with ``adapter.per_task`` (frozen weights shared)."""
        return [self.backbone, *(self.task_backbones or {}).values()]

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        if self.task_backbones is None:
            features = self.backbone(image)
            return self.decoder(features, self.plan.stage_task_streams, tuple(image.shape[-2:]))
        # one encoder pass per task; stream k of every stage is task k's encoder
        per_task = [encoder(image) for encoder in self.encoders()]
        features = [torch.cat(stage, dim=0) for stage in zip(*per_task)]
        streams = [list(range(len(self.tasks)))] * len(features)
        return self.decoder(features, streams, tuple(image.shape[-2:]))

    @property
    def task_channels(self) -> dict[str, int]:
        """Output channels of every task's head, in task order."""
        return {t: h.last_layer[-1].out_channels for t, h in self.decoder.heads.items()}

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, load_pretrained: bool = False, where: str = ""
    ) -> MultiTaskModel:
        """The model :meth:`config_dict` describes (its inverse), with fresh weights.

        ``load_pretrained`` is off by default: a rebuilt model usually receives its weights from
        the file the config came with.  ``where`` (e.g. the file name) prefixes errors.
        """
        if "task_channels" not in config:
            raise ValueError(f"{where}model config: no 'task_channels' (found {sorted(config)})")
        return cls(
            dict(config["task_channels"]),
            as_config(EncoderConfig, config.get("encoder"), where),
            as_config(AdapterConfig, config.get("adapter"), where),
            as_config(DecoderConfig, config.get("decoder"), where),
            load_pretrained=load_pretrained,
        )

    def config_dict(self) -> dict:
        """Primitive description of the architecture (stored with checkpoints and exports)."""
        return {
            "task_channels": self.task_channels,
            "encoder": asdict(self.encoder_config),
            "adapter": asdict(self.adapter_config),
            "decoder": asdict(self.decoder_config),
        }


def parameter_counts(model: MultiTaskModel) -> dict[str, int]:
    """Total and trainable parameters, split into encoder and decoder."""

    def count(modules: list[nn.Module], trainable: bool) -> int:
        params = {id(p): p for m in modules for p in m.parameters()}  # tied per-task weights once
        return sum(p.numel() for p in params.values() if p.requires_grad or not trainable)

    encoders = model.encoders()
    return {
        "total": count([model], False),
        "trainable": count([model], True),
        "encoder_total": count(encoders, False),
        "encoder_trainable": count(encoders, True),
        "decoder_trainable": count([model.decoder], True),
    }
