"""tfsim against pytorch-metric-learning (PML) on the same images, split, budget and architecture.

For every dataset and seed it trains, side by side in one run:

* `pml`: PML 2.9's semi-hard recipe (`bench/peer_pml_worker.py`, in its own virtualenv):
  `TripletMarginMiner(margin, "semihard")` + `TripletMarginLoss(margin)`, `MPerClassSampler`,
  Adam at a constant learning rate, a random shift, the small ResNet layer for layer;
* `tfsim`: the same recipe through tfsim's config (`tfsim.training.train`), whitening off;
* `tfsim default`: tfsim's `default` preset as a user gets it: only the data, the split,
  the image size and the budget (P, K, steps) are set;
* any `--variants` of ablations (named override lists, see VARIANTS), to find what matters.

Every row is scored by the same code (`tfsim.evaluation.metrics.retrieval_metrics`, cosine,
each held-out image querying all others) and printed as mean +- sd over seeds, with the
wall time of training and the tfsim / PML ratio of each tfsim row.

Data: the shipped Fashion-MNIST subset (tfsim's own split), OpenCV's 5,000 handwritten
digits, scikit-learn's 1,797 8x8 digits, 3,000 Fashion-MNIST *test* images (300 per
class, classes 0-4 / 5-9), and `glyphs`: the 52 Latin letters drawn by 48 installed fonts
(train A-Z, hold out a-z; `build_glyphs`), all written as image folders under the cache (see
DATA.md in the shared design notes for where each comes from; the fonts come from Debian's
FONT_PACKAGES), or any folder: `--data DIR --train-classes 0,1,2
--test-classes 3,4`. Images are resized to `--image-size` by tfsim's pipeline, and PML
gets exactly those pixels. Budget: `--passes` passes over the training images in
P x K batches.

PML and torch are installed by the bench into its own virtualenv (`--pml-python`, default
`$TFSIM_BENCH_CACHE/pml-venv`); they never become tfsim dependencies.

    python bench/peer_parity.py                       # 5 datasets x 3 seeds, ~1 h on 2 cores
    python bench/peer_parity.py --datasets opencv_digits --seeds 0 --variants "default, flip;default, lr cosine"
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("TFSIM_BENCH_CACHE", Path.home() / ".cache" / "tfsim-bench"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
PML_REQUIREMENTS = ["torch==2.13.0", "pytorch-metric-learning==2.9.0", "scikit-learn", "numpy"]
WORKER = Path(__file__).with_name("peer_pml_worker.py")
KS = (1, 2, 4, 8)
COLUMNS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")

# Rows of the table besides `pml`: overrides on top of a base config (see `tfsim_config`).
# "matched" starts from the PML recipe expressed in tfsim's config; "default" from tfsim's
# default preset with only data, split, image size and budget set.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "tfsim": ("matched", []),
    "tfsim default": ("default", []),
    # the training images decoded from their files at every step (tfsim before data.cache_mb)
    "default, from files": ("default", ["data.cache_mb=0"]),
    "tfsim, from files": ("matched", ["data.cache_mb=0"]),
    # ablations: one setting of the default preset changed
    "default, whitening off": ("default", ["whitening.enabled=false"]),
    # the default before whitening.enabled=auto: always whitened at power 0.5
    "default, whitening 0.5": ("default", ["whitening.enabled=true"]),
    # a cross-batch memory of 512 embeddings (about 13 batches), read after 50 steps
    "default, XBM 512": ("default", ["loss.memory_size=512", "loss.memory_warmup_steps=50"]),
    "default, flip": ("default", ["data.flip=true"]),
    "default, lr constant": ("default", ["train.lr_schedule=constant"]),
    "default, lr cosine": ("default", ["train.lr_schedule=cosine"]),
    "default, zero-init residual": ("default", ["model.zero_init_residual=true"]),
    "default, batch-all 0.2": ("default", ["loss.name=batch_all_triplet", "loss.margin=0.2"]),
    "default, tfa semi-hard 0.2": ("default", ["loss.name=triplet_semihard", "loss.margin=0.2"]),
    "default, tfa semi-hard 0.5": ("default", ["loss.name=triplet_semihard", "loss.margin=0.5"]),
    # the defaults tfsim had before this bench existed (session 6): zero-initialised residual
    # branches and random horizontal flips
    "session-6 defaults": ("default", ["model.zero_init_residual=true", "data.flip=true"]),
    # the matched recipe with tfa's semi-hard semantics instead of PML's
    "tfsim, tfa semi-hard": ("matched", ["loss.name=triplet_semihard", "loss.margin=0.2"]),
}


# ----------------------------------------------------------------------------- datasets

def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Path:
    """Writes `root/<NN_class>/<i>.png` (numbered so sorted folders keep the label order)."""
    from PIL import Image
    if (root / ".complete").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    for label, name in enumerate(class_names):
        (tmp / f"{label:02d}_{name}").mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(tmp / f"{label:02d}_{class_names[label]}" / f"{i:05d}.png")
    (tmp / ".complete").write_text("")
    os.replace(tmp, root)
    return root


def build_default(root: Path):
    from tfsim.data import sources
    s = sources.load_default()
    names = [n.replace("/", "-").replace(" ", "_") for n in s.class_names]
    return _write_folder(root / "default", s.images[..., 0], s.labels, names), (0, 1, 3, 6, 8, 9), (2, 4, 5, 7)


def build_opencv_digits(root: Path):
    if not OPENCV_DIGITS.is_file():
        raise SystemExit(f"{OPENCV_DIGITS} is missing: apt-get install opencv-doc")
    from PIL import Image
    sheet = np.asarray(Image.open(OPENCV_DIGITS).convert("L"))  # 1000 x 2000, 50 x 100 cells of 20 x 20
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(10), 500)  # class c in cell rows 5c..5c+4
    return (_write_folder(root / "opencv_digits", cells, labels, [str(c) for c in range(10)]),
            (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def build_sklearn_digits(root: Path, pml_python: str):
    out = root / "sklearn_digits.npz"
    if not out.is_file():
        code = ("import numpy as np, sklearn.datasets as d; b = d.load_digits(); "
                f"np.savez({str(out)!r}, images=np.round(b.images * 255 / 16).astype(np.uint8), labels=b.target)")
        subprocess.run([pml_python, "-c", code], check=True)
    with np.load(out) as npz:
        images, labels = npz["images"], npz["labels"]
    return (_write_folder(root / "sklearn_digits", images, labels, [str(c) for c in range(10)]),
            (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def build_fmnist_test(root: Path, per_class: int = 300):
    images = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    names = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    return (_write_folder(root / "fmnist_test", images[rows], labels[rows], names),
            (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts/opentype"))
FONT_PACKAGES = ("fonts-urw-base35 fonts-liberation fonts-freefont-ttf fonts-texgyre fonts-linuxlibertine "
                 "fonts-cantarell fonts-crosextra-carlito fonts-crosextra-caladea fonts-ebgaramond fonts-open-sans "
                 "fonts-roboto-unhinted fonts-noto-mono fonts-inconsolata fonts-lato fonts-comic-neue fonts-go")
_SYMBOL_FONTS = ("symbol", "dingbat", "d050000l")  # their letters are Greek or pictures


def _glyph(font, ch: str, size: int) -> np.ndarray | None:
    """One letter drawn by `font`, centred in a square 20% wider than its ink, resized to `size`."""
    from PIL import Image
    mask = font.getmask(ch, mode="L")
    w, h = mask.size
    if not w or not h:
        return None
    side = int(max(w, h) * 1.2) + 2
    canvas = np.zeros((side, side), np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    canvas[y:y + h, x:x + w] = np.asarray(Image.frombytes("L", (w, h), bytes(mask)))
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))


def _most_distinct(stacks: np.ndarray, n: int) -> np.ndarray:
    """Indices of `n` of the fonts `[F, 52, s, s]` picked farthest-first (each next font the one
    whose nearest picked font is farthest, by RMS pixel difference over all 52 letters): metric
    clones (Liberation Sans, Arimo, Nimbus Sans, TeX Gyre Heros, FreeSans) count once."""
    x = stacks.reshape(len(stacks), -1).astype(np.float32) / 255
    picked = [0]
    nearest = np.sqrt(((x - x[0]) ** 2).mean(1))
    while len(picked) < min(n, len(x)):
        picked.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.sqrt(((x - x[picked[-1]]) ** 2).mean(1)))
    return np.sort(picked)


def build_glyphs(root: Path, size: int = 32, num_fonts: int = 48):
    """The 52 Latin letters (white on black) drawn by `num_fonts` installed fonts: class = letter,
    one image per font; train on A-Z, hold out a-z. Neither digits nor clothes: real type designs
    (URW, TeX Gyre, DejaVu, Liberation, Noto, Go, Libertine, ...; FONT_PACKAGES). Fonts lacking a
    letter, symbol fonts and exact duplicates are left out, then the `num_fonts` most distinct
    are kept (`_most_distinct`): with all ~220, near-identical designs make Recall@1 ~0.99."""
    import hashlib
    import string
    from PIL import ImageFont
    paths = sorted(p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    fonts, seen = [], set()
    for path in paths:
        try:
            font = ImageFont.truetype(str(path), 64)
        except OSError:
            continue
        if any(s in " ".join(font.getname()).lower() or s in path.name.lower() for s in _SYMBOL_FONTS):
            continue
        notdef = bytes(font.getmask("\U0010FFFD", mode="L"))  # a code point no font draws
        letters = [None if bytes(font.getmask(c, mode="L")) == notdef else _glyph(font, c, size)
                   for c in string.ascii_letters]
        if any(g is None for g in letters):
            continue
        stack = np.stack(letters)
        digest = hashlib.sha1(stack.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            fonts.append(stack)
    if len(fonts) < num_fonts:
        raise SystemExit(f"Found {len(fonts)} usable fonts under {[str(d) for d in FONT_DIRS]}; the glyphs set needs "
                         f"{num_fonts}: apt-get install {FONT_PACKAGES}")
    fonts = np.stack(fonts)[_most_distinct(np.stack(fonts), num_fonts)]
    order = [*string.ascii_uppercase, *string.ascii_lowercase]  # labels 0-25 upper, 26-51 lower
    by_label = fonts[:, [string.ascii_letters.index(c) for c in order]]  # [fonts, 52, size, size]
    images = by_label.transpose(1, 0, 2, 3).reshape(-1, size, size)
    labels = np.repeat(np.arange(52), len(fonts))
    names = [f"upper_{c}" if c.isupper() else f"lower_{c}" for c in order]
    return _write_folder(root / "glyphs", images, labels, names), tuple(range(26)), tuple(range(26, 52))


DATASETS = {
    "default": lambda root, py: build_default(root),
    "opencv_digits": lambda root, py: build_opencv_digits(root),
    "sklearn_digits": build_sklearn_digits,
    "fmnist_test": lambda root, py: build_fmnist_test(root),
    "glyphs": lambda root, py: build_glyphs(root),
}


# ----------------------------------------------------------------------------- runs

def ensure_pml_python(path: str | None) -> str:
    """The PML virtualenv's python, created on first use (torch and PML never enter tfsim's)."""
    if path:
        return path
    venv = CACHE / "pml-venv"
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        print(f"Installing {' '.join(PML_REQUIREMENTS)} into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PML_REQUIREMENTS], check=True)
        (venv / ".complete").write_text("")
    return str(python)


def tfsim_config(base: str, folder: Path, train_classes, test_classes, args, seed: int, extra: list[str]):
    from tfsim import config
    test = ",".join(map(str, test_classes))
    common = ["data.source=folder", f"data.path={folder}", f"data.test_classes={test}",
              f"model.image_size={args.image_size}", f"sampler.classes_per_batch={args.classes_per_batch}",
              f"sampler.examples_per_class={args.examples_per_class}", f"train.seed={seed}",
              f"sampler.seed={seed}", "export.enabled=false", "index.enabled=false", "eval.every_epoch=false"]
    if base == "matched":  # the PML recipe in tfsim's config
        common += ["model.backbone=small_resnet", "model.width=32", "model.blocks_per_stage=1",
                   "model.embedding_dim=128", "model.pooling=avg", "model.zero_init_residual=false",
                   "loss.name=batch_all_triplet", f"loss.margin={args.margin}",
                   f"train.learning_rate={args.learning_rate}", "train.lr_schedule=constant",
                   "data.augment=true", "data.flip=false", "whitening.enabled=false"]
    return config.apply_overrides(config.load_preset("default"), common + extra)


def run_tfsim(cfg, steps_per_epoch: int, epochs: int, run_dir: Path) -> dict:
    import keras
    from tfsim import config
    from tfsim.training import train
    cfg = config.apply_overrides(cfg, [f"train.epochs={epochs}", f"train.steps_per_epoch={steps_per_epoch}"])
    keras.backend.clear_session()
    result = train(cfg, run_dir=run_dir, resume=False, verbose=0)
    m = result.metrics
    row = {k: m[k] for k in COLUMNS}
    row["train_seconds"] = result.fit_seconds
    row["whitening"] = (m.get("whitening") or {}).get("chosen")  # what whitening.enabled=auto chose
    row["untrained"] = m["baselines"]["untrained"]
    row["raw_pixels"] = m["baselines"]["raw_pixels"]
    return row


def pixels(folder: Path, train_classes, test_classes, image_size: int):
    """tfsim's own decode + resize of the folder, as arrays, for the PML worker."""
    from tfsim.data import pipeline, sources, splits
    images = sources.load_folder(str(folder))
    train_set, test_set = splits.class_disjoint_split(images, test_classes)
    if set(np.unique(train_set.labels)) != set(train_classes):
        raise SystemExit(f"--train-classes {train_classes} must be the complement of --test-classes {test_classes}")
    arr = lambda s: np.concatenate([x.numpy() for x in pipeline.eval_dataset(s, image_size)])  # noqa: E731
    return arr(train_set), train_set.labels, arr(test_set), test_set.labels


