"""Weight files and other outputs, without Lightning.

* :mod:`.atomic` — the one atomic writer (temporary file, fsync, rename): nothing half-written.
* :mod:`.serialization` — reading any weight file: :func:`checked_file` (exists, content sniffed,
  archive complete) and :func:`safe_torch_load` (no pickled code is executed).
* :mod:`.config` — flattening and comparing the architecture configs stored in the files.
* :mod:`.adapters` — adapter files: the trained part of a model plus its base identity.
* :mod:`.export` — merged inference models (safetensors + config.json, torch.export program).
* :mod:`.checkpoints` — pretrained Swin and official MTLoRA checkpoints, one module per format
  (:mod:`.microsoft_swin`, :mod:`.timm_swin`, :mod:`.official_mtlora`, :mod:`.backbone`,
  :mod:`.loading`).

Lightning checkpoints and RNG state belong to the training layer (``mtlora.training.checkpointing``).
Everything but the atomic writers is imported on first use: the light commands import no torch.
"""

from mtlora._lazy import lazy_attributes
from mtlora.io.atomic import DiskFullError, write_atomic, write_json_atomic, write_text_atomic

_LAZY = {
    **dict.fromkeys(
        (
            "CheckpointError",
            "UnsafeCheckpointError",
            "atomic_torch_save",
            "checked_file",
            "file_kind",
            "safe_torch_load",
        ),
        "mtlora.io.serialization",
    ),
    **dict.fromkeys(("config_differences", "flatten_config"), "mtlora.io.config"),
    **dict.fromkeys(("save_adapters", "load_adapters", "read_adapters"), "mtlora.io.adapters"),
    **dict.fromkeys(("export_model", "load_exported"), "mtlora.io.export"),
    **dict.fromkeys(
        ("LoadReport", "load_pretrained_backbone", "load_official_mtlora_checkpoint"), "mtlora.io.checkpoints"
    ),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["DiskFullError", "write_atomic", "write_json_atomic", "write_text_atomic", *_LAZY]
