"""Methods that add no adapter modules: full fine-tuning, decoders only, BitFit."""

from __future__ import annotations

from mtlora.models.methods.registry import AdapterMethod, TrainableSet, register_adapter_method
from mtlora.models.plans import AdapterConfig


def _one_stream(cfg: AdapterConfig, tasks: list[str], depths: list[int]) -> list:
    """One shared stream whatever ``adapter.plan`` says (the benchmark swaps these methods in)."""
    return [["shared"] * d for d in depths]


register_adapter_method(AdapterMethod("full", trainable=TrainableSet(everything=True), plan=_one_stream))
register_adapter_method(
    AdapterMethod(
        "decoders",
        trainable=TrainableSet(frozen_encoder=True),
        reads=("train_biases",),
        plan=_one_stream,
        label="MTL - decoders only",
    )
)
# every "*bias*" tensor, position-bias tables included: what Table 1's 2.85M counts
register_adapter_method(
    AdapterMethod(
        "bitfit",
        trainable=TrainableSet(relative_position_bias=True, biases=True),
        per_task=True,
        label="BitFit",
    )
)
