"""LightningDataModules. ``DATAMODULES`` maps config names to classes."""
from .classification import DigitsDataModule, ImageFolderDataModule

DATAMODULES = {"digits": DigitsDataModule, "image_folder": ImageFolderDataModule}

__all__ = ["DATAMODULES", "DigitsDataModule", "ImageFolderDataModule"]
