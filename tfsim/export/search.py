"""Query an export: embed an image with the SavedModel, search its ScaNN index, draw the result.

`search_image(model_dir, image_path, k)` uses only artifacts on disk: the exported
SavedModel (`serving_default`, image bytes in) and the index stored inside the
export (or another index it built), so what it shows is what a served model would return.
The model is never one named inside the index (`tfsim.export.identity.index_model`).
`render_grid` draws the picture the image-similarity literature shows: the query on
the left, the k nearest gallery images to its right, each labelled with its class
and score. A gallery image identical to the query (a query taken from the gallery finds
itself first) is marked as such, in the printed list and in the grid.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

import tensorflow as tf

from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import escape_name, size_problem
from tfsim.errors import UserInputError, tf_error_reason
from tfsim.export.embed import export_max_pixels
from tfsim.export.identity import index_model
from tfsim.export.saved_model import META_DIR, read_export
from tfsim.index import storage


@dataclasses.dataclass
class SearchResult:
    """Nearest gallery items of one query image, best first."""

    query_path: Path
    query_image: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    ids: list[str]
    labels: list[str]
    images: list[np.ndarray]
    gallery_size: int = 0  # items in the index (fewer results than asked when it holds fewer)
    # Per result: the same image as the query (identical pixels, e.g. the query file itself).
    same_as_query: list[bool] = dataclasses.field(default_factory=list)


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two decoded images have identical RGB pixels (grey and RGB copies of one picture
    compare equal)."""
    def rgb(pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        return np.broadcast_to(pixels[..., :3], pixels.shape[:2] + (3,))

    a, b = rgb(a), rgb(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def read_query_image(path: os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, np.ndarray]:
    """The file's bytes and its decoded RGB pixels; a clear error if it is not an image, or if its
    header declares more than `max_pixels` pixels (checked before anything is decoded)."""
    from PIL import Image, UnidentifiedImageError  # lazy: PIL only for query images and grids

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Invalid value for `--image`: no such file {str(path)!r}. "
                             "Expected the path of a JPEG/PNG/BMP/GIF image.")
    too_big = size_problem(path, max_pixels, "the export's max_pixels")
    if too_big is not None:
        raise UserInputError(f"Invalid value for `--image`: {escape_name(str(path))!r} is {too_big}. Expected an image "
                             "of at most that many pixels: downscale it, or search with an export written with a "
                             "higher export.max_pixels.")
    data = path.read_bytes()
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise UserInputError(f"Invalid value for `--image`: {str(path)!r} is not a readable image. "
                             "Expected a JPEG, PNG, BMP or GIF file.") from None
    if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".gif"):
        # Formats TF cannot decode in the serving graph (e.g. TIFF, WebP): re-encode as PNG.
        data = tf.io.encode_png(pixels).numpy()
    return data, pixels


def check_output(out: os.PathLike) -> Path:
    """`out` if a PNG can be written there: not a folder, and no file where a folder of its path
    should be.

    Raises:
        UserInputError: naming the path and what is in the way.
    """
    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"Invalid value for `--out`: {str(out)!r} is a folder; expected the path of a PNG file "
                             f"to write, e.g. {str(out / 'grid.png')!r}.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserInputError(
                    f"Invalid value for `--out`: cannot write {str(out)!r} because {str(parent)!r} is a file, not a "
                    "folder. Expected a path whose folders are folders (or do not exist yet); choose another --out.")
            break
    return out


def search_image(model_dir: Optional[os.PathLike], image_path: os.PathLike, k: int = 6,
                 index_dir: Optional[os.PathLike] = None) -> SearchResult:
    """Embeds `image_path` with the export at `model_dir` and returns its k nearest gallery items
    from `index_dir` (default: the index inside the export; without `model_dir`, the export that
    `index_dir` lives in). At most the index's size are returned.

    Raises:
        UserInputError: not a tfsim export, an export without index, an index outside an export
            and no `model_dir`, an index built by another model, a corrupt index, or not an image.
    """
    if k < 1:
        raise UserInputError(f"Invalid value for `--top-k`: expected an integer >= 1. Received: {k}")
    if model_dir is None and index_dir is None:
        raise UserInputError("Give --model EXPORT (its own index), --index DIR --model EXPORT (an index that export "
                             "built), or --index DIR alone for an index inside an export.")
    if index_dir is None:
        read_export(model_dir)
        index_dir = Path(model_dir) / META_DIR / "index"
        if not index_dir.is_dir() and not storage.leftovers(index_dir):
            raise UserInputError(f"Export {str(model_dir)!r} has no ScaNN index ({index_dir} is missing); "
                                 "re-run training with index.enabled=true, or build one with "
                                 "`python -m tfsim.pipelines.index` and pass --index.")
    meta = storage.read_meta(index_dir)
    model_dir = index_model(index_dir, model_dir, meta)
    max_pixels = export_max_pixels(model_dir)  # its serving graph's limit
    data, pixels = read_query_image(image_path, max_pixels)
    serving = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    try:
        query = serving(image_bytes=tf.constant([data]))["embeddings"].numpy()
    except tf.errors.InvalidArgumentError as err:  # the graph's own checks (size, format)
        raise UserInputError(f"Invalid value for `--image`: the export refused {escape_name(str(image_path))!r}: "
                             f"{tf_error_reason(err)}") from None
    index = storage.load(index_dir)
    rows, scores = index.search(query, k)
    rows, scores = rows[0], scores[0]
    if index.images is not None:
        images = [index.images[r] for r in rows]
    else:
        images = [_gallery_picture(index.paths[r], max_pixels) for r in rows]
    return SearchResult(query_path=Path(image_path), query_image=pixels, rows=rows, scores=scores,
                        ids=[str(index.ids[r]) for r in rows],
                        labels=[index.class_names[index.labels[r]] for r in rows], images=images,
                        gallery_size=len(index), same_as_query=[same_image(pixels, img) for img in images])


