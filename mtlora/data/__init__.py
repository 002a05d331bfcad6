"""Data: DataModules for PASCAL-Context, NYUD-v2 and synthetic scenes, transforms and checks.

Every DataModule produces the batch convention of :mod:`mtlora.tasks` plus
``batch["meta"] = {"id": [...], "size": [(h, w), ...]}`` (original image sizes).
"""

from mtlora.data.check import DataCheckReport, check_data_folder, format_report
from mtlora.data.datamodule import MultiTaskDataModule
from mtlora.data.dataset import MultiTaskDataset
from mtlora.data.image_folder import ImageFolderDataModule
from mtlora.data.io import DataError, DataRootNotFoundError
from mtlora.data.loaders import collate_multitask
from mtlora.data.nyud import NYUDDataModule
from mtlora.data.pascal_context import PascalContextDataModule
from mtlora.data.synthetic import SyntheticDataModule
from mtlora.data.transforms import MultiTaskTransform

__all__ = [
    "DataCheckReport",
    "DataError",
    "DataRootNotFoundError",
    "ImageFolderDataModule",
    "MultiTaskDataModule",
    "MultiTaskDataset",
    "MultiTaskTransform",
    "NYUDDataModule",
    "PascalContextDataModule",
    "SyntheticDataModule",
    "check_data_folder",
    "collate_multitask",
    "format_report",
]
