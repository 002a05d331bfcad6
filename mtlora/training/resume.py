"""Resumable runs: a recent checkpoint at all times, ``--ckpt_path last`` that finds it, one folder per run.

* :class:`ResumeCheckpoint` writes ``<checkpoints>/last.ckpt`` every few minutes (or steps) and at
  every epoch end, whatever the validation schedule: Lightning's ``ModelCheckpoint(monitor=...,
  save_last=True)`` writes nothing before the monitored metric exists, so with validation every
  5 epochs a crash in epochs 0-4 lost everything.  The CLI adds one to every ``fit``.
* :func:`find_resume_checkpoint`: the newest complete checkpoint of the newest run (``last`` and
  top-k files alike); temporary files and unreadable files are skipped.
* :func:`prepare_resume`: the CLI's handling of ``--ckpt_path``: resolves ``last`` (loudly starting
  from scratch only when there is nothing to resume), keeps a resumed run in its own logger folder
  (so ``ModelCheckpoint`` restores its best-model tracking and the report sees one run), puts
  ``validate``/``test`` logs and results inside the run they evaluate, warns about options that
  changed since the checkpoint, and removes temporary files a killed save left behind.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers.csv_logs import CSVLogger, ExperimentWriter
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from mtlora.io.config import flatten_config
from mtlora.io.serialization import CheckpointError, checked_file
from mtlora.training.checkpointing import load_lightning_checkpoint

log = logging.getLogger(__name__)

LAST = "last.ckpt"
#: checkpoint key holding the run's command-line config (flat, primitive values), compared on resume
CONFIG_KEY = "mtlora_run_config"
#: temporary files of an interrupted atomic checkpoint write (``.<name>.<random>.tmp``)
TEMP_GLOB = ".*.tmp"
#: config options whose change on resume does not change the training (prefixes)
_NOT_COMPARED = (
    "ckpt_path",
    "config",
    "weights_only",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.init_args.num_workers",
)
_BATCH_KEYS = ("batch_size", "world_size", "accumulate_grad_batches", "devices", "num_nodes")


# ---------------------------------------------------------------------------------------------- files
def remove_orphaned_temp_files(folder: str | os.PathLike, older_than: float | None = None) -> list[Path]:
    """Delete temporary checkpoint files (``.*.tmp``) a killed write left in ``folder``.

    ``older_than`` (a ``time.time()``) spares files younger than that: a write in progress.
    """
    removed = []
    for path in Path(folder).glob(TEMP_GLOB):
        try:
            if path.is_file() and (older_than is None or path.stat().st_mtime < older_than):
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # finished (renamed) or removed meanwhile
            continue
    if removed:
        log.info("removed %d orphaned temporary checkpoint file(s) in %s", len(removed), folder)
    return removed


def _complete(path: Path) -> bool:
    try:
        checked_file(path, ("zip", "pickle"), "a checkpoint")
        return True
    except (CheckpointError, OSError):
        return False


def find_resume_checkpoint(folders: list[Path]) -> Path | None:
    """Newest complete ``*.ckpt`` in ``folders`` (last and top-k files alike), or None if there is none.

    Newest by modification time, so the most recently active run wins over an older, longer one.
    Raises a :class:`CheckpointError` when checkpoints exist but none is readable: resuming must
    never silently turn into a fresh start.
    """
    candidates = [p for folder in folders for p in Path(folder).glob("*.ckpt") if p.is_file()]
    candidates.sort(key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)
    skipped = []
    for path in candidates:
        if _complete(path):
            if skipped:
                rank_zero_warn(f"--ckpt_path last: skipped truncated or corrupt {', '.join(skipped)}")
            return path
        skipped.append(str(path))
    if skipped:
        raise CheckpointError(
            f"--ckpt_path last: every checkpoint found is truncated or corrupt: {', '.join(skipped)}; "
            "pass a readable one with --ckpt_path <file>"
        )
    return None


def _run_folder(ckpt: Path) -> Path | None:
    """``<run>`` of ``<run>/checkpoints/x.ckpt`` when ``<run>`` is a logger's run folder."""
    run = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not any(
        (run / f).exists() for f in ("hparams.yaml", "metrics.csv", "config.yaml")
    ):
        return None
    return run


