"""The whole pipeline through its CLIs, on a tiny configuration, checking every artifact.

One training run (module-scoped fixture) is shared by the tests below: run folder,
metrics, TensorBoard, checkpoints, SavedModel (loaded in a fresh Python process with
plain TensorFlow), ScaNN index, search command and its PNG grid, and user errors.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains models / runs CLIs (see pyproject.toml)

# The held-out gallery (2,400 images) is below index.brute_force_below: the index is exact,
# so a query finds its own image even in the 6-step model's nearly degenerate embeddings.
TINY = ["train.epochs=2", "train.steps_per_epoch=3", "model.width=8", "model.blocks_per_stage=1",
        "model.embedding_dim=16", "run.name=tiny"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def cli(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", f"tfsim.pipelines.{module}", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    sets = [a for s in TINY for a in ("--set", s)]
    proc = cli("train", *sets, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_train_prints_table_and_paths(run):
    cwd, proc = run
    out = proc.stdout
    for needle in ("Retrieval on 4 held-out classes (Pullover, Coat, Sandal, Sneaker; 2,400 queries, each against all "
                   "other held-out images):", "run folder:", "SavedModel:", "ScaNN index:",
                   "saved_models/tiny/1"):
        assert needle in out, needle
    assert "Traceback" not in proc.stderr
    # The table: a header of metric names, then one row per model, each row's label followed by
    # exactly the numbers in metrics.json (rows matched by their whole label, not a substring).
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Retrieval on 4 held-out"))
    assert lines[start + 1].split() == ["R@1", "R@2", "R@4", "R@8", "MAP@R", "R-prec"]
    table = {}
    for line in lines[start + 2:]:
        m = re.fullmatch(r"(\S.*?)\s+((?:\d\.\d{4}\s*){6})", line)
        if not m:
            break
        table[m.group(1)] = [float(v) for v in m.group(2).split()]
    assert list(table) == ["trained", "trained, unwhitened", "untrained network", "raw pixels",
                           "raw pixels whitened"]
    metrics = json.loads((cwd / "runs" / "tiny" / "metrics.json").read_text())
    b = metrics["baselines"]
    cols = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision"]
    for label, m in [("trained", metrics), ("trained, unwhitened", metrics["unwhitened"]),
                     ("untrained network", b["untrained"]), ("raw pixels", b["raw_pixels"]),
                     ("raw pixels whitened", b["raw_pixels_whitened"])]:
        np.testing.assert_allclose(table[label], [m[c] for c in cols], atol=5e-5, err_msg=label)


def test_run_folder_artifacts(run):
    cwd, _ = run
    run_dir = cwd / "runs" / "tiny"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["width"] == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r"]
    b = metrics["baselines"]
    for scope in (metrics, metrics["unwhitened"], b["raw_pixels"], b["untrained"], b["raw_pixels_whitened"]):
        for key in keys:
            assert isinstance(scope[key], float) and 0.0 <= scope[key] <= 1.0
    # held-out classes only, never seen in training
    assert metrics["test_classes"] == ["Pullover", "Coat", "Sandal", "Sneaker"]
    assert metrics["num_queries"] == 2400
    assert metrics["baselines"]["raw_pixels"]["recall@1"] == pytest.approx(0.8529, abs=1e-3)
    # the newest two epochs (a damaged last one resumes from the one before); no lock or temporary file
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0001.keras", "epoch-0002.keras"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    assert len(list((run_dir / "samples").glob("*.png"))) == 4


def _events(board):
    import tensorflow as tf
    tags = {}
    for f in board.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append((event.step, f.parent, v))
    return tags


def test_tensorboard_has_loss_and_validation_recall(run):
    cwd, _ = run
    board = cwd / "runs" / "tiny" / "tensorboard"
    tags = _events(board)
    for tag in ("train/loss", "train/learning_rate", "train/images_per_second", "held_out/recall_at_1",
                "held_out/map_at_r"):
        assert sorted(step for step, _, _ in tags[tag]) == [0, 1], tag
    # One TensorBoard run per run folder: every event file sits in tensorboard/ itself.
    assert {folder for values in tags.values() for _, folder, _ in values} == {board}


def test_tensorboard_shows_neighbours_projector_and_no_hparams(run):
    import tensorflow as tf
    cwd, _ = run
    board = cwd / "runs" / "tiny" / "tensorboard"
    tags = _events(board)
    pictures = sorted((step, tf.io.decode_png(tf.make_ndarray(v.tensor)[2]).numpy())
                      for step, _, v in tags["held_out/neighbours"])
    assert [step for step, _ in pictures] == [0, 1]
    grid = pictures[0][1]
    # A legend, then one row per held-out class (4): a query then 5 neighbours, 64 px pictures in
    # 3 px frames of green or red, each with its class name below.
    assert grid.shape == (384, 420, 3)
    frames = {tuple(grid[32 + i * 88, j * 70]) for i in range(4) for j in range(1, 6)}
    assert frames <= {(0, 170, 0), (220, 0, 0)} and frames
    config = (board / "projector_config.pbtxt").read_text()  # found by `tensorboard --logdir runs`
    assert 'metadata_path: "projector/metadata.tsv"' in config and (board / "projector" / "sprite.png").is_file()
    labels = (board / "projector" / "metadata.tsv").read_text().splitlines()
    assert labels[0] == "label" and len(labels) == 1 + 2000  # the held-out images, capped at 2000
    assert {"Pullover", "Coat", "Sandal", "Sneaker"} == set(labels[1:])
    assert not [t for t in tags if t.startswith("_hparams_")]  # hparams are for tune trials only


def test_saved_model_in_fresh_process_matches_keras(run, tmp_path):
    cwd, _ = run
    export = cwd / "saved_models" / "tiny" / "1"
    assert (export / "saved_model.pb").is_file()
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".tmp")]
    samples = sorted((cwd / "runs" / "tiny" / "samples").glob("*.png"))
    # Keras embeddings of the same images, from the checkpoint, in this process.
    import keras
    import tensorflow as tf
    import tfsim.losses  # noqa: F401 (registers the loss for load_model)
    import tfsim.training.optimizers  # noqa: F401 (registers ScaledAdam; this file alone imports nothing else)
    model = keras.models.load_model(cwd / "runs" / "tiny" / "checkpoints" / "epoch-0002.keras")
    pixels = np.stack([tf.io.decode_png(p.read_bytes(), channels=3).numpy() for p in samples]).astype(np.float32)
    # The export is the checkpoint's embedder followed by the whitening saved in the run.
    white = np.load(cwd / "runs" / "tiny" / "whitening.npz")
    raw = model.predict(pixels, verbose=0).astype(np.float64) - white["mean"]
    want = raw @ white["projection"].astype(np.float64)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    script = f"""
