"""Indexing a catalogue with an export: build, search with --index, add, and refusing what is wrong."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

from tests.images import class_folders
from tfsim.errors import UserInputError
from tfsim.evaluation import exact_knn
from tfsim.export.embed import embed_export
from tfsim.data import sources
from tfsim.export import export_embedder
from tfsim.export import catalogue
from tfsim.export.search import search_image
from tfsim.index import storage
from tfsim.models import build_embedding_model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = [export_embedder(build_embedding_model("small_resnet", 16, 8, width=4, blocks_per_stage=1, seed=s),
                            root, f"m{s}", 16, metadata={"similarity": "cosine"}) for s in (0, 1)]
    return made


@pytest.mark.slow  # over a second: kept out of the fast tier
@pytest.mark.parametrize("tree", [False, True])
def test_build_search_and_add(exports, tmp_path, tree):
    model = exports[0]
    data = class_folders(tmp_path / "shop", ["a", "b", "c"], 20, 0)
    options = {"brute_force_below": 10, "target_recall": 0.9} if tree else {}
    path = catalogue.build_index(model, str(data), tmp_path / "idx", options, progress=False)
    meta = json.loads((path / "index.json").read_text())
    assert meta["params"]["mode"] == ("tree_ah" if tree else "brute_force") and meta["size"] == 60
    assert meta["model"]["name"] == "m0" and meta["model"]["embedding_dim"] == 8
    assert set(meta["files"]) >= {"gallery.npz", "scann/scann_assets.pbtxt"}
    index = storage.load(path)
    assert all(p.startswith("/") for p in index.paths) and index.class_names == ("a", "b", "c")
    # Ids are what the catalogue was indexed with: paths relative to the data root.
    assert index.ids[:3].tolist() == ["a/a_0.png", "a/a_1.png", "a/a_10.png"] and meta["id_kind"] == "relative"
    # The index holds what the export computes: every catalogue image finds itself first.
    images = sources.load_folder(str(data))
    emb = embed_export(model, images, progress=False)
    found = index.search(emb, 5)
    want = exact_knn(emb, emb, 5, "cosine")
    assert (found.indices[:, 0] == np.arange(60)).mean() >= (0.95 if tree else 1.0)
    if not tree:
        np.testing.assert_array_equal(found.indices, want.indices)
    # An index outside an export is searched with the model the user names, never one it names itself.
    query = images.paths[7]
    with pytest.raises(UserInputError, match="pass --model EXPORT"):
        search_image(None, query, 3, path)
    result = search_image(model, query, 3, path)
    assert result.ids[0] == Path(query).relative_to(data.resolve()).as_posix() and result.labels[0] == "a"
    assert result.same_as_query == [True, False, False]  # the query file is in the gallery: found, and marked

    new = class_folders(tmp_path / "more", ["c", "d"], 5, 1)
    for f in sorted(new.rglob("*.png")):  # new names: ids are relative to each data root, so "c/c_0.png" is taken
        f.rename(f.with_name("new_" + f.name))
    with pytest.raises(UserInputError, match="pass --model EXPORT"):
        catalogue.add_to_index(path, str(new), progress=False)
    _, added = catalogue.add_to_index(path, str(new), model, progress=False)
    grown = storage.load(path)
    assert added == 10 and len(grown) == 70 and grown.class_names == ("a", "b", "c", "d")
    assert grown.params["added"] == 10 and grown.params["size"] == 70
    more = sources.load_folder(str(new))
    rows = grown.search(embed_export(model, more, progress=False), 1).indices[:, 0]
    assert (rows == np.arange(60, 70)).all()  # each added image finds itself, in its appended row
    assert [grown.class_names[grown.labels[r]] for r in rows] == ["c"] * 5 + ["d"] * 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".old"))]
    assert grown.ids[60:62].tolist() == ["c/new_c_0.png", "c/new_c_1.png"]  # (relative to the second root)
    with pytest.raises(UserInputError, match="already in the index"):
        catalogue.add_to_index(path, str(new), model, progress=False)


@pytest.mark.slow  # over a second: kept out of the fast tier
def test_another_model_and_a_damaged_index_are_refused(exports, tmp_path):
    data = class_folders(tmp_path / "shop", ["a", "b"], 6, 2)
    path = catalogue.build_index(exports[0], str(data), tmp_path / "idx", progress=False)
    with pytest.raises(UserInputError, match="was built by model 'm0' version 1 .* not by .*m1"):
        search_image(exports[1], data / "a" / "a_0.png", 3, path)
    with pytest.raises(UserInputError, match="was built by model"):
        catalogue.add_to_index(path, str(data), exports[1], progress=False)
    with pytest.raises(UserInputError, match="already exists"):
        catalogue.build_index(exports[0], str(data), path, progress=False)

    def damaged(change):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        subprocess.run(["cp", "-r", str(path), str(copy)], check=True)
        change(copy)
        return copy

    def truncate(p):
        target = p / "gallery.npz"
        target.write_bytes(target.read_bytes()[:-10])

    def flip(p):
        target = next(f for f in sorted((p / "scann").iterdir()) if f.suffix == ".npy")
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 0xFF
        target.write_bytes(bytes(raw))

    for change, message in ((truncate, "gallery.npz has .* bytes where .* were written"),
                            (flip, "does not have the content that was written"),
                            (lambda p: (p / "gallery.npz").unlink(), "gallery.npz is missing"),
                            (lambda p: (p / "index.json").write_text("{"), "index.json is not valid JSON")):
        with pytest.raises(UserInputError, match=message):
            storage.load(damaged(change))


@pytest.mark.slow
def test_index_and_search_commands(exports, tmp_path):
    data = class_folders(tmp_path / "shop", ["a", "b"], 8, 3)
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,  # noqa: E731
                                       timeout=300, cwd=tmp_path)
    out = run("tfsim.pipelines.index", "--model", str(exports[0]), "--data", str(data), "--out", "idx")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "index: idx (16 images, 2 classes, brute_force)" in out.stdout
    found = run("tfsim.pipelines.search", "--index", "idx", "--model", str(exports[0]), "--image",
                str(data / "b" / "b_3.png"), "--top-k", "2")
    assert found.returncode == 0, found.stderr[-2000:]
    assert "   1   1.0000  b" in found.stdout and (tmp_path / "search_b_3.png").is_file()
    rows = found.stdout.splitlines()[2:4]
    assert rows[0].endswith("b/b_3.png  (the query image itself: it is in the gallery)")
    assert "query image" not in rows[1]
    wrong = run("tfsim.pipelines.search", "--index", "idx", "--model", str(exports[1]), "--image",
                str(data / "b" / "b_3.png"))
    assert wrong.returncode == 2 and "was built by model" in wrong.stderr and "Traceback" not in wrong.stderr
    new = class_folders(tmp_path / "new", ["c", "d"], 2, 4)
    added = run("tfsim.pipelines.index", "--add", str(new), "--index", "idx", "--model", str(exports[0]))
    assert added.returncode == 0 and "added 4 images" in added.stdout, added.stderr[-2000:]
