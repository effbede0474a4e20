"""Model families; importing a family registers its architectures."""
from . import channelvit, han, rcan, resnet

__all__ = ["channelvit", "han", "rcan", "resnet"]
