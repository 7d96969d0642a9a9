"""What a person sees with `tensorboard --logdir runs`: the files tfsim.training.tensorboard and
the tune report write, checked through TensorBoard's own HTTP API (the server a user starts),
on run folders written by those functions with tiny data; one slow test on a real short run."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfsim.data.sources import ImageSet
from tfsim.training import tensorboard
from tfsim.training.tensorboard import GREEN, RED
from tfsim.tuning import report as tuning_report

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("Ankle boot", "Sneaker", "Bag")


def image_set(per_class: int = 4, seed: int = 0) -> ImageSet:
    """`per_class` 16 px images of each class in CLASSES, each class its own colour."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class).astype(np.int32)
    base = rng.integers(0, 255, (len(CLASSES), 3))
    images = np.clip(base[labels][:, None, None, :] + rng.normal(0, 20, (len(labels), 16, 16, 3)), 0, 255)
    return ImageSet(labels=labels, ids=np.array([f"t:{i}" for i in range(len(labels))]), class_names=CLASSES,
                    images=images.astype(np.uint8), name="t")


class Evaluation:  # what NeighbourPictures reads from RetrievalEvaluation
    def __init__(self, embeddings):
        self.last_embeddings = embeddings


def write_training_run(logdir: Path, images: ImageSet, epochs: int = 2, projector: bool = True) -> None:
    """A run's TensorBoard folder as training writes it: scalars and pictures per epoch, then the projector."""
    embeddings = np.eye(len(CLASSES), 4)[images.labels] + np.random.default_rng(1).normal(0, 0.1, (len(images), 4))
    scalars = tensorboard.EpochScalars(logdir)
    pictures = tensorboard.NeighbourPictures(Evaluation(embeddings), images, logdir, k=3)
    for epoch in range(epochs):
        logs = {"loss": 1.0 / (epoch + 1), "learning_rate": 1e-3, "images_per_second": 100.0,
                "val_recall_at_1": 0.5 + epoch / 10, "val_map_at_r": 0.3 + epoch / 10}
        pictures.on_epoch_end(epoch, logs)
        scalars.on_epoch_end(epoch, logs)
    pictures.on_train_end()
    scalars.on_train_end()
    if projector:
        tensorboard.write_projector(logdir, embeddings, images)


def events(logdir: Path) -> dict[str, list[int]]:
    """tag -> steps, over the event files directly in `logdir`."""
    tags: dict[str, list[int]] = {}
    for f in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                tags.setdefault(v.tag, []).append(event.step)
    return tags


# --- the picture ---------------------------------------------------------------------------------------

def test_neighbour_grid_has_a_legend_frames_and_class_names():
    rng = np.random.default_rng(0)
    pictures = np.full((2, 4, 20, 20, 3), 128, np.uint8)
    same = np.array([[True, False, True], [False, False, True]])
    names = [["Ankle boot", "Sneaker", "Ankle boot", "Bag"], ["Bag", "Sneaker", "Sneaker", "Bag"]]
    grid = tensorboard.neighbour_grid(pictures, same, names, border=3)
    cell = 26
    legend_h, row_h = 2 * 13 + 6, cell + 15 + 3
    assert grid.dtype == np.uint8 and grid.shape[0] == legend_h + 2 * row_h and grid.shape[1] >= 4 * cell
    # Legend: a green and a red swatch in the band above the pictures.
    band = grid[:legend_h].reshape(-1, 3)
    assert (band == GREEN).all(axis=1).sum() >= 80 and (band == RED).all(axis=1).sum() >= 80
    # Frames: neighbours framed by class, the query not framed.
    for i in range(2):
        top = legend_h + i * row_h
        assert tuple(grid[top, 0]) == (255, 255, 255)
        for j in range(1, 4):
            assert tuple(grid[top, j * cell]) == (GREEN if same[i, j - 1] else RED)
    # Captions: text under every picture, neighbours' in their frame's colour; other names, other text.
    for i in range(2):
        for j in range(4):
            top, left = legend_h + i * row_h + cell, j * cell
            caption = grid[top:top + 15, left:left + cell].reshape(-1, 3).astype(int)
            ink = caption[(caption != 255).any(axis=1)]
            assert len(ink) > 20, (i, j)
            if j > 0:
                colour = np.array(GREEN if same[i, j - 1] else RED)
                assert np.abs(ink - colour).sum(axis=1).min() < 30
    other = tensorboard.neighbour_grid(pictures, same, [["Coat"] * 4, ["Coat"] * 4], border=3)
    assert not np.array_equal(other[legend_h:], grid[legend_h:])
    assert rng is not None


