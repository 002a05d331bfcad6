"""A folder of unlabelled images for ``mtlora predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.io import DataError, DataRootNotFoundError, read_rgb
from mtlora.data.loaders import collate_multitask
from mtlora.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Scale ``rgb`` so its longer side is ``size`` and pad it to ``size x size`` (bottom/right).

    The network needs a square input; padding instead of stretching keeps the aspect ratio, and
    the returned content size ``(h, w)`` says which top-left part of the outputs is the image.
    Padding is zero in the returned float array, i.e. the ImageNet mean colour once normalised.
    """
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(rgb, (w, h), interpolation=interpolation) if (h, w) != (height, width) else rgb
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :h, :w] = ((resized.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    return out, (h, w)


class ImageFolderDataset(Dataset):
    """Image files letterboxed to the network input and ImageNet-normalised.

    Each sample's ``meta`` holds ``id`` (the file name, extension included, so ``x.jpg`` and
    ``x.png`` stay apart), ``size`` (original ``h, w`` after EXIF orientation), ``content``
    (the image's ``h, w`` inside the padded input), ``path`` and ``error``: a file that cannot
    be read gives a blank image with the reason in ``error`` instead of stopping the run, and
    the prediction writer reports and skips it.
    """

    def __init__(self, files: list[Path], img_size: int) -> None:
        self.files, self.img_size = files, img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        meta = {"id": path.name, "size": (0, 0), "content": (0, 0), "path": str(path), "error": None}
        try:
            rgb = read_rgb(path, upright=True)  # raises DataError naming the file
        except DataError as err:  # reported (once, in the main process) by the prediction writer
            meta["error"] = str(err)
            return {"image": torch.zeros(3, self.img_size, self.img_size), "meta": meta}
        image, meta["content"] = letterbox(rgb, self.img_size)
        meta["size"] = rgb.shape[:2]
        return {"image": torch.from_numpy(image), "meta": meta}


class ImageFolderDataModule(MultiTaskDataModule):
    """Images of ``root`` (no labels) to predict on with a trained model.

    With ``mtlora predict --ckpt_path``, options left unset (``tasks``, ``semseg_classes``,
    ``img_size``) are taken from the checkpoint.

    Args:
        root: folder with image files (searched non-recursively).
        tasks: the tasks the model was trained on, in training order (default: the checkpoint's).
        semseg_classes: class count of the training data set, e.g. PASCAL 21, NYUD 40 (default:
            the checkpoint's).
        img_size: side of the square network input (default: the checkpoint's); images are
            scaled to fit it with their aspect ratio kept, then padded.
        Other arguments (loader options): see :class:`~mtlora.data.datamodule.MultiTaskDataModule`;
        augmentation is always off.
    """

    def __init__(
        self,
        root: str,
        tasks: list[str] | None = None,
        semseg_classes: int | None = None,
        img_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        missing = [name for name, value in (("tasks", tasks), ("img_size", img_size)) if value is None]
        if tasks is not None and "semseg" in tasks and semseg_classes is None:
            missing.append("semseg_classes")
        if missing:
            raise ValueError(
                f"ImageFolderDataModule: {', '.join(missing)} not set; give them (data.{missing[0]}) or "
                "run `mtlora predict --ckpt_path <checkpoint>`, which reads them from the checkpoint"
            )
        super().__init__(
            tasks=tasks,
            batch_size=batch_size,
            num_workers=num_workers,
            img_size=img_size,
            augment=False,
            **kwargs,
        )
        self.root = Path(root).expanduser()
        self._semseg_classes = int(semseg_classes) if semseg_classes is not None else 0

    @property
    def semseg_classes(self) -> int:
        return self._semseg_classes

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataRootNotFoundError(f"image folder {self.root} does not exist (data.root)")
        # not is_dir(): a broken link or unreadable entry is listed, then reported and skipped
        files = sorted(
            p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()
        )
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
