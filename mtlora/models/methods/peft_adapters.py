"""Houlsby adapters, Compacter and VPT (the Table-1 baselines); modules in :mod:`mtlora.models.non_lora_adapters`."""

from __future__ import annotations

from mtlora.models.methods.registry import AdapterMethod, TrainableSet, register_adapter_method
from mtlora.models.non_lora_adapters import inject_peft
from mtlora.models.plans import AdapterConfig, BlockPlan
from mtlora.models.swin import SwinEncoder


def _inject(encoder: SwinEncoder, cfg: AdapterConfig, plans: list[list[BlockPlan]]) -> list[str]:
    return inject_peft(
        encoder,
        cfg.method,
        reduction=cfg.adapter_reduction,
        positions=cfg.adapter_positions,
        prompt_tokens=cfg.prompt_tokens,
        compacter_n=cfg.compacter_n,
        compacter_rank=cfg.compacter_rank,
    )


_ADAPTER = ("adapter_reduction", "adapter_positions")
_NORMS = TrainableSet(norms=True)  # Houlsby et al. and Compacter also train the layer norms
for _name, _reads, _trainable, _label in (
    ("houlsby", _ADAPTER, _NORMS, "Adapter"),
    ("compacter", (*_ADAPTER, "compacter_n", "compacter_rank"), _NORMS, "Compacter"),
    ("vpt_shallow", ("prompt_tokens",), TrainableSet(), "VPT-shallow"),  # VPT: prompts (+ heads) only
    ("vpt_deep", ("prompt_tokens",), TrainableSet(), "VPT-deep"),
):
    register_adapter_method(
        AdapterMethod(_name, _inject, _trainable, reads=_reads, per_task=True, label=_label)
    )
