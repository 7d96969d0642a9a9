"""What the loaders read, without TensorFlow: the list-file formats by file name, and the
largest image they decode by default.

The config (`tfsim.config`) names runs and states its defaults from here before TensorFlow is
imported; `tfsim.data.lists` and `tfsim.data.preprocess` use the same definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# The most pixels an image may have to be decoded (`data.max_pixels`, `export.max_pixels`).
# Real photos: 12 MP (phones), 24-45 MP (DSLRs), 48-50 MP (the largest phone sensors at full
# resolution). Decoding and resizing one image costs about 11 bytes per pixel at the peak (the
# uint8 image, its float32 copy, the antialiased resize): 50 MP is about 0.5 GB for one image,
# and the 144 MP that a 410 KB PNG can declare is 1.5 GB (bench/decode_memory.py). PIL's own
# limit (89 MP, about 1 GB per image, several per batch) is too much for a 2 GB server.
DEFAULT_MAX_PIXELS = 50_000_000

# List formats by the name of their file (`tfsim.data.lists`): format -> file names; "csv" is any `*.csv`.
LIST_FILES = {
    "stanford_online_products": ("Ebay_train.txt", "Ebay_test.txt", "Ebay_info.txt"),
    "inshop": ("list_eval_partition.txt",),
    "cub200": ("images.txt",),
    "tiny_imagenet": ("wnids.txt",),
}
FORMATS = ("*.csv (path,label[,split])", "Ebay_train.txt / Ebay_test.txt (Stanford Online Products)",
           "list_eval_partition.txt (In-Shop)", "images.txt (CUB-200-2011)", "wnids.txt (Tiny ImageNet)")


def list_format(path: str) -> Optional[str]:
    """The format of the list file at `path`, by its name: "csv", a published list's dataset
    ("stanford_online_products", "inshop", "cub200", "tiny_imagenet"), or None (not a list file)."""
    name = Path(path).name
    if Path(path).suffix.lower() == ".csv":
        return "csv"
    return next((fmt for fmt, names in LIST_FILES.items() if name in names), None)


def dataset_name(path: str) -> str:
    """The name runs on this list are named after: the published dataset, or a CSV's file name."""
    fmt = list_format(path)
    return fmt if fmt not in (None, "csv") else (Path(path).stem or "list")
