"""Lightning checkpoints that survive crashes, load safely and fail with messages that say why.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file *in the target folder*,
  fsyncs it and renames it over the old one.  Lightning's own writer goes through an fsspec
  transaction whose temporary file lives in the system temp folder: when that is another file
  system (``/tmp`` on local disk or tmpfs, checkpoints on NFS/Lustre), the final "move" is a copy
  into the target, and a kill during the copy leaves a truncated ``last.ckpt``.  It also never
  fsyncs.  Loading is weights-only unless the caller explicitly passes ``weights_only=False``
  (warned), and unreadable files fail naming the file and saying truncated/corrupt.
* :func:`capture_rng_state` / :func:`restore_rng_state`: the global torch (CPU and CUDA), NumPy
  and Python RNG states as tensors and primitive values, so a resumed run draws the same dropout
  and drop-path masks as an uninterrupted one and the checkpoint stays weights-only loadable.
* :func:`check_checkpoint_fits`: a Lightning checkpoint of another architecture is reported as a
  list of differing options and tensor shapes instead of torch's size-mismatch dump.
* :func:`checkpoint_hparams_for_cli`: LightningCLI's reading of ``--ckpt_path`` hyper-parameters,
  made safe and explicit about the config options the checkpoint replaces.
* :func:`warn_epoch_end_resume_with_max_steps`: a Lightning loop quirk that would skip an epoch.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from mtlora.io.config import config_differences
from mtlora.io.serialization import CheckpointError, atomic_torch_save, checked_file, unreadable

log = logging.getLogger(__name__)

#: hyper-parameters whose difference changes the architecture (listed when shapes do not fit)
_ARCHITECTURE_KEYS = ("task_channels", "encoder", "adapter", "decoder")


# ---------------------------------------------------------------------------------------------- writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic local writes, weights-only loading, named load errors.

    Remote paths (``s3://`` ...) keep Lightning's fsspec behaviour.  The CLI installs it on
    every Trainer whose strategy uses the default ``TorchCheckpointIO``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        from fsspec.implementations.local import LocalFileSystem

        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        from fsspec.implementations.local import LocalFileSystem

        if weights_only is None:
            weights_only = True
        elif not weights_only:
            warnings.warn(
                f"loading {path} with weights_only=False: unpickling can execute code from the file; "
                "only do this for checkpoints you trust",
                UserWarning,
                stacklevel=2,
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location, weights_only)
        return load_lightning_checkpoint(path, map_location, weights_only)


def load_lightning_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True
) -> dict[str, Any]:
    """Read a local Lightning checkpoint; missing, truncated, corrupt or unsafe files fail naming the file."""
    p, _ = checked_file(path, ("zip", "pickle"), "a Lightning checkpoint")
    try:
        with p.open("rb") as f:  # a file object: torch.load would read a *.safetensors name as safetensors
            checkpoint = torch.load(f, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if not weights_only:
            raise unreadable(p, e) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{p} holds Python objects that weights-only loading refuses ({first}). Checkpoints written by "
            f"mtlora contain only tensors and primitive values; pass --weights_only false only for a file "
            "you trust (unpickling can execute code)"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise unreadable(p, e) from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict'; found {keys})")
    return checkpoint


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and primitive values (weights-only loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], rank: int = 0, world_size: int = 1) -> None:
    """Restore :func:`capture_rng_state`'s output.

    Only rank 0's states are in a checkpoint.  On one device the restore is exact; under DDP
    every rank restores them and then re-seeds torch with a draw from them plus its rank, so
    ranks keep distinct (and reproducible) dropout masks.
    """
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if world_size > 1:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,)).item()) + rank)


# ---------------------------------------------------------------------------------------------- architecture
def check_checkpoint_fits(
    expected: Mapping[str, Tensor],
    checkpoint: Mapping[str, Any],
    source: str,
    hparams: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> None:
    """Raise a :class:`CheckpointError` listing what differs when ``checkpoint`` does not fit the model.

    Args:
        expected: the model's ``state_dict()``.
        checkpoint: a Lightning checkpoint (``state_dict`` and, optionally, ``hyper_parameters``).
        source: the file, for the message.
        hparams: the model's hyper-parameters, compared with the checkpoint's architecture options.
        strict: also fail on missing/unexpected keys (shape mismatches always fail).
    """
    found = checkpoint.get("state_dict", {})
    mismatched = [
        (k, tuple(v.shape), tuple(found[k].shape))
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in found] if strict else []
    unexpected = [k for k in found if k not in expected] if strict else []
    if not (mismatched or missing or unexpected):
        return
    lines = [f"{k}: model expects {list(e)}, checkpoint has {list(g)}" for k, e, g in mismatched]
    lines += [f"missing in the checkpoint: {k}" for k in missing] + [
        f"not in the model: {k}" for k in unexpected
    ]
    options = config_differences(hparams or {}, checkpoint.get("hyper_parameters", {}), _ARCHITECTURE_KEYS)
    shown = "\n  ".join(lines[:25]) + (f"\n  ... and {len(lines) - 25} more" if len(lines) > 25 else "")
    hint = (
        (
            "\noptions that differ (give the checkpoint's, or use the config saved next to it):\n  "
            + "\n  ".join(options)
        )
        if options
        else ""
    )
    raise CheckpointError(
        f"{source} is a checkpoint of another architecture: {len(mismatched)} tensors have other shapes, "
        f"{len(missing)} are missing, {len(unexpected)} are unexpected:\n  {shown}{hint}"
    )


# ---------------------------------------------------------------------------------------------- resume
def prepare_trainer(trainer: Any, subcommand: str, run_config: Any) -> None:
    """CLI set-up: :class:`AtomicCheckpointIO` (``--ckpt_path`` is handled by :mod:`mtlora.training.resume`)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:  # keep user-configured CheckpointIO plugins
        strategy.checkpoint_io = AtomicCheckpointIO()


