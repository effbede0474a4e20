"""Model families; importing a family registers its architectures."""
from . import resnet

__all__ = ["resnet"]
