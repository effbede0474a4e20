"""Model families; importing a family registers its architectures."""
from . import channelvit, han, rcan, resnet

__all__ = ["channelvit", "han", "rcan", "resnet"]

from . import moc_lm  # noqa: E402

__all__ += ["moc_lm"]

from . import vqvae, var  # noqa: E402

__all__ += ["vqvae", "var"]
