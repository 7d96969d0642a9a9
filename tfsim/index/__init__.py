"""Searching a gallery of embeddings: float search (`float_search`: ScaNN, `GalleryIndex`),
Hamming search of binary codes (`hamming`), self-tuning of the search settings (`autotune`), the
approximate search's quality against exact (`quality`), and the index folder on disk (`storage`:
written atomically, checked when read, repaired after a crash)."""

from tfsim.index.float_search import GalleryIndex, build
from tfsim.index.storage import load, save

__all__ = ["GalleryIndex", "build", "load", "save"]
