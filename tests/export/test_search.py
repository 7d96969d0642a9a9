"""The search grid: captions that fit their tiles, the query's own image marked, a legend of the frames."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tfsim.export.search import SearchResult, fit_text, render_grid, same_image


def drawn_text(monkeypatch):
    """Records (text, its box in pixels) of every `ImageDraw.text` call."""
    boxes = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        boxes.append((text, self.textbbox(xy, text, font=kwargs.get("font"))))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return boxes


def test_captions_fit_their_tiles_and_the_query_image_is_marked(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    query = rng.integers(0, 255, (28, 28, 1), dtype=np.uint8)
    others = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(2)]
    name = "a_photo_taken_with_my_phone_at_the_shop_2024-06-01.png"  # longer than a tile is wide
    label = "Very long class name that cannot fit on two lines of one tile of the grid"
    result = SearchResult(Path("/q") / name, np.repeat(query, 3, axis=2), np.arange(3), np.array([1.0, 0.9, 0.8]),
                          ["q", "x", "y"], ["Coat", label, "Bag"], [query] + others, 10,
                          [same_image(np.repeat(query, 3, axis=2), img) for img in [query] + others])
    assert result.same_as_query == [True, False, False]  # grey and RGB copies of one picture are the same image

    boxes = drawn_text(monkeypatch)
    tile, gap = 128, 6
    out = render_grid(result, tmp_path / "grid.png")
    width, height = Image.open(out).size
    lefts = [gap + i * (tile + gap) + (gap * 2 if i > 0 else 0) for i in range(4)]
    texts = [t for t, _ in boxes]
    captions = texts.index("score 0.800") + 1  # then the legend, which spans the grid's width
    for n, (text, (x0, y0, x1, y1)) in enumerate(boxes):
        assert 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height, text  # inside the image
        if n < captions:
            column = max(i for i, left in enumerate(lefts) if left <= x0)
            assert x1 <= lefts[column] + tile, text  # inside its own tile's column
    assert texts[0] == "query" and "".join(texts[1:texts.index("1. Coat")]) == name  # the whole name, wrapped
    assert any(t.endswith("...") for t in texts)  # the label too long for two lines is cut, visibly
    assert texts.count("= the query image") == 1 and "score 0.900" in texts
    legend = " ".join(texts[captions:])
    assert boxes[captions][1][1] > max(box[3] for _, box in boxes[:captions])  # below every caption
    assert legend.startswith("Frames: blue, the query; orange, the query's own image") and "gray" in legend
    assert Image.open(out).getpixel((lefts[1] - 1, gap + tile // 2)) == (255, 165, 0)  # its frame: orange


def test_fit_text_wraps_at_spaces_then_anywhere():
    font = ImageFont.load_default()
    assert fit_text("short", font, 100) == ["short"]
    lines = fit_text("one two three four five six", font, 40, max_lines=10)
    assert len(lines) > 1 and " ".join(lines) == "one two three four five six"
    assert all(font.getlength(line) <= 40 for line in lines)
    long = fit_text("x" * 200, font, 50, max_lines=2)
    assert len(long) == 2 and long[-1].endswith("...") and all(font.getlength(line) <= 50 for line in long)
    assert not same_image(np.zeros((4, 4, 3)), np.zeros((4, 5, 3))) and same_image(np.ones((4, 4)), np.ones((4, 4, 3)))
