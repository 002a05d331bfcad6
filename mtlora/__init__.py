"""mtlora: multi-task dense prediction with a Swin Transformer and MTLoRA adapters.

The public API, imported on first use (``import mtlora`` itself loads neither torch nor Lightning)::

    from mtlora import MultiTaskModel, EncoderConfig, AdapterConfig, DecoderConfig  # pure torch
    from mtlora import MultiTaskModule                                               # Lightning
    from mtlora import SyntheticDataModule, PascalContextDataModule, NYUDDataModule, ImageFolderDataModule
    from mtlora import save_adapters, load_adapters, export_model, load_exported, safe_torch_load

Packages: ``models`` (nn.Modules, no Lightning), ``metrics``, ``data``, ``io`` (weight files, no
Lightning), ``training`` (LightningModule, callbacks, CLI subcommands) and ``tools`` (report,
sweep, summary, similarity, config reference, data commands); ``cli`` is the entry point.
"""

from mtlora._lazy import lazy_attributes

_LAZY = {
    **dict.fromkeys(
        ("MultiTaskModel", "EncoderConfig", "DecoderConfig", "parameter_counts"), "mtlora.models.model"
    ),
    "AdapterConfig": "mtlora.models.plans",
    "MultiTaskModule": "mtlora.training.module",
    **dict.fromkeys(
        (
            "MultiTaskDataModule",
            "SyntheticDataModule",
            "PascalContextDataModule",
            "NYUDDataModule",
            "ImageFolderDataModule",
        ),
        "mtlora.data",
    ),
    **dict.fromkeys(
        ("save_adapters", "load_adapters", "export_model", "load_exported", "safe_torch_load"), "mtlora.io"
    ),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = list(_LAZY)