def test_a_long_class_name_is_cut_to_its_cell():
    pictures = np.zeros((1, 2, 20, 20, 3), np.uint8)
    short = tensorboard.neighbour_grid(pictures, np.array([[True]]), [["A", "A"]])
    long = tensorboard.neighbour_grid(pictures, np.array([[True]]), [["A" * 80, "A" * 80]])
    assert long.shape == short.shape  # nothing spills over


# --- one TensorBoard run per training run ------------------------------------------------------------

def test_a_run_writes_one_tensorboard_run_with_scalars_pictures_and_projector(tmp_path):
    logdir = tmp_path / "tensorboard"
    images = image_set()
    write_training_run(logdir, images)
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1  # scalars and pictures: one writer
    assert not [p for p in logdir.rglob("events.out.tfevents.*") if p.parent != logdir]  # no sub-runs
    tags = events(logdir)
    for tag in ("train/loss", "train/learning_rate", "train/images_per_second", "held_out/recall_at_1",
                "held_out/map_at_r", "held_out/neighbours"):
        assert sorted(tags[tag]) == [0, 1], tag
    config = (logdir / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "projector/embeddings.tsv"' in config and 'metadata_path: "projector/metadata.tsv"' in config
    table = np.loadtxt(logdir / "projector" / "embeddings.tsv", delimiter="\t")
    assert table.shape == (len(images), 4)
    assert (logdir / "projector" / "metadata.tsv").read_text().splitlines()[1:] == [CLASSES[c] for c in images.labels]


def test_the_projector_makes_its_folder_a_run_when_nothing_else_did(tmp_path):
    images = image_set()
    tensorboard.write_projector(tmp_path, np.ones((len(images), 3)), images)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    tensorboard.write_projector(tmp_path, np.ones((len(images), 3)), images)  # again: no second file
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


# --- what TensorBoard serves --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Board:
    """A TensorBoard server on `logdir`, as `tensorboard --logdir` starts it, and its HTTP API."""

    def __init__(self, logdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        self.proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(self, path: str, data: dict | None = None):
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, headers={"X-XSRF-Protected": "1",
                                                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if response.headers.get_content_type() == "application/json" else raw

    def wait(self, path: str, ready, timeout: float = 90):
        """`get(path)` once `ready(answer)` holds; fails with the last answer after `timeout` s."""
        deadline, answer = time.time() + timeout, None
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
            try:
                answer = self.get(path)
                if ready(answer):
                    return answer
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"{path}: {answer}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def session_groups(board: Board) -> dict[str, dict]:
    request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                         "STATUS_RUNNING"],
               "colParams": [], "startIndex": 0, "sliceSize": 100}
    answer = board.get("/data/plugin/hparams/session_groups", request)
    return {g["name"]: g for g in answer.get("sessionGroups", [])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`runs/`: an ordinary run and a search of two trials (tiny data, no training), served by TensorBoard."""
    root = tmp_path_factory.mktemp("tb") / "runs"
    images = image_set()
    write_training_run(root / "plain" / "tensorboard", images)
    space = {"loss.margin": [0.1, 0.5]}
    for trial, margin in (("0", 0.1), ("1", 0.5)):
        logdir = root / "tune" / "s" / f"trial_{trial}" / "run" / "tensorboard"
        write_training_run(logdir, images)
        tuning_report.write_hparams_trial(logdir, f"s/trial_{trial}", {"loss.margin": margin},
                                          {"map@r": 0.25 + float(trial), "recall@1": 0.5}, space)
    board = Board(root)
    try:
        yield root, board
    finally:
        board.close()


RUNS = ["plain/tensorboard", "tune/s/trial_0/run/tensorboard", "tune/s/trial_1/run/tensorboard"]


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_tensorboard_serves_one_run_per_training_run(runs):
    _, board = runs
    assert board.wait("/data/runs", lambda r: len(r) >= 3) == RUNS
    tags = board.get("/data/plugin/scalars/tags")
    assert set(tags) == set(RUNS)
    assert {"train/loss", "train/learning_rate", "held_out/recall_at_1", "held_out/map_at_r"} <= set(tags[RUNS[0]])
    assert not any(tag.startswith("tune/") for tag in tags[RUNS[0]])  # an ordinary run: no search metrics
    images = board.get("/data/plugin/images/tags")
    assert "held_out/neighbours" in images[RUNS[0]]


@pytest.mark.slow  # over a second (starts TensorBoard): kept out of the fast tier
def test_tensorboard_shows_the_projector_of_each_run(runs):
    root, board = runs
    board.wait("/data/runs", lambda r: len(r) >= 3)
    listing = board.wait("/data/plugins_listing", lambda p: p["projector"]["enabled"])
    assert all(listing[name]["enabled"] for name in ("scalars", "images", "hparams", "projector"))
    assert sorted(board.get("/data/plugin/projector/runs")) == RUNS
    config = board.get("/data/plugin/projector/info?run=plain/tensorboard")
    (embedding,) = config["embeddings"]
    assert [int(n) for n in embedding["tensorShape"]] == [12, 4]
    tensor = board.get(f"/data/plugin/projector/tensor?run=plain/tensorboard&name={embedding['tensorName']}")
    assert len(tensor) == 12 * 4 * 4  # float32
    labels = board.get(f"/data/plugin/projector/metadata?run=plain/tensorboard&name={embedding['tensorName']}")
    assert labels.decode().splitlines()[1:] == [CLASSES[c] for c in image_set().labels]
    sprite = board.get(f"/data/plugin/projector/sprite_image?run=plain/tensorboard&name={embedding['tensorName']}")
    assert sprite[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_tensorboard_lists_the_trials_of_a_search_by_their_names(runs):
    _, board = runs
    board.wait("/data/runs", lambda r: len(r) >= 3)
    experiment = board.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert [h["name"] for h in experiment["hparamInfos"]] == ["loss.margin"]
    assert sorted(m["name"]["tag"] for m in experiment["metricInfos"]) == ["tune/map@r", "tune/recall@1"]
    groups = session_groups(board)
    assert sorted(groups) == ["s/trial_0", "s/trial_1"]  # the ordinary run is not a session
    for name, margin, score in (("s/trial_0", 0.1, 0.25), ("s/trial_1", 0.5, 1.25)):
        group = groups[name]
        assert group["hparams"]["loss.margin"] == pytest.approx(margin)
        assert [s["name"] for s in group["sessions"]] == [f"tune/{name}/run/tensorboard"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert values["tune/map@r"] == pytest.approx(score)


# --- a real run -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_short_training_run_as_tensorboard_serves_it(tmp_path):
    from tfsim import config
    from tfsim.training.run import train

    cfg = config.load("default", ["train.epochs=2", "train.steps_per_epoch=2", "model.width=8",
                                  "model.blocks_per_stage=1", "model.embedding_dim=16", "eval.baselines=false",
                                  "export.enabled=false", "index.enabled=false", f"run.root={tmp_path / 'runs'}",
                                  "run.name=short"])
    train(cfg, verbose=0)
    board = Board(tmp_path / "runs")
    try:
        assert board.wait("/data/runs", lambda r: len(r) >= 1) == ["short/tensorboard"]
        time.sleep(2)  # (a second run would have been found by now)
        assert board.get("/data/runs") == ["short/tensorboard"]
        listing = board.wait("/data/plugins_listing", lambda p: p["projector"]["enabled"])
        assert listing["scalars"]["enabled"] and listing["images"]["enabled"]
        assert not listing["hparams"]["enabled"]  # an ordinary run has no hparams session
        tags = board.get("/data/plugin/scalars/tags")["short/tensorboard"]
        assert {"train/loss", "train/learning_rate", "train/images_per_second", "held_out/recall_at_1",
                "held_out/map_at_r"} <= set(tags)
        losses = board.get("/data/plugin/scalars/scalars?run=short/tensorboard&tag=train/loss")
        assert [step for _, step, _ in losses] == [0, 1]
        assert "held_out/neighbours" in board.get("/data/plugin/images/tags")["short/tensorboard"]
        assert board.get("/data/plugin/projector/runs") == ["short/tensorboard"]
        assert session_groups(board) == {}
    finally:
        board.close()
