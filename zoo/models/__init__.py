"""Model families; importing a family registers its architectures."""
from . import han, rcan, resnet

__all__ = ["han", "rcan", "resnet"]