def _gallery_picture(path: str, max_pixels: int) -> np.ndarray:
    """A gallery image's RGB pixels for the grid; a grey tile for a file that now declares more
    than `max_pixels` pixels (replaced since it was indexed): never decoded."""
    from PIL import Image  # lazy: PIL only for query images and grids

    if size_problem(path, max_pixels) is not None:
        return np.full((8, 8, 3), 128, np.uint8)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def fit_text(text: str, font, width: float, max_lines: int = 3) -> list[str]:
    """`text` cut into lines of at most `width` pixels in `font` (at spaces where it can, else
    anywhere, as a long file name), at most `max_lines` of them, the last ending in "..." when
    the text is longer."""
    def fits(line: str) -> bool:
        return font.getlength(line) <= width

    lines, rest = [], text
    while rest and len(lines) < max_lines:
        cut = len(rest)
        while cut > 1 and not fits(rest[:cut]):
            cut -= 1
        space = rest.rfind(" ", 0, cut + 1)
        if cut < len(rest) and space > 0:
            cut = space
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:  # too long for max_lines: the end is dropped, visibly
        last = lines[-1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


QUERY_COLOR, SAME_COLOR, RESULT_COLOR = "blue", "orange", "gray"


def legend(same_as_query: list[bool]) -> str:
    """What the grid's frame colours mean (orange only when a result is the query's image)."""
    same = "; orange, the query's own image, found in the gallery" if any(same_as_query) else ""
    return f"Frames: blue, the query{same}; gray, the nearest gallery images, best first. Larger scores are closer."


def render_grid(result: SearchResult, out: os.PathLike, tile: int = 128) -> Path:
    """Writes a PNG: the query on the left, then the results, each framed and labelled (a caption
    wrapped to its tile's width, `fit_text`), and a legend of the frames below; returns its path."""
    from PIL import Image, ImageDraw, ImageFont  # lazy: PIL only for query images and grids

    font = ImageFont.load_default()
    gap, line_h = 6, 14
    same = list(result.same_as_query) or [False] * len(result.images)
    captions = [["query"] + fit_text(result.query_path.name, font, tile - 4, 4)]
    for i, (label, score, dup) in enumerate(zip(result.labels, result.scores, same), start=1):
        captions.append(fit_text(f"{i}. {label}", font, tile - 4, 2) + [f"score {score:.3f}"]
                        + (["= the query image"] if dup else []))
    n = len(result.images) + 1
    width = n * tile + (n + 1) * gap + gap * 2
    key = fit_text(legend(same), font, width - 2 * gap, 6)
    caption_h = line_h * max(len(c) for c in captions) + 6
    canvas = Image.new("RGB", (width, tile + caption_h + len(key) * line_h + 3 * gap), "white")
    draw = ImageDraw.Draw(canvas)

    def paste(i: int, pixels: np.ndarray, lines: list[str], color: str):
        img = Image.fromarray(np.asarray(pixels, np.uint8).squeeze()).convert("RGB")
        img.thumbnail((tile, tile), Image.NEAREST if max(img.size) < tile else Image.BICUBIC)
        if max(img.size) < tile:  # small images (28 px) are scaled up, pixels kept sharp
            scale = tile / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
        x = gap + i * (tile + gap) + (gap * 2 if i > 0 else 0)
        canvas.paste(img, (x + (tile - img.width) // 2, gap + (tile - img.height) // 2))
        draw.rectangle([x - 1, gap - 1, x + tile, gap + tile], outline=color, width=2)
        for j, line in enumerate(lines):
            draw.text((x + 2, gap + tile + 3 + line_h * j), line, fill="black", font=font)

    paste(0, result.query_image, captions[0], QUERY_COLOR)
    for i, (img, dup) in enumerate(zip(result.images, same), start=1):
        paste(i, img, captions[i], SAME_COLOR if dup else RESULT_COLOR)
    for j, line in enumerate(key):
        draw.text((gap, 2 * gap + tile + caption_h + line_h * j), line, fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