# ---------------------------------------------------------------------------------------------- callback
class ResumeCheckpoint(Callback):
    """Keep ``last.ckpt`` no older than ``every_minutes`` / ``every_n_steps`` and write it at every epoch end.

    It goes to the folder of the run's ``ModelCheckpoint`` (``<run>/checkpoints`` by default),
    whose own ``save_last`` then keeps writing the same file.  Every checkpoint of the run also
    carries the run's config, so a resume can list what changed.

    Args:
        every_minutes: save when this much time passed since the last save (None: no time limit).
        every_n_steps: save every this many optimizer steps (None: not by steps).
        on_epoch_end: also save at the end of every training epoch.
    """

    def __init__(
        self, every_minutes: float | None = 5.0, every_n_steps: int | None = None, on_epoch_end: bool = True
    ) -> None:
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"ResumeCheckpoint: every_minutes must be > 0 or null, got {every_minutes}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"ResumeCheckpoint: every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_minutes = every_minutes
        self.every_n_steps = every_n_steps
        self.on_epoch_end = on_epoch_end
        #: the run's flat config (set by the CLI), stored in every checkpoint under CONFIG_KEY
        self.run_config: dict[str, Any] | None = None
        self.dirpath: Path | None = None
        self._saved_step = -1
        self._saved_at = time.monotonic()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after every setup(): a ModelCheckpoint's folder is resolved by now
        folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        self.dirpath = folders[0] if folders else Path(trainer.default_root_dir) / "checkpoints"
        if not folders and trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            self.dirpath = Path(
                logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints"
            )
        self._saved_step = trainer.global_step  # a resumed run does not re-save what it loaded
        self._saved_at = time.monotonic()
        if trainer.is_global_zero:
            remove_orphaned_temp_files(self.dirpath)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._saved_step or trainer.sanity_checking or trainer.fast_dev_run:
            return
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        # under DDP the clock is read on rank 0's terms (a collective), so only every 16th step
        if self.every_minutes is not None and (trainer.world_size == 1 or step % 16 == 0):
            late = time.monotonic() - self._saved_at >= 60 * self.every_minutes
            due = due or bool(trainer.strategy.broadcast(late))  # every rank saves, or none
        if due:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_epoch_end and not trainer.fast_dev_run:
            self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        assert self.dirpath is not None
        path = self.dirpath / LAST
        started = time.time()
        trainer.save_checkpoint(path)  # through the strategy's CheckpointIO: atomic, every rank joins
        self._saved_step, self._saved_at = trainer.global_step, time.monotonic()
        for cb in trainer.checkpoint_callbacks:
            # ModelCheckpoint(save_last) then overwrites this file instead of writing last-v1.ckpt
            if (
                isinstance(cb, ModelCheckpoint)
                and cb.save_last
                and cb.dirpath
                and Path(cb.dirpath) == self.dirpath
            ):
                cb.last_model_path = str(path)
        if trainer.is_global_zero:
            remove_orphaned_temp_files(self.dirpath, older_than=started)


# ---------------------------------------------------------------------------------------------- config drift
def flat_config(config: Any) -> dict[str, Any]:
    """A CLI config (jsonargparse Namespace or dict) as ``{"data.init_args.batch_size": 32, ...}``.

    Values are JSON-normalised (paths and other objects become strings), so the dict can be
    stored in a checkpoint that stays weights-only loadable.
    """
    as_dict = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    flat = flatten_config(json.loads(json.dumps(as_dict, default=str)))
    return {k: v for k, v in flat.items() if not k.startswith(_NOT_COMPARED)}