def run_pml(pml_python: str, data: tuple, args, seed: int, steps: int, work: Path, keras_init: bool = False) -> dict:
    from tfsim.evaluation.metrics import retrieval_metrics
    train_x, train_y, test_x, test_y = data
    inp, out = work / "pml_in.npz", work / "pml_out.npz"
    np.savez(inp, train_images=train_x, train_labels=train_y, test_images=test_x)
    shift = int(round(args.image_size * 0.1))  # tfsim's augment: up to 10% of the side
    subprocess.run([pml_python, str(WORKER), str(inp), str(out), "--steps", str(steps),
                    "--classes-per-batch", str(args.classes_per_batch),
                    "--examples-per-class", str(args.examples_per_class),
                    "--learning-rate", str(args.learning_rate), "--margin", str(args.margin),
                    "--shift", str(shift), "--seed", str(seed)] + (["--keras-init"] if keras_init else []),
                   check=True)
    with np.load(out) as npz:
        row = retrieval_metrics(npz["embeddings"], test_y, KS, "cosine")
        row["train_seconds"] = float(npz["train_seconds"])
    return {k: row[k] for k in (*COLUMNS, "train_seconds")}


# ----------------------------------------------------------------------------- table

def _label(name: str, runs: list[dict]) -> str:
    """The row's name, with what whitening.enabled=auto chose on each seed."""
    chosen = [r.get("whitening") for r in runs]
    return name if not any(chosen) else f"{name} (whitening: {', '.join(str(c) for c in chosen)})"


