"""LightningDataModules and image helpers. ``DATAMODULES`` maps config names to classes."""
from .classification import DigitsDataModule, ImageFolderDataModule
from .images import read_image, write_image
from .imresize import imresize
from .multichannel import MultiChannelFolderDataModule
from .multichannel_digits import MultiChannelDigitsDataModule
from .so2sat import So2SatDataModule
from .super_resolution import SRFolderDataModule, SRSampleDataModule
from .text import TextDataModule
from .tokenizers import get_tokenizer

DATAMODULES = {
    "digits": DigitsDataModule,
    "image_folder": ImageFolderDataModule,
    "sr_samples": SRSampleDataModule,
    "sr_folder": SRFolderDataModule,
    "multichannel_folder": MultiChannelFolderDataModule,
    "multichannel_digits": MultiChannelDigitsDataModule,
    "so2sat": So2SatDataModule,
    "text": TextDataModule,
}

__all__ = ["DATAMODULES", "DigitsDataModule", "ImageFolderDataModule", "MultiChannelDigitsDataModule",
           "MultiChannelFolderDataModule", "SRFolderDataModule", "SRSampleDataModule", "So2SatDataModule",
           "imresize", "read_image", "write_image", "TextDataModule", "get_tokenizer"]
