"""One data set split as a torch Dataset: decode a sample by id, transform it, skip broken ones.

A concrete data set supplies the sample ids of a split and a picklable reader
``read(sample_id) -> decoded sample`` (numpy arrays at the original resolution, see
:mod:`mtlora.data.transforms`); :class:`SampleFile` lists the files a sample needs so that
``mtlora data check`` can inspect a folder with the same decoders training uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from mtlora.data.device_augment import DevicePrep
from mtlora.data.io import DataError
from mtlora.data.transforms import MultiTaskTransform

__all__ = ["MultiTaskDataset", "Reader", "SampleFile"]

log = logging.getLogger(__name__)

Reader = Callable[[str], dict[str, np.ndarray]]


@dataclass(frozen=True)
class SampleFile:
    """One file a sample needs, as used by :func:`mtlora.data.check.check_data_folder`.

    Attributes:
        kind: short name of the file kind ("image", "semseg", "label_map", ...).
        candidates: possible paths, the first existing one is used (e.g. VOC12 before
            pascal-context semseg).
        tasks: the tasks that need this file.
        read: decoder returning an array whose first two dims are ``H x W`` (or None when the
            file has no size of its own, e.g. a PASCAL-Part file without objects).
        is_image: True for the image itself (the size every label must match).
    """

    kind: str
    candidates: tuple[Path, ...]
    tasks: tuple[str, ...]
    read: Callable[[Path], np.ndarray | None]
    is_image: bool = False

    @property
    def path(self) -> Path:
        """The first existing candidate, else the preferred (first) one."""
        for candidate in self.candidates:
            if candidate.exists():
                return candidate
        return self.candidates[0]


class MultiTaskDataset(Dataset):
    """Ids + reader + transform, with optional skipping of broken samples.

    Args:
        ids: sample ids of the split.
        read: picklable callable decoding one sample id (raises :class:`DataError`).
        transform: turns the decoded sample into tensors.
        skip_broken: when a sample cannot be decoded, log it and return the next readable
            sample instead of raising.  The number of skipped samples is counted across
            DataLoader workers (shared-memory counter) and exposed as :attr:`skipped_count`.
        name: used in log messages (e.g. "pascal-context/train").
    """

    def __init__(
        self,
        ids: Sequence[str],
        read: Reader,
        transform: MultiTaskTransform | DevicePrep,
        skip_broken: bool = False,
        name: str = "",
    ) -> None:
        if not ids:
            raise DataError(f"{name or 'data set'}: no samples")
        self.ids = list(ids)
        self.read = read
        self.transform = transform
        self.skip_broken = skip_broken
        self.name = name
        self._skipped_counter = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.skipped: dict[str, str] = {}  # id -> reason, for the samples skipped in THIS process

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def skipped_count(self) -> int:
        """Number of broken samples skipped so far, summed over all worker processes."""
        return int(self._skipped_counter.item())

    def set_random_seed(self, seed: int) -> None:
        """Re-seed the augmentation stream (called per worker by :func:`seed_worker`)."""
        self.transform.set_random_seed(seed)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):  # (index, augmentation seed) from ResumableSampler
            index, sample_seed = index
            self.transform.set_random_seed(sample_seed)
        if not self.skip_broken:
            return self._load(index)
        for offset in range(len(self.ids)):
            candidate = (index + offset) % len(self.ids)
            sample_id = self.ids[candidate]
            if sample_id in self.skipped:
                continue
            try:
                return self._load(candidate)
            except DataError as err:
                self.skipped[sample_id] = str(err)
                self._skipped_counter += 1
                log.warning(
                    "%s: skipping broken sample %s (%s); %d skipped so far",
                    self.name,
                    sample_id,
                    err,
                    self.skipped_count,
                )
        raise DataError(f"{self.name}: every sample is broken ({len(self.ids)} tried)")

    def _load(self, index: int) -> dict[str, Any]:
        sample_id = self.ids[index]
        decoded = self.read(sample_id)
        height, width = decoded["image"].shape[:2]
        try:
            sample: dict[str, Any] = self.transform(decoded)
        # albumentations shape checks, missing keys, OpenCV size limits (e.g. warps beyond 32767 px)
        except (ValueError, KeyError, cv2.error) as err:
            raise DataError(f"{self.name}: sample {sample_id}: {type(err).__name__}: {err}") from err
        sample["meta"] = {"id": sample_id, "size": (int(height), int(width))}
        return sample