def summarize(rows: dict[str, list[dict]]) -> list[str]:
    lines = [f"{'':34s}" + "".join(f"{c.replace('recall', 'R'):>15s}" for c in COLUMNS) + f"{'train s':>12s}"]
    for name, runs in rows.items():
        cells = []
        for col in (*COLUMNS, "train_seconds"):
            v = np.array([r[col] for r in runs])
            cells.append(f"{v.mean():7.3f}+-{v.std():.3f}" if col != "train_seconds"
                         else f"{v.mean():8.1f}+-{v.std():.0f}")
        lines.append(f"{_label(name, runs):34s}" + "".join(f"{c:>15s}" for c in cells))
    if "pml" in rows:
        pml = {c: np.mean([r[c] for r in rows["pml"]]) for c in (*COLUMNS, "train_seconds")}
        for name, runs in rows.items():
            if name == "pml":
                continue
            ratio = [np.mean([r[c] for r in runs]) / pml[c] for c in (*COLUMNS, "train_seconds")]
            lines.append(f"{name + ' / pml':34s}" + "".join(f"{x:15.3f}" for x in ratio))
    base = next((runs for name, runs in rows.items() if name != "pml"), None)
    if base and "untrained" in base[0]:
        for key in ("untrained", "raw_pixels"):
            v = {c: np.mean([r[key][c] for r in base]) for c in COLUMNS}
            lines.append(f"{'(' + key.replace('_', ' ') + ')':34s}" + "".join(f"{v[c]:15.3f}" for c in COLUMNS))
    return lines


