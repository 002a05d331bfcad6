"""Seeded, resumable data loading shared by every data set: collate, worker seeding, sampler.

Why: every DataLoader worker and DDP rank needs its own reproducible augmentation stream
(albumentations keeps an RNG inside each Compose that forked workers would otherwise share), and a
training run killed mid-epoch must resume with exactly the remaining batches and the same
augmentations whatever ``num_workers`` is.  :class:`ResumableSampler` derives the order from
``(seed, epoch)`` and each sample's augmentation seed from ``(seed, epoch, index)``;
:class:`ResumableDataLoader` exposes its position (epoch, batches consumed) to Lightning's
checkpoints.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torch.utils.data._utils.collate import default_collate

__all__ = [
    "ResumableDataLoader",
    "ResumableSampler",
    "collate_multitask",
    "derive_seed",
    "distributed_rank_world",
    "seed_worker",
]

log = logging.getLogger(__name__)


def collate_multitask(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors with the default collate; keep ``meta`` as a dict of lists."""
    metas = [sample.get("meta", {}) for sample in samples]
    batch = default_collate([{k: v for k, v in sample.items() if k != "meta"} for sample in samples])
    if metas[0]:
        batch["meta"] = {key: [meta[key] for meta in metas] for key in metas[0]}
    return batch


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed, rank, worker, epoch draw)."""
    return int(
        np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


def seed_worker(worker_id: int, base_seed: int = 0, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible streams per worker and per rank.

    ``get_worker_info().seed`` is ``base + worker_id`` where ``base`` is drawn from the
    DataLoader's generator each time an iterator starts, so streams also differ between epochs
    (non-persistent workers) while staying reproducible from the DataModule seed.
    """
    # NB: no cv2.setNumThreads() here: reconfiguring OpenCV's thread pool inside a forked worker
    # whose parent already used that pool deadlocks (seen with opencv-python 5.0).
    info = get_worker_info()
    torch_seed = info.seed if info is not None else worker_id
    seed = derive_seed(base_seed, rank, worker_id, torch_seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    dataset = info.dataset if info is not None else None
    if dataset is not None and hasattr(dataset, "set_random_seed"):
        dataset.set_random_seed(seed)


class ResumableSampler(DistributedSampler):
    """Training order from ``(seed, epoch)``, one shard per rank, able to start mid-epoch.

    Yields ``(index, augmentation seed)``: the seed is derived from ``(seed, epoch, index)``, so a
    sample's augmentation depends neither on which worker loads it nor on what was loaded
    before, which is what makes skipping the consumed part of an epoch exact.  Being a
    ``DistributedSampler``, Lightning keeps it under DDP instead of wrapping it.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # samples of this rank's shard to skip, consumed by the next __iter__

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        start, self.start = self.start, 0
        for index in list(super().__iter__())[start:]:
            yield index, derive_seed(self.seed, self.epoch, index)


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`ResumableSampler` whose position Lightning checkpoints.

    ``state_dict()`` is ``{"epoch", "batches"}`` (batches handed out in the current epoch);
    after ``load_state_dict()`` the next iteration of that epoch skips those batches (in the
    sampler, so no sample is loaded twice) while ``len()`` stays the full epoch, as Lightning's
    loop expects.  A restored position for another epoch is ignored.  Iteration starts lazily,
    so Lightning's ``set_epoch`` always lands before the sampler is read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader needs a ResumableSampler, got {type(self.sampler).__name__}"
            )
        self._consumed = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Any]:
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        if skip:
            log.info("resuming epoch %d of the training data after %d batches", self.sampler.epoch, skip)
        self.sampler.start = skip * self.batch_size
        self._consumed = skip
        for batch in super().__iter__():
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self._consumed)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


def distributed_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
