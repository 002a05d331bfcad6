"""A folder of unlabelled images for ``mtlora predict``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mtlora.data.datamodule import MultiTaskDataModule, collate_multitask
from mtlora.data.io import DataError, DataRootNotFoundError, read_rgb
from mtlora.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolderDataset(Dataset):
    """Every image file of a folder, resized to the network input and ImageNet-normalised."""

    def __init__(self, files: list[Path], img_size: int) -> None:
        self.files, self.img_size = files, img_size
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        rgb = read_rgb(path)  # raises DataError naming the file
        resized = cv2.resize(rgb, (self.img_size, self.img_size), interpolation=cv2.INTER_CUBIC)
        image = ((resized.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "meta": {"id": path.stem, "size": rgb.shape[:2], "path": str(path)},
        }


class ImageFolderDataModule(MultiTaskDataModule):
    """Images of ``root`` (no labels) to predict on with a trained model.

    Args:
        root: folder with image files (searched non-recursively).
        tasks: the tasks the model was trained on (same order as in training).
        semseg_classes: class count of the training data set (PASCAL 21, NYUD 40).
    """

    def __init__(
        self,
        root: str,
        tasks: list[str],
        semseg_classes: int = 21,
        img_size: int = 448,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            tasks=tasks, batch_size=batch_size, num_workers=num_workers, img_size=img_size, augment=False
        )
        self.root = Path(root).expanduser()
        self._semseg_classes = int(semseg_classes)

    @property
    def semseg_classes(self) -> int:
        return self._semseg_classes

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataRootNotFoundError(f"image folder {self.root} does not exist (data.root)")
        files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "predict"):
            raise DataError("ImageFolderDataModule has no labels: use it with `mtlora predict` only")

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            ImageFolderDataset(self.files(), self.img_size),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_multitask,
        )