def _cell(runs: list[dict], col: str) -> str:
    v = np.array([r[col] for r in runs])
    return f"{v.mean():.3f} +- {v.std():.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def markdown(results: dict, compact: bool = False) -> str:
    """Markdown tables of a saved bench (`--markdown FILE`): the form docs/ and the README quote.

    `compact`: one table, a row per bench row and a column per dataset, "R@1 / MAP@R" means.
    Otherwise one table per dataset with every metric (mean +- sd over seeds), training wall
    time and the ratio of each row's mean Recall@1 and time to PML's.
    """
    if compact:
        names = list(dict.fromkeys(n for r in results.values() for n in r["rows"]))
        out = ["| R@1 / MAP@R | " + " | ".join(results) + " |", "| --- |" + " --- |" * len(results)]
        for name in names:
            cells = []
            for r in results.values():
                runs = r["rows"].get(name)
                cells.append("" if not runs else f"{np.mean([x['recall@1'] for x in runs]):.3f} / "
                                                 f"{np.mean([x['map@r'] for x in runs]):.3f}")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        for key in ("untrained", "raw_pixels"):
            cells = []
            for r in results.values():
                runs = next((v for n, v in r["rows"].items() if n != "pml" and "untrained" in v[0]), None)
                cells.append("" if runs is None else f"{np.mean([x[key]['recall@1'] for x in runs]):.3f} / "
                                                     f"{np.mean([x[key]['map@r'] for x in runs]):.3f}")
            out.append(f"| ({key.replace('_', ' ')}) | " + " | ".join(cells) + " |")
        return "\n".join(out)
    out = []
    for ds, r in results.items():
        rows = r["rows"]
        out += [f"**{ds}**: {r.get('header', '').split(': ', 1)[-1]}", "",
                "| row | R@1 | R@2 | R@4 | R@8 | MAP@R | R-prec | train s | R@1 / pml | time / pml |",
                "| --- |" + " --- |" * 9]
        pml = rows.get("pml")
        for name, runs in rows.items():
            ratio = ["", ""]
            if pml and name != "pml":
                ratio = [f"{np.mean([x[c] for x in runs]) / np.mean([x[c] for x in pml]):.3f}"
                         for c in ("recall@1", "train_seconds")]
            t = np.array([x["train_seconds"] for x in runs])
            out.append(f"| {_label(name, runs)} | " + " | ".join(_cell(runs, c) for c in COLUMNS)
                       + f" | {t.mean():.0f} | {ratio[0]} | {ratio[1]} |")
        base = next((v for n, v in rows.items() if n != "pml" and "untrained" in v[0]), None)
        if base:
            for key in ("untrained", "raw_pixels"):
                out.append(f"| ({key.replace('_', ' ')}) | "
                           + " | ".join(f"{np.mean([x[key][c] for x in base]):.3f}" for c in COLUMNS) + " | | | |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--markdown", metavar="JSON", help="only print a saved bench's results as Markdown tables")
    p.add_argument("--compact", action="store_true", help="with --markdown: one R@1 / MAP@R table")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {list(DATASETS)}")
    p.add_argument("--data", help="any folder <class>/<image> (instead of --datasets)")
    p.add_argument("--train-classes", help="with --data: comma-separated class indices (sorted folder order)")
    p.add_argument("--test-classes", help="with --data: the held-out class indices")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="", help=f"extra rows, separated by semicolons, of {list(VARIANTS)[2:]}")
    p.add_argument("--no-pml", action="store_true")
    p.add_argument("--no-matched", action="store_true", help="leave out the `tfsim` row (PML's recipe in tfsim)")
    p.add_argument("--pml-keras-init", action="store_true",
                   help="add a row: PML with Keras's initialisers and epsilons (what the frameworks' defaults change)")
    p.add_argument("--pml-python", help="python of a virtualenv with torch + pytorch-metric-learning")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes-per-batch", type=int, default=5)
    p.add_argument("--examples-per-class", type=int, default=8)
    p.add_argument("--passes", type=int, default=5, help="passes over the training images")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--out", default="runs/bench/peer_parity.json")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text()), compact=args.compact))
        return 0
    logging.getLogger("tfsim").setLevel(logging.WARNING)

    pml_python = None if args.no_pml else ensure_pml_python(args.pml_python)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = (["tfsim"] if not args.no_matched else []) + ["tfsim default"] + [
        v.strip() for v in args.variants.split(";") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown --variants {unknown}: expected some of {list(VARIANTS)}")
    if args.data:
        if not (args.train_classes and args.test_classes):
            raise SystemExit("--data needs --train-classes and --test-classes")
        parse = lambda s: tuple(int(c) for c in s.split(","))  # noqa: E731
        jobs = {Path(args.data).name: (Path(args.data), parse(args.train_classes), parse(args.test_classes))}
    else:
        (CACHE / "data").mkdir(parents=True, exist_ok=True)
        jobs = {}
        for name in args.datasets.split(","):
            if name not in DATASETS:
                raise SystemExit(f"Unknown dataset {name!r}: expected one of {list(DATASETS)}")
            py = pml_python or ensure_pml_python(None)
            jobs[name] = DATASETS[name](CACHE / "data", py)

    results, report = {}, []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for ds, (folder, train_classes, test_classes) in jobs.items():
            data = pixels(folder, train_classes, test_classes, args.image_size)
            n_train = len(data[1])
            steps_per_epoch = n_train // (args.classes_per_batch * args.examples_per_class)
            steps = args.passes * steps_per_epoch
            rows: dict[str, list[dict]] = {}
            for seed in seeds:
                if pml_python:
                    rows.setdefault("pml", []).append(run_pml(pml_python, data, args, seed, steps, work))
                    print(f"[{ds} seed {seed}] pml: R@1 {rows['pml'][-1]['recall@1']:.3f}", flush=True)
                if pml_python and args.pml_keras_init:
                    rows.setdefault("pml, Keras init", []).append(
                        run_pml(pml_python, data, args, seed, steps, work, keras_init=True))
                for i, name in enumerate(names):
                    base, extra = VARIANTS[name]
                    cfg = tfsim_config(base, folder, train_classes, test_classes, args, seed, extra)
                    row = run_tfsim(cfg, steps_per_epoch, args.passes, work / f"{ds}_seed{seed}_row{i}")
                    rows.setdefault(name, []).append(row)
                    print(f"[{ds} seed {seed}] {name}: R@1 {row['recall@1']:.3f}", flush=True)
                results[ds] = {"rows": rows}  # kept after every seed: an interrupted bench keeps its runs
                out.write_text(json.dumps(results, indent=1, default=float) + "\n")
            header = (f"{ds}: {n_train} training images of classes {list(train_classes)}, {len(data[3])} held-out "
                      f"of {list(test_classes)}; {args.image_size} px, P={args.classes_per_batch} x "
                      f"K={args.examples_per_class}, {steps} steps ({args.passes} passes), seeds {seeds}")
            table = [header, *summarize(rows), ""]
            print("\n".join(table), flush=True)
            report += table
            results[ds] = {"header": header, "rows": rows}
            out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print("\n".join(["", "=" * 40, *report]))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