import json, sys, numpy as np, tensorflow as tf
assert 'tfsim' not in sys.modules
m = tf.saved_model.load({str(export)!r})
paths = {[str(p) for p in samples]!r}
data = tf.constant([open(p, 'rb').read() for p in paths])
by_bytes = m.signatures['serving_default'](image_bytes=data)['embeddings'].numpy()
pixels = tf.cast(tf.stack([tf.io.decode_png(open(p, 'rb').read(), channels=3) for p in paths]), tf.float32)
by_pixels = m.signatures['serve_images'](images=pixels)['embeddings'].numpy()
print(json.dumps({{'bytes': by_bytes.tolist(), 'pixels': by_pixels.tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**ENV, "PYTHONPATH": ""}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("bytes", "pixels"):
        emb = np.array(got[key])
        np.testing.assert_allclose(emb, want, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cli_out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show",
                              "--dir", str(export), "--all"], capture_output=True, text=True, env=ENV).stdout
    for needle in ("serving_default", "image_bytes", "serve_images", "embeddings"):
        assert needle in cli_out


def test_search_prints_neighbors_and_writes_grid(run):
    cwd, _ = run
    export = cwd / "saved_models" / "tiny" / "1"
    query = sorted((cwd / "runs" / "tiny" / "samples").glob("*.png"))[0]
    proc = cli("search", "--model", str(export), "--image", str(query), "--top-k", "6",
               "--out", "grid.png", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s*\d+\s+-?\d+\.\d+\s", line)]
    assert len(rows) == 6
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # The query is a gallery image: it finds itself, with cosine ~1 (first, up to float ties).
    source_row = query.stem.rsplit("_", 1)[1]
    found = {r[3]: float(r[1]) for r in rows}
    assert found.get(f"fashion_mnist_small:{source_row}", 0.0) == pytest.approx(1.0, abs=1e-4)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert len(found) == 6
    # ... and says so on that row only.
    marked = [r[3] for r in rows if " ".join(r).endswith("(the query image itself: it is in the gallery)")]
    assert marked == [f"fashion_mnist_small:{source_row}"]
    from PIL import Image
    grid = Image.open(cwd / "grid.png")
    assert grid.width > 7 * 128 and grid.height > 128
    # Results: the query tile and six result tiles are not blank.
    arr = np.asarray(grid.convert("L"))
    assert arr.std() > 20


def test_user_errors_exit_2_without_traceback(run, tmp_path):
    cwd, _ = run
    export = cwd / "saved_models" / "tiny" / "1"
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    cases = [
        ("train", ["--set", "train.epocs=1"], "Unknown config key `train.epocs`"),
        ("train", ["--set", "train.epochs=x"], "expected an integer"),
        ("train", ["--set", "sampler.examples_per_class=1"], "expected an integer >= 2"),
        ("train", ["--set", "sampler.classes_per_batch=7"], "the training set has only 6 classes. Expected 2..6."),
        ("train", ["--set", "data.source=folder", "--set", f"data.path={tmp_path / 'nothing'}"],
         "Invalid value for `data.path`: expected a folder laid out as <root>/<class>/<image>"),
        ("train", ["--set", "data.test_classes=2,40"], "Invalid value for `data.test_classes`: expected label indices"),
        ("search", ["--model", str(export), "--image", str(tmp_path / "missing.png")], "no such file"),
        ("search", ["--model", str(export), "--image", str(not_image)], "is not a readable image"),
        ("search", ["--model", str(tmp_path), "--image", str(not_image)], "is not a tfsim export"),
        ("search", ["--model", str(export.parent), "--image", str(not_image)], "pass"),
    ]
    # Two cases through `python -m` itself; all of them through the same handler (`_cli.run`) in
    # one process (one TensorFlow start instead of ten): an unexpected exception would end it.
    for module, args, needle in (cases[0], cases[-1]):
        proc = cli(module, *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (needle, proc.stderr[-2000:])
    proc = subprocess.run([sys.executable, "-c", CASES_IN_ONE_PROCESS, json.dumps([c[:2] for c in cases])],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases)
    for (_, args, needle), (code, stderr) in zip(cases, results):
        assert code == 2, (args, stderr[-2000:])
        assert needle in stderr, (needle, stderr[-2000:])
        assert "Traceback" not in stderr


CASES_IN_ONE_PROCESS = r'''
import contextlib, importlib, io, json, sys
from tfsim.pipelines import _cli
results = []
for module, args in json.loads(sys.argv[1]):
    main = importlib.import_module(f"tfsim.pipelines.{module}").main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            _cli.run(main, args)
            code = 0
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
'''