def config_drift(now: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """``"data.init_args.batch_size: checkpoint 2, now 4"`` for every option that changed."""
    keys = sorted(k for k in set(now) | set(stored) if not k.startswith(_NOT_COMPARED))
    return [
        f"{k}: checkpoint {stored.get(k)!r}, now {now.get(k)!r}" for k in keys if now.get(k) != stored.get(k)
    ]


def warn_config_drift(
    ckpt: str, now: Mapping[str, Any], checkpoint: Mapping[str, Any], model_hparams: Mapping
) -> None:
    """Warn, listing them, about options that differ from those the checkpoint was trained with."""
    from mtlora.io.config import config_differences

    if CONFIG_KEY in checkpoint:
        changes = config_drift(now, checkpoint[CONFIG_KEY])
    else:  # written without the CLI's config: compare what the model's hyper-parameters hold
        theirs = checkpoint.get("hyper_parameters", {})
        keys = tuple(k for k in set(model_hparams) | set(theirs) if not str(k).startswith("_"))
        changes = config_differences(model_hparams, theirs, keys, label="now")
    if not changes:
        return
    batch = any(c.split(":", 1)[0].endswith(_BATCH_KEYS) for c in changes)
    rank_zero_warn(
        f"resuming from {ckpt} with options that differ from the run's"
        + (
            " (the batch size changes the learning-rate scaling and which samples the resumed epoch skips)"
            if batch
            else ""
        )
        + ":\n  "
        + "\n  ".join(changes)
    )


# ---------------------------------------------------------------------------------------------- CLI
class _ContinuingWriter(ExperimentWriter):
    """CSVLogger writer that appends to a resumed run's ``metrics.csv`` (Lightning's deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(k for k in header if k)


def _logger_into(logger: Any, run: Path, sub: str | None = None) -> bool:
    """Point a versioned logger (CSV, TensorBoard) at ``run`` (or ``run/sub``) before it writes anything.

    Lightning's loggers log into ``<save_dir>/<name>/<version>``; these are set to the run's
    parts.  Other loggers, and a logger that already started writing, are left alone (False).
    """
    if not hasattr(logger, "_version") or getattr(logger, "_experiment", None) is not None:
        return False
    target = run if sub is None else run / sub
    saved = {
        a: getattr(logger, a) for a in ("_save_dir", "_root_dir", "_name", "_version") if hasattr(logger, a)
    }
    for attr in ("_save_dir", "_root_dir"):
        if attr in saved:
            setattr(logger, attr, str(run.parent.parent))
    logger._name, logger._version = run.parent.name, target.relative_to(run.parent).as_posix()
    if Path(logger.log_dir).resolve() != target.resolve():  # a logger that builds its folder otherwise
        for attr, value in saved.items():
            setattr(logger, attr, value)
        return False
    if isinstance(logger, CSVLogger) and sub is None and rank_zero_only.rank == 0:
        logger._experiment = _ContinuingWriter(log_dir=logger.log_dir)  # append to the run's metrics.csv
    return True


def prepare_resume(
    trainer: Trainer, subcommand: str, run_config: Any, config: Any, model: LightningModule | None
) -> None:
    """``--ckpt_path`` handling of the CLI (see the module docstring).

    Args:
        trainer: the instantiated Trainer (nothing logged yet).
        subcommand: ``fit``, ``validate``, ...
        run_config: the subcommand's instantiated config; ``ckpt_path`` is rewritten in place.
        config: the subcommand's parsed config (stored in checkpoints, compared on resume).
        model: the instantiated LightningModule (its hyper-parameters are compared when a
            checkpoint carries no config).
    """
    if subcommand not in ("fit", "validate", "test") or run_config is None:
        return
    now = flat_config(config) if config is not None else {}
    now["trainer.world_size"] = trainer.world_size
    if subcommand == "fit":
        resume = next((cb for cb in trainer.callbacks if isinstance(cb, ResumeCheckpoint)), None)
        if resume is None and trainer.checkpoint_callbacks:  # none: enable_checkpointing=false
            resume = ResumeCheckpoint()
            first_ckpt = next(
                (i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, ModelCheckpoint)), None
            )
            trainer.callbacks.insert(len(trainer.callbacks) if first_ckpt is None else first_ckpt, resume)
        if resume is not None:
            resume.run_config = now
    ckpt = run_config.get("ckpt_path")
    if ckpt == "last" and subcommand == "fit":
        ckpt = run_config["ckpt_path"] = _resolve_last(trainer)
    if not ckpt or ckpt in ("last", "best", "hpc") or str(ckpt).startswith("registry:") or "://" in str(ckpt):
        return
    path = Path(ckpt)
    run = _run_folder(path)
    if subcommand == "fit":
        weights_only = run_config.get("weights_only") is not False
        checkpoint = load_lightning_checkpoint(path, map_location="cpu", weights_only=weights_only)
        warn_config_drift(str(path), now, checkpoint, dict(getattr(model, "hparams", {}) or {}))
        # the newest checkpoint of its run continues that run; an older one starts a new run from it
        newest = run is not None and find_resume_checkpoint([path.parent]) == path
        if newest and any([_logger_into(lg, run) for lg in trainer.loggers]):
            log.info("resuming %s in its run folder %s", path, run)
            for cb in trainer.callbacks:  # keep the run's config.yaml; the resumed command's goes next to it
                if isinstance(cb, SaveConfigCallback) and cb.config_filename == "config.yaml":
                    cb.config_filename = "config_resumed.yaml"
    elif run is not None:
        sub = f"{subcommand}-{path.stem}"
        if any([_logger_into(lg, run, sub) for lg in trainer.loggers]):
            log.info("%s of %s: logs and results go to %s", subcommand, path, run / sub)


def _resolve_last(trainer: Trainer) -> str | None:
    """``--ckpt_path last`` -> the newest checkpoint of the run, or None (warned) when there is none."""
    fixed = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    root = getattr(trainer.logger, "root_dir", None) if trainer.logger is not None else None
    if fixed:
        folders, where = fixed, ", ".join(map(str, fixed))
    elif root is not None:
        folders, where = sorted(Path(root).glob("*/checkpoints")), f"{root}/*/checkpoints"
    else:
        folders, where = (
            [Path(trainer.default_root_dir) / "checkpoints"],
            f"{trainer.default_root_dir}/checkpoints",
        )
    if rank_zero_only.rank == 0:
        for folder in folders:  # a kill during a save leaves its temporary file
            remove_orphaned_temp_files(folder)
    found = find_resume_checkpoint(folders)
    if found is None:
        msg = f"--ckpt_path last: no checkpoint under {where}: TRAINING STARTS FROM SCRATCH"
        log.warning(msg)
        rank_zero_warn(msg)
        return None
    log.info("--ckpt_path last: resuming from %s", found)
    return str(found)
