"""Embedding shards without Beam: the Parquet round trip (rows across shards back in catalogue
order, packed codes), the manifest's checks, the export handler on its own (a hashing export's
codes, a refused image set aside), and the commands' argument checks."""

import json

import numpy as np
import pytest

from tfsim.catalogue import shards
from tfsim.errors import UserInputError

pytest.importorskip("pyarrow")

MODEL = {"path": "/exports/m/1", "name": "m", "version": 1, "embedding_dim": 3, "similarity": "cosine",
         "fingerprint": "sha256-files:abc", "binary_codes": False}


def _row(r, label):
    return {"row": r, "id": f"c{label}/{r}.png", "path": f"/data/c{label}/{r}.png", "label": label,
            "class_name": f"c{label}", "split": ""}


def _plan(rows, num_shards, size):
    return {"model": MODEL, "data": "/data", "id_kind": "relative", "class_names": ["c0", "c1"],
            "num_shards": num_shards, "shard_size": size, "rows": rows}


def test_rows_come_back_in_catalogue_order_with_their_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 3)).astype(np.float32)
    # shard 1 is written first, its rows out of order inside; row 5 is a bad file
    shards.write_shard(tmp_path, shards.shard_name(1, 2), [_row(6, 1), _row(4, 0)], emb[[6, 4]], None,
                       [{"shard": 1, "row": 5, "id": "c1/5.png", "path": "/data/c1/5.png", "reason": "truncated"}])
    shards.write_shard(tmp_path, shards.shard_name(0, 2), [_row(r, r % 2) for r in range(4)], emb[:4], None, [])
    with pytest.raises(UserInputError, match="expected manifest.json"):
        shards.read_shards(tmp_path)
    manifest = shards.write_manifest(tmp_path, _plan(7, 2, 4), 1.5)
    assert manifest["images"] == 6 and manifest["bad_files"] == 1 and manifest["planned"] == 7
    assert [s["bad_files"] for s in manifest["shards"]] == [0, 1]
    found = shards.read_shards(tmp_path)
    assert found.ids.tolist() == ["c0/0.png", "c1/1.png", "c0/2.png", "c1/3.png", "c0/4.png", "c1/6.png"]
    np.testing.assert_array_equal(found.embeddings, emb[[0, 1, 2, 3, 4, 6]])
    assert found.labels.tolist() == [0, 1, 0, 1, 0, 1] and found.class_names == ("c0", "c1")
    assert found.codes is None and found.paths[0] == "/data/c0/0.png" and found.model == MODEL
    assert json.loads((tmp_path / "bad_files.jsonl").read_text())["reason"] == "truncated"

    (tmp_path / "shards" / "shard-00001-of-00002.parquet").unlink()
    with pytest.raises(UserInputError, match="listed in the manifest, is missing"):
        shards.read_shards(tmp_path)
    with pytest.raises(UserInputError, match="1 of the 2 shards were not written .*rerun the same embed command"):
        shards.write_manifest(tmp_path, _plan(7, 2, 4), 1.0)


def test_packed_codes_and_a_manifest_that_does_not_match(tmp_path):
    codes = np.array([[0x80, 0x01], [0xFF, 0x00]], np.uint8)
    shards.write_shard(tmp_path, shards.shard_name(0, 1), [_row(0, 0), _row(1, 1)], np.ones((2, 3)), codes, [])
    shards.write_manifest(tmp_path, _plan(2, 1, 2), 0.1)
    np.testing.assert_array_equal(shards.read_shards(tmp_path).codes, codes)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, model={**MODEL, "embedding_dim": 4})))
    with pytest.raises(UserInputError, match="3-dimensional embeddings; the manifest's model has 4"):
        shards.read_shards(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, format="other/9")))
    with pytest.raises(UserInputError, match="not a tfsim shards manifest"):
        shards.read_shards(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(UserInputError, match="is not a JSON object"):
        shards.read_shards(tmp_path)


@pytest.mark.parametrize("binary", [False, True])
def test_a_shard_whose_every_file_was_bad(tmp_path, binary):
    """Written with its columns (the dimension and code width come from the export), read back
    alone (no rows) and beside a shard with rows."""
    model = {**MODEL, "embedding_dim": 16, "binary_codes": binary}
    width = 2 if binary else 0
    bad = [{"shard": 0, "row": r, "id": f"c0/{r}.png", "path": "", "reason": "truncated"} for r in (0, 1)]
    shards.write_shard(tmp_path / "alone", shards.shard_name(0, 1), [], np.zeros((0, 16)), None, bad, 16, width)
    shards.write_manifest(tmp_path / "alone", dict(_plan(2, 1, 2), model=model), 0.1)
    alone = shards.read_shards(tmp_path / "alone")
    assert len(alone) == 0 and alone.embeddings.shape == (0, 16)
    assert (alone.codes.shape == (0, 2)) if binary else alone.codes is None
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 16)).astype(np.float32)
    codes = np.packbits(emb >= 0, axis=1) if binary else None
    tmp_path = tmp_path / "both"
    shards.write_shard(tmp_path, shards.shard_name(1, 2), [_row(2, 0), _row(3, 1)], emb, codes, [], 16, width)
    shards.write_shard(tmp_path, shards.shard_name(0, 2), [], np.zeros((0, 16)), None, bad, 16, width)
    manifest = shards.write_manifest(tmp_path, dict(_plan(4, 2, 2), model=model), 0.1)
    assert [s["rows"] for s in manifest["shards"]] == [0, 2] and manifest["bad_files"] == 2
    both = shards.read_shards(tmp_path)
    np.testing.assert_array_equal(both.embeddings, emb)
    assert both.rows.tolist() == [2, 3]
    if binary:
        np.testing.assert_array_equal(both.codes, codes)
    only_second = shards.read_shards(tmp_path, names=[shards.shard_name(1, 2)])
    assert only_second.ids.tolist() == both.ids.tolist()
    manifest["shards"][0]["name"] = "../../elsewhere"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="names a shard '../../elsewhere' that is not one of its own"):
        shards.read_shards(tmp_path)


