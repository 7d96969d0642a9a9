"""The Beam embedding job (DirectRunner, 2 worker processes) against the single-process commands:
the same rows and embeddings, bad files in the dead-letter report, an index and metrics from the
shards equal to those from the images, and a rerun that completes a killed job."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.images import class_folders
from tfsim.catalogue import read_shards
from tfsim.catalogue.use import add_shards, evaluate_shards, index_shards
from tfsim.data.specs import load_source
from tfsim.errors import UserInputError
from tfsim.export import catalogue, export_embedder
from tfsim.export.embed import embed_export
from tfsim.index import Index, ShardedIndex, storage
from tfsim.models import build_embedding_model
from tfsim.pipelines import embed
from tfsim.training.assessment import evaluate

pytest.importorskip("apache_beam")
pytestmark = pytest.mark.slow  # Beam jobs: seconds each


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from tfsim.catalogue.job import embed_catalogue
    root = tmp_path_factory.mktemp("catalogue")
    model = export_embedder(build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=0),
                            root / "exports", "m0", 16, metadata={"similarity": "cosine"})
    data = class_folders(root / "shop", ["a", "b", "c"], 14, 0)
    (data / "a" / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (data / "c" / "c_empty.jpg").write_bytes(b"")
    manifest = embed_catalogue(model, str(data), root / "shards", shard_size=10, workers=2)
    return root, model, data, manifest


def test_shards_hold_every_good_image_once_as_the_index_command_embeds_it(job):
    root, model, data, manifest = job
    checked = load_source(str(data))  # what the single-process commands embed: the bad files skipped
    assert len(checked) == 42 and len(checked.report["skipped"]) == 2
    found = read_shards(root / "shards")
    assert manifest["images"] == 42 and manifest["bad_files"] == 2 and manifest["planned"] == 44
    assert manifest["num_shards"] == 5 and manifest["embedded_now"] == 5
    counters = manifest["counters"]  # Beam's counters, summed over the two worker processes
    assert (counters["images"], counters["bad_files"], counters["shards"]) == (42, 2, 5)
    assert counters["images_per_second"] > 0
    np.testing.assert_array_equal(found.ids, catalogue.catalogue_ids(checked))  # every good row, once, in order
    assert found.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(found.labels, checked.labels)
    np.testing.assert_allclose(found.embeddings, embed_export(model, checked, progress=False), atol=1e-5)
    assert found.codes is None and all(Path(p).is_file() for p in found.paths)
    bad = [json.loads(line) for line in (root / "shards" / "bad_files.jsonl").read_text().splitlines()]
    assert [b["id"] for b in bad] == ["a/a_corrupt.png", "c/c_empty.jpg"]
    assert "PNG" in bad[0]["reason"]  # the decoder's own words, without TF's graph context
    assert all(b["reason"] and "Graph execution" not in b["reason"] and "{{" not in b["reason"] for b in bad)
    assert sum(s["bad_files"] for s in manifest["shards"]) == 2 and sum(s["rows"] for s in manifest["shards"]) == 42


def test_index_and_metrics_from_shards_equal_those_from_the_images(job, tmp_path):
    root, model, data, _ = job
    direct = storage.load(catalogue.build_index(model, str(data), tmp_path / "direct", progress=False))
    sharded = storage.load(index_shards(root / "shards", tmp_path / "sharded"))
    assert sharded.meta["model"]["fingerprint"] == direct.meta["model"]["fingerprint"]
    np.testing.assert_array_equal(sharded.ids, direct.ids)
    np.testing.assert_array_equal(sharded.paths, direct.paths)
    queries = embed_export(model, load_source(str(data)), progress=False)
    a, b = direct.search(queries, 5), sharded.search(queries, 5)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)

    want = evaluate(model, str(data), ks=(1, 2), progress=False)
    got = evaluate_shards(root / "shards", ks=(1, 2), out=tmp_path / "report", progress=False)
    for key in ("recall@1", "recall@2", "map@r", "r_precision", "num_queries"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert [f["reason"] != "" for f in got["skipped_files"]] == [True, True]
    assert (tmp_path / "report" / "metrics.md").is_file()

    # Shards added to an index built by the same export: ids already there are refused.
    with pytest.raises(UserInputError, match="already in the index"):
        add_shards(tmp_path / "sharded", root / "shards")

    # Split into parts of whole shards, at most 15 items each, searched by fan-out and merge: the one
    # index's answers. (The shards hold 10, 9, 10, 10 and 3 good images.)
    assert [s["rows"] for s in json.loads((root / "shards" / "manifest.json").read_text())["shards"]] == \
        [10, 9, 10, 10, 3]
    parts = ShardedIndex.load(index_shards(root / "shards", tmp_path / "parts", max_items=15))
    assert [len(p) for p in parts.parts] == [10, 9, 10, 13]
    one = Index.load(tmp_path / "sharded")
    for k in (1, 5):
        want, got = one.search(queries, k), parts.search(queries, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_the_commands_index_add_and_evaluate_shards(job, tmp_path, capsys):
    from tfsim.pipelines import evaluate as evaluate_cli
    from tfsim.pipelines import index as index_cli
    root, model, data, _ = job
    assert index_cli.main(["--embeddings", str(root / "shards"), "--out", str(tmp_path / "idx")]) == 0
    printed = capsys.readouterr().out
    assert f"index: {tmp_path / 'idx'} (42 images, 3 classes, brute_force)" in printed
    assert f"--model {model.resolve()}" in printed  # the shards' export, for the search command

    # New images embedded by the job (in this process) and added to the index without re-embedding.
    more = class_folders(tmp_path / "more", ["c", "d"], 4, 5)
    for f in sorted(more.rglob("*.png")):
        f.rename(f.with_name("new_" + f.name))
    assert embed.main(["--model", str(model), "--data", str(more), "--out", str(tmp_path / "more_shards"),
                       "--direct_running_mode=in_memory"]) == 0
    assert index_cli.main(["--add", str(tmp_path / "more_shards"), "--index", str(tmp_path / "idx")]) == 0
    assert "added 8 images" in capsys.readouterr().out
    grown = storage.load(tmp_path / "idx")
    assert len(grown) == 50 and grown.class_names == ("a", "b", "c", "d")
    rows = grown.search(embed_export(model, load_source(str(more)), progress=False), 1).indices[:, 0]
    assert (rows == np.arange(42, 50)).all()  # each added image finds itself, in its appended row
    assert grown.ids[42] == "c/new_c_0.png" and grown.paths[42] == str((more / "c" / "new_c_0.png").resolve())

    assert evaluate_cli.main(["--embeddings", str(root / "shards"), "--ks", "1,2", "--out",
                              str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "42 queries (leave_one_out) on the embedding shards" in printed
    assert "skipped 2 image file(s)" in printed and (tmp_path / "eval" / "metrics.json").is_file()


def test_a_killed_job_is_completed_by_rerunning_the_command(job, tmp_path, capsys):
    root, model, data, manifest = job
    out = tmp_path / "killed"
    shutil.copytree(root / "shards", out)
    # What a job killed mid-way leaves: no manifest, two shards never written, one half-written file.
    (out / "manifest.json").unlink()
    for name in ("shard-00001-of-00005", "shard-00004-of-00005"):
        (out / "shards" / f"{name}.parquet").unlink()
        (out / "dead_letter" / f"{name}.jsonl").unlink(missing_ok=True)
    (out / "shards" / ".tmp-1a2b3c4d-shard-00004-of-00005.parquet").write_bytes(b"PAR1 half")
    with pytest.raises(UserInputError, match="embed job did not complete"):
        read_shards(out)
    # (Beam options pass through: this rerun runs in this process, as Beam's in-memory DirectRunner)
    assert embed.main(["--model", str(model), "--data", str(data), "--out", str(out), "--shard-size", "10",
                       "--direct_running_mode=in_memory"]) == 0
    printed = capsys.readouterr().out
    assert "42 images in 5 shards, 2 embedded by this run" in printed
    assert "bad files: 2 set aside" in printed
    # this run's counters: shards 1 (rows 10-19, a_corrupt.png among them) and 4 (rows 40-43, c_empty.jpg)
    assert "Beam counters (tfsim): bad_files 2, images 12, images_per_second " in printed and "shards 2" in printed
    assert not list(out.glob("shards/.tmp-*"))  # the half-written file of the killed job: removed
    again, first = read_shards(out), read_shards(root / "shards")
    np.testing.assert_array_equal(again.ids, first.ids)  # no row lost or doubled
    np.testing.assert_allclose(again.embeddings, first.embeddings, atol=1e-6)
    assert [s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]] == \
        [s["name"] for s in manifest["shards"]]

    from tfsim.catalogue.job import embed_catalogue, pipeline_options
    assert embed_catalogue(model, str(data), out, shard_size=10)["embedded_now"] == 0  # nothing left: no job
    with pytest.raises(UserInputError, match="planned for other input .*shard_size"):
        embed_catalogue(model, str(data), out, shard_size=7)
    # A plan whose writing was killed (no plan.json yet) is written again; another folder is refused.
    from tfsim.catalogue.job import plan_job
    (tmp_path / "planning" / "plan").mkdir(parents=True)
    (tmp_path / "planning" / "plan" / "shard-00000-of-00009.json").write_text("[")
    assert plan_job(model, str(data), tmp_path / "planning", shard_size=10)["num_shards"] == 5
    assert sorted(p.name for p in (tmp_path / "planning" / "plan").iterdir())[0] == "shard-00000-of-00005.json"
    (tmp_path / "other" / "mine.txt").parent.mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(UserInputError, match="is not an embed job's folder"):
        plan_job(model, str(data), tmp_path / "other")
    options = pipeline_options(["--direct_running_mode=in_memory"], workers=3).get_all_options()
    assert (options["runner"], options["direct_running_mode"], options["direct_num_workers"]) == \
        ("DirectRunner", "in_memory", 3)
    assert pipeline_options(["--runner=DataflowRunner"]).get_all_options()["direct_running_mode"] != \
        "multi_processing"  # another runner's options are left as given
    changed = read_shards(out)
    (out / "shards" / "shard-00002-of-00005.parquet").write_bytes(b"PAR1 changed")
    with pytest.raises(UserInputError, match="sha256 differs"):
        read_shards(out)
    assert len(changed) == 42
