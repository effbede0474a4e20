"""LightningDataModules and image helpers. ``DATAMODULES`` maps config names to classes."""
from .classification import DigitsDataModule, ImageFolderDataModule
from .images import read_image, write_image
from .imresize import imresize
from .super_resolution import SRFolderDataModule, SRSampleDataModule

DATAMODULES = {
    "digits": DigitsDataModule,
    "image_folder": ImageFolderDataModule,
    "sr_samples": SRSampleDataModule,
    "sr_folder": SRFolderDataModule,
}

__all__ = ["DATAMODULES", "DigitsDataModule", "ImageFolderDataModule", "SRFolderDataModule", "SRSampleDataModule",
           "imresize", "read_image", "write_image"]
