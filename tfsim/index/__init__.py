"""Searching a gallery of embeddings: `Index` (`api`: build, search, save, load: the public face),
float search (`float_search`: ScaNN, `GalleryIndex`), Hamming search of binary codes (`hamming`),
self-tuning of the search settings (`autotune`), the approximate search's quality against exact
(`quality`), and the index folder on disk (`storage`: written atomically, checked when read,
repaired after a crash).

Public (`__all__`, listed in `tfsim.PUBLIC_API`): `Index`, `ShardedIndex` (parts searched by
fan-out and merge); and for the index command,
`build_options` (`float_search.build`'s arguments from a config's `index` section) and
`read_meta` (an index folder's checked index.json).
"""

from tfsim.index.api import Index, ShardedIndex
from tfsim.index.float_search import build_options
from tfsim.index.storage import read_meta

__all__ = ["Index", "ShardedIndex", "build_options", "read_meta"]
