"""Adapter methods: the registry (:mod:`.registry`) and the structural adapter marker (:mod:`.marker`).

Built-in families, one module each: :mod:`.lora_plans` (MTLoRA, MTLoRA+, shared / per-task
LoRA and progressive plans), :mod:`.peft_adapters` (Houlsby adapters, Compacter, VPT) and
:mod:`.backbone` (full fine-tuning, decoders only, BitFit).
"""

from mtlora.models.methods.marker import AdapterModule, adapter_parameter_names
from mtlora.models.methods.registry import (
    AdapterMethod,
    TrainableSet,
    adapter_method_names,
    get_adapter_method,
    is_lora,
    register_adapter_method,
    unregister_adapter_method,
)

__all__ = [
    "AdapterMethod",
    "AdapterModule",
    "TrainableSet",
    "adapter_method_names",
    "adapter_parameter_names",
    "get_adapter_method",
    "is_lora",
    "register_adapter_method",
    "unregister_adapter_method",
]
