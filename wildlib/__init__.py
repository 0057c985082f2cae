"""wildlib: helpers behind the compressed-wildlife-detection notebooks."""

from .classes import CLASSES, PAPER_COUNTS

__version__ = "0.1.0"
__all__ = ["CLASSES", "PAPER_COUNTS", "__version__"]
