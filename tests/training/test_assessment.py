"""The evaluate command's library: an export's metrics on any images, one set or query vs gallery."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfsim.data import pipeline, sources
from tfsim.errors import UserInputError
from tfsim.evaluation import retrieval_metrics
from tfsim.data.specs import load_source
from tfsim.evaluation.report import format_table
from tfsim.training.assessment import evaluate
from tfsim.export import export_embedder
from tfsim.models import build_embedding_model


def folder(root, classes, per_class, seed):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 255) if i == 0 else base  # noqa: F821 (a class shares a base colour)
            img = np.clip(base + rng.normal(0, 30, (14, 18, 3)), 0, 255).astype(np.uint8)
            (root / c / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    model = build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0)
    path = export_embedder(model, tmp_path_factory.mktemp("exports"), "m", 16, center_crop=0.75,
                           metadata={"similarity": "cosine"})
    return model, path


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_one_set_matches_metrics_of_the_model_itself(export, tmp_path):
    model, path = export
    data = folder(tmp_path / "photos", ["a", "b", "c", "d"], 5, 0)
    m = evaluate(path, data=str(data), out=tmp_path / "report", progress=False)
    images = sources.load_folder(str(data))
    want = retrieval_metrics(model.predict(pipeline.eval_dataset(images, 16, center_crop=0.75), verbose=0),
                             images.labels)
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "num_queries"):
        assert m[key] == pytest.approx(want[key], abs=1e-6), key
    assert m["protocol"] == "leave_one_out" and set(m["per_class"]) == {"a", "b", "c", "d"}
    assert {"map", "nmi", "ami", "precision@4"} <= set(m) and m["skipped"] == []
    assert sum(v["queries"] for v in m["per_class"].values()) == 20
    assert np.mean([v["map@r"] for v in m["per_class"].values()]) == pytest.approx(m["map@r"])  # equal class sizes
    report = (tmp_path / "report" / "metrics.md").read_text().splitlines()
    rows = [line for line in report if line.startswith("| ") and line.split("|")[1].strip() in ("a", "b", "c", "d")]
    maps = [float(line.split("|")[4]) for line in rows]
    assert maps == sorted(maps)  # worst first
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["num_queries"] == 20
    head, _, values = report[2:5]  # the table: precision@K beside Recall@K, as in metrics.json
    cells = dict(zip(head.strip("| ").split(" | "), values.strip("| ").split(" | ")))
    assert list(cells)[:8] == [f"recall@{k}" for k in (1, 2, 4, 8)] + [f"precision@{k}" for k in (1, 2, 4, 8)]
    assert all(float(cells[c]) == pytest.approx(m[c], abs=5e-5) for c in cells)


def aligned(lines):
    """Each line's fields end under its header's, column by column (the row label aside)."""
    ends = lambda line: [f.end() for f in re.finditer(r"\S+", line)]  # noqa: E731
    return all(ends(line)[1:] == ends(lines[0]) for line in lines[1:])


def test_console_table_lines_up_under_its_headers():
    ks = (1, 2, 4, 16)
    m = {**{f"recall@{k}": 0.5 for k in ks}, **{f"precision@{k}": 0.25 for k in ks}, "map@r": 0.3,
         "r_precision": 1.0, "map": 0.41, "nmi": 0.2, "ami": -0.05}
    table = format_table(m, ks).splitlines()
    assert table[0].split() == ["R@1", "R@2", "R@4", "R@16", "P@1", "P@2", "P@4", "P@16", "MAP@R", "R-prec", "mAP",
                                "NMI", "AMI"]
    assert table[1].split() == ["exact", "0.5000", "0.5000", "0.5000", "0.5000", "0.2500", "0.2500", "0.2500",
                                "0.2500", "0.3000", "1.0000", "0.4100", "0.2000", "-0.0500"]
    assert aligned(table) and len(table) == 2
    # --ann: ScaNN's row and its gap to exact, under the same headers, "-" where ScaNN has no figure.
    ann = {k: v for k, v in m.items() if k not in ("map", "nmi", "ami")}
    m["ann"] = {**ann, "gap": {k: -0.0125 for k in ann}, "gap_sample": 12, "index": {"mode": "tree_ah"}}
    table = format_table(m, ks).splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["exact", "ScaNN", "gap"] and aligned(table[:4])
    assert table[2].split()[-3:] == ["-"] * 3 and table[3].split()[1] == "-0.0125"
    assert table[4] == "ScaNN: a tree_ah index of the gallery; gap: ScaNN minus exact on 12 sampled queries"


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_query_set_against_gallery_set(export, tmp_path):
    model, path = export
    queries = folder(tmp_path / "q", ["a", "b", "c"], 2, 1)
    gallery = folder(tmp_path / "g", ["a", "b", "c", "z"], 4, 2)
    m = evaluate(path, query=str(queries), gallery=str(gallery), progress=False, ann=True)
    q, g = sources.load_folder(str(queries)), sources.load_folder(str(gallery))
    emb = lambda s: model.predict(pipeline.eval_dataset(s, 16, center_crop=0.75), verbose=0)  # noqa: E731
    want = retrieval_metrics(np.concatenate([emb(q), emb(g)]), np.concatenate([q.labels, g.labels]),
                             query_mask=np.arange(len(q) + len(g)) < len(q))  # a, b, c share indices
    assert m["protocol"] == "query_gallery" and m["num_queries"] == 6
    assert m["map@r"] == pytest.approx(want["map@r"], abs=1e-6)
    # --ann: a small gallery is scored exhaustively by ScaNN, so the same figures and no gap.
    assert m["ann"]["map@r"] == pytest.approx(m["map@r"], abs=1e-6) and m["ann"]["gap"]["recall@1"] == 0
    with pytest.raises(UserInputError, match="either --data .* or --query and --gallery"):
        evaluate(path, data=str(queries), query=str(queries))
    with pytest.raises(UserInputError, match="Invalid data 'nowhere'"):
        load_source("nowhere")
    with pytest.raises(UserInputError, match="No query class is in the gallery"):
        evaluate(path, query=str(folder(tmp_path / "x", ["u", "v"], 2, 3)), gallery=str(gallery),
                        progress=False)


@pytest.mark.slow
def test_cli_prints_metrics_and_worst_classes(export, tmp_path):
    _, path = export
    data = folder(tmp_path / "photos", ["a", "b", "c"], 4, 4)
    out = subprocess.run([sys.executable, "-m", "tfsim.pipelines.evaluate", "--model", str(path), "--data", str(data),
                          "--ks", "1,2", "--out", str(tmp_path / "r"), "--ann"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12 queries (leave_one_out)" in out.stdout and "worst classes (MAP@R)" in out.stdout
    table = out.stdout.split("12 queries (leave_one_out)")[1].splitlines()[1:5]
    assert table[0].split()[:6] == ["R@1", "R@2", "P@1", "P@2", "MAP@R", "R-prec"] and aligned(table[:4])
    assert table[3].split()[:2] == ["gap", "+0.0000"]
    assert "ScaNN: a brute_force index of the gallery; gap: ScaNN minus exact on 12 sampled queries" in out.stdout
    report = (tmp_path / "r" / "metrics.md").read_text()
    assert "| search | recall@1 | recall@2 | precision@1 | precision@2 |" in report and "| ScaNN | " in report
    assert (tmp_path / "r" / "metrics.md").is_file()
    bad = subprocess.run([sys.executable, "-m", "tfsim.pipelines.evaluate", "--model", str(tmp_path), "--data",
                          str(data)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a tfsim export" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_run_folder_and_checkpoint_are_evaluated_like_the_run_itself(export, tiny_run, tmp_path):
    import shutil

    result = tiny_run.result  # (the session's tiny run, copied: this test rewrites its whitening.npz)
    shutil.copytree(tiny_run.run_dir, tmp_path / "run")
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.keras"))
    keys = ("recall@1", "recall@8", "map@r", "r_precision", "num_queries")
    # No data: the run's own held-out classes, with the whitening fitted on its last checkpoint.
    for model in (tmp_path / "run", checkpoint):
        m = evaluate(model, progress=False)
        assert m["model_kind"] == "checkpoint" and m["model_details"]["checkpoint"] == checkpoint.name
        assert m["model_details"]["whitening"].startswith("applied")
        for key in keys:
            assert m[key] == pytest.approx(result.metrics[key], abs=1e-5), key
    # A whitening fitted on another checkpoint (here: none recorded) is not applied to this one.
    stored = dict(np.load(tmp_path / "run" / "whitening.npz"))
    np.savez(tmp_path / "run" / "whitening.npz", mean=stored["mean"], projection=stored["projection"],
             checkpoint=np.array("epoch-0099.keras"))
    m = evaluate(checkpoint, data="default", progress=False)
    assert m["model_details"]["whitening"].startswith("not applied") and m["data"] == "default"
    held_out = evaluate(checkpoint, progress=False)
    for key in keys:
        assert held_out[key] == pytest.approx(result.metrics["unwhitened"][key], abs=1e-5), key
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
    with pytest.raises(UserInputError, match="holds no checkpoint yet"):
        evaluate(tmp_path / "empty")
    with pytest.raises(UserInputError, match="an export has no held-out classes"):
        evaluate(export[1])

