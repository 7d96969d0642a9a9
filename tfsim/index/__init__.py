"""ScaNN index of a gallery: build, save (atomically), load, search."""

from tfsim.index.scann_index import GalleryIndex, build, load, save

__all__ = ["GalleryIndex", "build", "load", "save"]
