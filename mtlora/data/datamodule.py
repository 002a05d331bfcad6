"""The DataModule base every data set builds on: splits, transforms, loaders, device augmentation.

A concrete data set supplies two things: the sample ids of a split and a picklable reader
``read(sample_id) -> decoded sample`` (numpy arrays at the original resolution, see
:mod:`mtlora.data.transforms`).  This module turns them into DataLoaders that produce the batch
convention of :mod:`mtlora.tasks`, plus ``batch["meta"] = {"id": [...], "size": [(h, w), ...]}``.

Why the loaders look the way they do:

* Every DataLoader worker and every DDP rank gets its own reproducible augmentation stream.
  albumentations keeps its own RNG inside each Compose, which forked workers inherit
  unchanged, so without re-seeding all workers would apply the same augmentations.
* Under DDP, val/test use :class:`UnrepeatedDistributedSampler`: the default
  DistributedSampler pads the last shard with duplicated samples, which changes the metrics.
  Lightning keeps a sampler that already is a DistributedSampler.
* Shuffling and worker seeds come from a generator seeded with ``seed`` (and the rank), so a
  data order is reproducible from the DataModule arguments alone.
* The training loader is resumable mid-epoch: :class:`~mtlora.data.loaders.ResumableSampler` derives the order from
  ``(seed, epoch)`` and gives every sample its own augmentation seed ``(seed, epoch, index)``,
  and :class:`~mtlora.data.loaders.ResumableDataLoader` exposes ``state_dict()``/``load_state_dict()`` (epoch and
  batches consumed), which Lightning stores in its checkpoints.  A run killed mid-epoch and
  resumed with ``--ckpt_path last`` skips exactly the consumed batches and draws the same
  augmentations, whatever ``num_workers`` is.
* With ``augment_on="device"`` a training batch leaves the loader raw (uint8, zero-padded, with
  each sample's drawn parameters) and :meth:`MultiTaskDataModule.on_after_batch_transfer` turns
  it into the batch convention on the training device (:mod:`mtlora.data.device_augment`).
* A ``data.root`` holding a prepared data set (:mod:`mtlora.data.prepared`) is read from its
  LitData chunks instead of the raw files, with the same sample ids and decoded samples.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Sampler

from mtlora.data.dataset import MultiTaskDataset, Reader, SampleFile
from mtlora.data.device_augment import AUGMENT_KEY, DeviceAugment, DevicePrep
from mtlora.data.io import DataError
from mtlora.data.loaders import (
    ResumableDataLoader,
    ResumableSampler,
    collate_multitask,
    derive_seed,
    distributed_rank_world,
    seed_worker,
)
from mtlora.data.transforms import AugmentOn, BorderLabel, EvalResolution, MultiTaskTransform
from mtlora.tasks import TASKS, validate_tasks

__all__ = ["MultiTaskDataModule"]

log = logging.getLogger(__name__)

_ROLE_CODES = {"train": 0, "val": 1, "test": 2, "predict": 3}  # fixed codes: str hash() is salted per process


class MultiTaskDataModule(LightningDataModule):
    """Base DataModule: loaders, seeding and the task/channel bookkeeping.

    Subclasses implement :meth:`semseg_classes`, :attr:`available_tasks`, :meth:`split_ids`
    and :meth:`make_reader` (and optionally :meth:`sample_files` for the data check).

    Args:
        tasks: ordered task list (validated against :mod:`mtlora.tasks`).
        batch_size: training batch size (evaluation uses the same, or 1 with
            ``eval_resolution="original"``).
        num_workers: DataLoader worker processes.
        img_size: side of the square network input.
        pin_memory: pin host memory (only used when CUDA is available).
        persistent_workers: keep workers alive between epochs (only when num_workers > 0).
        seed: seed of shuffling and augmentation streams.
        augment: random training augmentation on/off.
        flip: random horizontal flip (training).
        rotation: rotation half-range in degrees (training).
        scale_range: zoom range (training).
        border_label: "ignore" (255) or "official" (0) for pixels created by the warp border.
        eval_resolution: "resized" (labels at img_size², official protocol) or "original".
        skip_broken: skip unreadable samples instead of raising (counted and logged).
        augment_on: where the training augmentation runs: "device" (workers only decode;
            the warps run batched on the training device after the transfer) or "cpu".
    """

    #: Tasks this data set can provide; subclasses override.
    available_tasks: tuple[str, ...] = tuple(TASKS)
    #: Split used for validation / testing / prediction.
    val_split: str = "val"
    test_split: str = "val"
    #: ``data.root`` as given (kept as a string so URIs like ``s3://...`` survive); subclasses
    #: reading a folder set it, and a root holding a prepared-data manifest is read from there.
    data_uri: str | None = None

    def __init__(
        self,
        tasks: list[str],
        batch_size: int = 32,
        num_workers: int = 4,
        img_size: int = 448,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        rotation: float = 20.0,
        scale_range: tuple[float, float] = (0.75, 1.25),
        border_label: BorderLabel = "ignore",
        eval_resolution: EvalResolution = "resized",
        skip_broken: bool = False,
        augment_on: AugmentOn = "device",
    ) -> None:
        super().__init__()
        if augment_on not in ("device", "cpu"):
            raise ValueError(f"augment_on must be 'device' or 'cpu', got {augment_on!r}")
        self.augment_on = augment_on
        self.tasks = validate_tasks(tasks)
        unsupported = [task for task in self.tasks if task not in self.available_tasks]
        if unsupported:
            raise ValueError(
                f"tasks: {unsupported} not available in {type(self).__name__}; "
                f"available: {list(self.available_tasks)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.img_size = img_size
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed
        self.augment = augment
        self.skip_broken = skip_broken
        self.eval_resolution = eval_resolution
        self.transform_options: dict[str, Any] = {
            "flip": flip,
            "rotation": rotation,
            "scale_range": tuple(scale_range) if scale_range is not None else None,
            "scale_choices": None,
            "border_label": border_label,
        }
        self.datasets: dict[str, MultiTaskDataset] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_resume: dict[str, int] | None = None  # loader position restored from a checkpoint
        self.build_transform(train=True)  # fail on bad augmentation options now, not in a worker

    # --- what subclasses provide ----------------------------------------------------------------
    def check_root(self) -> None:
        """Fail with where the data is expected, if the data folder is missing (data sets on disk)."""

    def prepare_data(self) -> None:
        # runs once per node before setup: a missing folder fails here, naming where data goes
        self.check_root()

    @property
    def semseg_classes(self) -> int:
        """Number of semantic classes of this data set."""
        raise NotImplementedError

    def split_ids(self, split: str) -> list[str]:
        """Sample ids of a split (raises :class:`DataError` when the split file is missing)."""
        raise NotImplementedError

    def make_reader(self, split: str) -> Reader:
        """Picklable callable decoding one sample id of ``split`` for :attr:`tasks`."""
        raise NotImplementedError

    def data_splits(self) -> list[str]:
        """Splits that exist on disk for this data set (used by the data check)."""
        return ["train", "val"]

    def sample_files(self, sample_id: str) -> list[SampleFile]:
        """Files one sample needs for :attr:`tasks` (empty for generated data)."""
        return []

    def describe_root(self) -> str:
        """Where the data comes from, for reports."""
        return getattr(self, "root", type(self).__name__)

    # --- public -----------------------------------------------------------------------------
    @property
    def task_channels(self) -> dict[str, int]:
        """Output channels per task, in task order (semseg = class count of this data set)."""
        return {
            task: (self.semseg_classes if TASKS[task].channels is None else int(TASKS[task].channels))
            for task in self.tasks
        }

    @property
    def skipped_count(self) -> int:
        """Broken samples skipped so far over all splits and workers (``skip_broken=True``)."""
        return sum(dataset.skipped_count for dataset in self.datasets.values())

    def build_transform(self, train: bool) -> MultiTaskTransform | DevicePrep:
        """The transform of a training (augmented) or evaluation split.

        With ``augment_on="device"`` training samples only get their parameters drawn here;
        :meth:`on_after_batch_transfer` applies them to the batch on the device.
        """
        if train and self.augment_on == "device":
            options = self.transform_options
            return DevicePrep(
                self.tasks,
                augment=self.augment,
                flip=options["flip"],
                rotation=options["rotation"],
                scale_range=options["scale_range"],
                scale_choices=options["scale_choices"],
                seed=self.seed,
            )
        return MultiTaskTransform(
            self.tasks,
            self.img_size,
            augment=train and self.augment,
            # training batches always stack labels at img_size²; "original" is for evaluation
            eval_resolution="resized" if train else self.eval_resolution,
            seed=self.seed,
            **self.transform_options,
        )

    @property
    def prepared(self) -> dict[str, Any] | None:
        """Manifest of the prepared data set at :attr:`data_uri`, None for a raw folder."""
        if not hasattr(self, "_prepared"):
            from mtlora.data.prepared import check_manifest, load_manifest

            manifest = load_manifest(self.data_uri) if self.data_uri is not None else None
            if manifest is not None:
                check_manifest(manifest, self.data_uri, type(self).__name__, self.tasks)
            self._prepared = manifest
        return self._prepared

    def build_dataset(self, split: str, train: bool) -> MultiTaskDataset:
        """Dataset of one split with the training or evaluation transform."""
        if self.prepared is not None:
            from mtlora.data.prepared import prepared_split

            compact = train and self.augment_on == "device"  # normals decoded on the device
            ids, read = prepared_split(self.prepared, self.data_uri, split, self.tasks, compact)
        else:
            ids, read = self.split_ids(split), self.make_reader(split)
        return MultiTaskDataset(
            ids,
            read,
            self.build_transform(train),
            skip_broken=self.skip_broken,
            name=f"{type(self).__name__}/{split}",
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (fit: train + val; validate; test; predict)."""
        wanted = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
        }.get(stage or "", ["train", "val", "test", "predict"])
        for role in wanted:
            if role in self.datasets:
                continue
            split = {"train": "train", "val": self.val_split}.get(role, self.test_split)
            self.datasets[role] = self.build_dataset(split, train=role == "train")

    def teardown(self, stage: str | None = None) -> None:
        if self.skipped_count:
            log.warning("%s: %d broken samples were skipped", type(self).__name__, self.skipped_count)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True, drop_last=True)
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
            self._train_resume = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Position of the training loader in its epoch; Lightning stores it in checkpoints.

        Lightning also stores the loader's own state, but restores it only when it builds the
        loader after the checkpoint is read, and ``trainer.estimated_stepping_batches`` (used by
        the LR schedule) builds it before.  The DataModule's state is restored first, so the
        position reaches the loader either way.
        """
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_resume = state_dict.get("train_loader")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Run the device-side training augmentation on a batch that already is on the device."""
        if isinstance(batch, dict) and AUGMENT_KEY in batch:
            augment = DeviceAugment(self.tasks, self.img_size, self.transform_options["border_label"])
            return augment(batch)
        return batch

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, drop_last=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False, drop_last=False)

    # --- loaders ------------------------------------------------------------------------------
    def _loader(self, role: str, shuffle: bool, drop_last: bool) -> DataLoader:
        if role not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(role, role))
        dataset = self.datasets[role]
        rank, world = distributed_rank_world()
        batch_size = self.batch_size
        if role != "train" and self.eval_resolution == "original":
            batch_size = 1  # labels keep their own size per image: no stacking across images
        if drop_last and len(dataset) < batch_size:
            raise DataError(
                f"{type(self).__name__}: the training split has {len(dataset)} samples, fewer than "
                f"batch_size={batch_size}; with drop_last there would be no batch"
            )
        sampler: Sampler | None = None
        if role != "train" and world > 1:
            # Lightning's UnrepeatedDistributedSampler: no padding with duplicated samples.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, rank, _ROLE_CODES[role]))
        if self.num_workers == 0:
            dataset.set_random_seed(derive_seed(self.seed, rank, _ROLE_CODES[role], 1 << 20))
        loader_class = DataLoader
        if shuffle:  # training: order from (seed, epoch), resumable mid-epoch (same order on every rank)
            shuffle_seed = derive_seed(self.seed, _ROLE_CODES[role]) % (1 << 62)
            sampler = ResumableSampler(dataset, world, rank, shuffle_seed)
            loader_class = ResumableDataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=getattr(dataset.transform, "collate", collate_multitask),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=partial(seed_worker, base_seed=self.seed, rank=rank) if self.num_workers else None,
            generator=generator,
        )