def test_the_pixels_of_a_set_held_in_memory_come_from_the_plan(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (5, 4, 4, 1)).astype(np.uint8)
    (tmp_path / "plan").mkdir()
    for index, rows in enumerate((slice(0, 3), slice(3, 5))):
        np.savez(tmp_path / "plan" / f"{shards.shard_name(index, 2)}.npz", pixels=pixels[rows])
    (tmp_path / "plan.json").write_text(json.dumps({"in_memory": True, "shard_size": 3, "num_shards": 2, "rows": 5}))
    np.testing.assert_array_equal(shards.planned_pixels(tmp_path, np.array([0, 2, 4])), pixels[[0, 2, 4]])
    (tmp_path / "plan.json").write_text(json.dumps({"in_memory": True, "shard_size": 3, "num_shards": 2, "rows": 6}))
    with pytest.raises(UserInputError, match="do not cover its 6 rows"):
        shards.planned_pixels(tmp_path, np.array([0]))
    (tmp_path / "plan.json").write_text(json.dumps({"in_memory": False}))
    assert shards.planned_pixels(tmp_path, np.array([0])) is None


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--data", "d", "--out", "o", "--shard-size", "0"], "take integers >= 1"),
    (["--model", "m", "--data", "d", "--out", "o", "stray"], "Beam options are written --name=value"),
    (["--model", "m", "--data", "d", "--out", "o", "--workers", "2", "--runner=DataflowRunner"], "--num_workers"),
])
def test_the_embed_command_checks_its_arguments_first(argv, message):
    from tfsim.pipelines import embed
    with pytest.raises(UserInputError, match=message):
        embed.main(argv)


@pytest.mark.parametrize("argv, message", [
    (["--embeddings", "s", "--data", "d", "--out", "o"], "--embeddings SHARDS takes --out DIR"),
    (["--embeddings", "s"], "--embeddings SHARDS takes --out DIR"),
    (["--model", "m", "--data", "d", "--out", "o", "--max-items", "5"], "--max-items N"),
    (["--embeddings", "s", "--out", "o", "--max-items", "5", "--serve", "r"], "serve each part on its own"),
    (["--embeddings", "s", "--out", "o", "--model", "m"], "--model is only for --serve"),
])
def test_the_index_command_checks_embeddings_arguments(argv, message):
    from tfsim.pipelines import index
    with pytest.raises(UserInputError, match=message):
        index.main(argv)


def test_the_evaluate_command_takes_a_model_or_shards():
    from tfsim.pipelines import evaluate
    with pytest.raises(UserInputError, match="--model MODEL .* or --embeddings SHARDS"):
        evaluate.main(["--model", "m", "--embeddings", "s"])
    with pytest.raises(UserInputError, match="is evaluated as it is"):
        evaluate.main(["--embeddings", "s", "--data", "d"])


@pytest.mark.slow  # builds an export
def test_the_export_handler_gives_codes_and_sets_a_refused_image_aside(tmp_path):
    pytest.importorskip("apache_beam")
    import tensorflow as tf
    from tfsim.catalogue.job import ExportHandler
    from tfsim.export import export_embedder
    from tfsim.export.identity import model_fingerprint
    from tfsim.models import build_embedding_model
    model = export_embedder(build_embedding_model("small_resnet", 16, 16, width=4, blocks_per_stage=1, seed=0),
                            tmp_path, "h", 16, metadata={"similarity": "cosine"}, binary_codes=True, max_pixels=4096)
    handler = ExportHandler(str(model), model_fingerprint(model), 8)
    loaded = handler.load_model()
    rng = np.random.default_rng(0)
    good = [tf.io.encode_png(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).numpy() for _ in range(3)]
    huge = tf.io.encode_png(np.zeros((100, 100, 3), np.uint8)).numpy()  # 10,000 pixels > max_pixels
    results = list(handler.run_inference([good[0], b"not an image", good[1], huge, good[2]], loaded))
    serve = loaded.signatures["serving_default"](image_bytes=tf.constant(good))
    for i, r in zip((0, 2, 4), (0, 1, 2)):
        np.testing.assert_allclose(results[i][0], serve["embeddings"].numpy()[r], atol=1e-6)
        np.testing.assert_array_equal(results[i][1], serve["codes"].numpy()[r])
        assert results[i][2] is None
    assert results[1][0] is None and results[1][2] and "Graph execution" not in results[1][2]
    assert "4096" in results[3][2] or "pixels" in results[3][2]
    other = ExportHandler(str(model), "sha256-files:other", 8)
    with pytest.raises(UserInputError, match="not the one the job was planned with"):
        other.load_model()
