"""Model families; importing a family registers its architectures."""
from . import channelvit, han, moc_lm, rcan, resnet, var, vqvae

__all__ = ["channelvit", "han", "moc_lm", "rcan", "resnet", "var", "vqvae"]