def warn_epoch_end_resume_with_max_steps(trainer: Any) -> None:
    """Warn about a Lightning 2.6 loop quirk that silently skips one epoch of data.

    With ``max_steps`` set, resuming from a checkpoint written after the last batch of an epoch
    (e.g. an end-of-epoch ``last.ckpt``) makes the restored epoch loop believe the next epoch is
    already complete: it trains no batch of it and moves on (observed with plain DataLoaders
    too).  Mid-epoch checkpoints (``every_n_train_steps``) or ``max_epochs`` avoid it.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if trainer.max_steps != -1 and trainer.num_training_batches and done >= trainer.num_training_batches:
        rank_zero_warn(
            f"resumed with max_steps={trainer.max_steps} from a checkpoint written at the end of an epoch: "
            "Lightning 2.6 then skips the batches of the next epoch. Resume from a mid-epoch checkpoint "
            "(ModelCheckpoint(every_n_train_steps=...)) or train by max_epochs"
        )


#: model options the CLI links from the DataModule: not the user's to compare
_LINKED_OPTIONS = frozenset({"task_channels", "batch_size", "encoder.img_size"})


def checkpoint_hparams_for_cli(
    path: str, config_model: Mapping[str, Any], weights_only: bool
) -> dict[str, Any]:
    """Hyper-parameters of ``--ckpt_path`` for LightningCLI, read safely; warns about options they replace.

    LightningCLI builds the model from the checkpoint's hyper-parameters, which silently replace
    the config's model options, and reads them with a plain ``torch.load`` (raw errors for damaged
    files, and ``--weights_only false`` is not honoured there).  Here the file is read like every
    other checkpoint (:func:`load_lightning_checkpoint`) and the replaced options are listed.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    hparams = dict(
        load_lightning_checkpoint(path, map_location="cpu", weights_only=weights_only).get(
            "hyper_parameters", {}
        )
    )
    hparams.pop("_instantiator", None)
    keys = tuple(k for k in hparams if not k.startswith("_"))
    replaced = [
        d
        for d in config_differences(config_model, hparams, keys, label="config")
        if not any(d.split(":", 1)[0] == o or d.startswith(o + ".") for o in _LINKED_OPTIONS)
    ]
    if replaced:
        rank_zero_warn(
            f"--ckpt_path {path}: the model is built with the checkpoint's options, which replace "
            f"the config's: " + "; ".join(replaced)
        )
    return hparams
