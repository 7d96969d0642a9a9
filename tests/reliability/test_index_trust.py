"""Hostile index folders: an index never makes tfsim run a model it names, its paths resolve
against itself, it serves the ids it was indexed with, every damage to index.json is one line,
an interrupted update is recovered, and search says what it found and where it cannot write.

To stay within a minute on two cores, the commands of every case run in ONE fresh process
(`DRIVER`): each is the real CLI (`tfsim.pipelines.<module>.main` under `_cli.run`, as
`python -m` runs it) with its own stdout/stderr, exit status and cwd; the module fixture
`runs` prepares every hostile folder first, runs the driver once, and each test asserts its
case's commands. Exports and the first index are made in this process (setup, not under test).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.images import class_folders
from tests.reliability.helpers import Result, assert_clean_error, python, tiny_export, tree_snapshot
from tfsim.index import storage

pytestmark = pytest.mark.slow

# Runs [{"name", "module", "args", "cwd"} | {"name", "serve": SavedModel, "images": [...]}] in this one
# process, each command as `python -m tfsim.pipelines.<module>` would run it; prints {name: result}.
DRIVER = r'''
import contextlib, importlib, io, json, logging, os, sys, traceback
from tfsim.pipelines import _cli

results = {}
for step in json.loads(open(sys.argv[1]).read()):
    out, err, code = io.StringIO(), io.StringIO(), 0
    if "serve" in step:  # a retrieval SavedModel, loaded and called as TF Serving would
        import tensorflow as tf
        sig = tf.saved_model.load(step["serve"]).signatures["serving_default"]
        got = sig(image_bytes=tf.constant([open(p, "rb").read() for p in step["images"]]))
        out.write(json.dumps(got["ids"].numpy().astype(str).tolist()))
    else:
        os.chdir(step["cwd"])
        for handler in list(logging.root.handlers):  # (basicConfig binds to this command's stderr)
            logging.root.removeHandler(handler)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                _cli.run(importlib.import_module("tfsim.pipelines." + step["module"]).main, step["args"])
            except SystemExit as done:
                code = done.code or 0
            except BaseException:
                traceback.print_exc()
                code = 1
    results[step["name"]] = [code, out.getvalue(), err.getvalue()]
print("RESULTS " + json.dumps(results))
'''


def seal(index_dir: Path) -> None:
    """Re-computes the file checksums and index.json's digest, as someone who knows the format
    would after changing the folder (so only the checks that do not rely on them are tested)."""
    from tfsim.index import storage

    meta = json.loads((index_dir / "index.json").read_text())
    meta["files"] = storage._file_digests(index_dir)
    meta["digest"] = storage.meta_digest(meta)
    (index_dir / "index.json").write_text(json.dumps(meta))


def edit(index_dir: Path, change, reseal: bool = False) -> Path:
    meta = json.loads((index_dir / "index.json").read_text())
    meta = change(meta)
    (index_dir / "index.json").write_text(json.dumps(meta))
    if reseal:
        seal(index_dir)
    return index_dir


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tfsim import locks
    from tfsim.export import catalogue, identity

    root = tmp_path_factory.mktemp("trust")
    w = {"root": root}
    a = w["a"] = tiny_export(root / "exports", "a", seed=0)
    b = tiny_export(root / "exports", "b", seed=1)
    shop = w["shop"] = class_folders(root / "shop", ["Coat", "Dress", "Shirt"], 20, 0)  # 60 images
    small = class_folders(root / "small", ["Coat", "Dress"], 5, 1)
    new = w["new"] = class_folders(root / "new", ["Hat", "Sock"], 2, 2)
    idx = w["idx"] = catalogue.build_index(a, str(shop), root / "idx", progress=False)
    idx_small = catalogue.build_index(a, str(small), root / "idx_small", progress=False)
    query = w["query"] = shop / "Coat" / "Coat_3.png"
    cwd = w["cwd"] = root / "cwd"
    cwd.mkdir()
    steps = []

    def step(name, module, *args):
        steps.append({"name": name, "module": module, "args": [str(x) for x in args], "cwd": str(cwd)})

    # 1. An index that names another model. `evil` looks like an export (B's metadata) but its graph
    # is garbage: loading it would end in a parse error, not in one clean line. The tampered
    # index records evil's path and the fingerprint of evil's own files, re-sealed.
    evil = w["evil"] = copy(b, root / "evil" / "1")
    (evil / "saved_model.pb").write_bytes(b"a model that must never be loaded")
    evil_fp = identity.model_fingerprint(evil)

    def name_evil(meta):
        meta["model"].update(path=str(evil), name="b", fingerprint=evil_fp)
        return meta

    tampered = w["tampered"] = edit(copy(idx, root / "tampered" / "idx"), name_evil, reseal=True)
    a_copy = w["a_copy"] = copy(a, root / "copied" / "a" / "1")  # an export with its own index inside
    inside = catalogue.build_index(a_copy, str(small), a_copy / "assets.extra" / "tfsim" / "index", progress=False)
    edit(inside, name_evil, reseal=True)
    w["evil_before"] = tree_snapshot(evil.parent)
    step("no_model", "search", "--index", tampered, "--image", query)
    step("model_a", "search", "--index", tampered, "--model", a, "--image", query)
    step("add_no_model", "index", "--add", new, "--index", tampered)
    step("serve_no_model", "index", "--index", tampered, "--serve", root / "served_evil")
    step("inside_export", "search", "--model", a_copy, "--image", query)
    step("inside_index", "search", "--index", inside, "--image", query)
    step("inside_other_model", "search", "--index", inside, "--model", b, "--image", query)
    copied = w["copied"] = copy(idx, root / "elsewhere" / "idx")
    step("copy_model_a", "search", "--index", copied, "--model", a, "--image", query, "--out", root / "grids" / "a.png")

    # 2. Gallery paths recorded relative to the index folder: resolved against it, not the cwd.
    portable = copy(shop, root / "portable" / "images")
    rel = copy(idx, root / "portable" / "idx")
    with np.load(rel / "gallery.npz") as npz:
        arrays = dict(npz)
    arrays["paths"] = np.array([os.path.join("..", "images", os.path.relpath(p, shop.resolve()))
                                for p in arrays["paths"]])
    np.savez_compressed(rel / "gallery.npz", **arrays)
    seal(rel)
    w["portable"] = portable
    step("relative_paths", "search", "--index", rel, "--model", a, "--image", query, "--top-k", 3,
         "--out", root / "grids" / "relative.png")

    # 3. Ids: relative to the data root by default, absolute paths only when asked for.
    served = w["served"] = root / "served"
    step("build_serve", "index", "--model", a, "--data", shop, "--out", root / "idx_served", "--serve", served,
         "--kinds", "exact")
    steps.append({"name": "retrieval_ids", "serve": str(served / "a_exact" / "1"), "images": [str(query)]})
    step("build_paths", "index", "--model", a, "--data", small, "--out", root / "idx_paths", "--ids", "path")

    # 4. Hand edits of index.json (not re-sealed unless said).
    damage = {
        "a_list": lambda m: [m],
        "mode": lambda m: {**m, "params": {**m["params"], "mode": "tree_ah"}},
        "renamed_classes": lambda m: {**m, "class_names": ["x", "y", "z"]},
        "no_files": lambda m: {k: v for k, v in m.items() if k != "files"},
        "no_digest": lambda m: {k: v for k, v in m.items() if k != "digest"},
        "old_format": lambda m: {**m, "format": "tfsim.scann_index.v2"},
        "unknown_mode": lambda m: {**m, "params": {**m["params"], "mode": "faiss"}},
    }
    for name, change in damage.items():
        edit(copy(idx, root / "damaged" / name), change)
        step(f"damaged_{name}", "search", "--index", root / "damaged" / name, "--model", a, "--image", query)
    edit(copy(idx, root / "damaged" / "fewer_classes"), lambda m: {**m, "class_names": ["Coat", "Dress"]},
         reseal=True)
    step("damaged_fewer_classes", "search", "--index", root / "damaged" / "fewer_classes", "--model", a,
         "--image", query)
    # A list of files that leaves some out, re-sealed: the files left out would go unchecked.
    def leave_out_scann(meta):
        meta = {**meta, "files": {k: v for k, v in meta["files"].items() if not k.startswith("scann/")}}
        return {**meta, "digest": storage.meta_digest(meta)}

    edit(copy(idx, root / "damaged" / "partial_files"), leave_out_scann)
    step("damaged_partial_files", "search", "--index", root / "damaged" / "partial_files", "--model", a,
         "--image", query)
    step("damaged_add", "index", "--add", new, "--index", root / "damaged" / "no_files", "--model", a)
    w["damaged_before"] = tree_snapshot(root / "damaged")

    # 5. A crash between the two renames of `index --add` (simulated: the folders `save` leaves
    # at that moment, made by hand), and an update while another process holds the lock.
    left1 = root / "left1"
    copy(idx_small, left1 / ".old-idx-0123abcd")  # the index before the update (10 images)
    copy(idx, left1 / ".tmp-idx-89abcdef")  # the update, completely written (60 images)
    (left1 / ".tmp-idx-deadbeef" / "scann").mkdir(parents=True)  # an older attempt, killed half-way
    step("recover_tmp", "search", "--index", left1 / "idx", "--model", a, "--image", query, "--top-k", 100,
         "--out", root / "grids" / "recovered.png")
    left2 = root / "left2"
    copy(idx_small, left2 / ".old-idx-0123abcd")
    partial = copy(idx, left2 / ".tmp-idx-89abcdef")
    (partial / "gallery.npz").write_bytes(b"cut short")  # the update died while writing
    step("recover_old_then_add", "index", "--add", new, "--index", left2 / "idx", "--model", a)
    left3 = root / "left3"
    (left3 / ".tmp-idx-aaaa1111" / "scann").mkdir(parents=True)
    step("nothing_to_recover", "search", "--index", left3 / "idx", "--model", a, "--image", query)
    locked = w["locked"] = copy(idx, root / "left4" / "idx")
    step("locked_add", "index", "--add", new, "--index", locked, "--model", a)
    w["locked_before"] = tree_snapshot(locked.parent)

    # 6. More asked than the index holds; an --out under a file.
    step("top_k", "search", "--index", idx, "--model", a, "--image", query, "--top-k", 1000,
         "--out", root / "grids" / "k.png")
    (root / "afile").write_text("mine")
    step("out_under_file", "search", "--index", idx, "--model", a, "--image", query, "--out", root / "afile" / "x.png")

    plan = root / "plan.json"
    plan.write_text(json.dumps(steps))
    w["exports_before"] = tree_snapshot(root / "exports")
    with locks.sibling_lock(locked, "index"):  # held by this (pytest) process while the driver runs
        driven = python(DRIVER, plan, cwd=cwd, timeout=600)
    assert driven.returncode == 0, driven.stderr[-3000:]
    line = next(x for x in driven.stdout.splitlines() if x.startswith("RESULTS "))
    w["results"] = {name: Result(code, out, err, driven.peak_mb)
                    for name, (code, out, err) in json.loads(line[len("RESULTS "):]).items()}
    w["left"] = (left1, left2, left3)
    return w


def test_an_index_never_names_the_model_that_runs(runs):
    r, evil = runs["results"], runs["evil"]
    line = assert_clean_error(r["no_model"], 2, "is not inside an export", "pass --model EXPORT", "never runs a model")
    assert str(evil) in line  # what the index claims, shown as information only
    assert_clean_error(r["model_a"], 2, "was built by model 'b'", "not by", "fingerprints of their files differ")
    assert_clean_error(r["add_no_model"], 2, "pass --model EXPORT")
    assert_clean_error(r["serve_no_model"], 2, "pass --model EXPORT")
    assert "index: " not in r["serve_no_model"].stdout and not (runs["root"] / "served_evil").exists()
    # An index inside an export belongs to it: a claim of another model is refused, --model must agree.
    assert_clean_error(r["inside_export"], 2, "was built by model 'b'", "not by", str(runs["a_copy"]))
    assert_clean_error(r["inside_index"], 2, "was built by model 'b'")
    assert_clean_error(r["inside_other_model"], 2, "belongs to the export", "a different model")
    # The garbage graph was never loaded (it would have been a traceback), nothing was written in it.
    assert tree_snapshot(evil.parent) == runs["evil_before"]
    assert tree_snapshot(runs["root"] / "exports") == runs["exports_before"]
    # The untouched copy, searched with the user's model: A embeds, the query finds itself.
    ok = r["copy_model_a"]
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr[-2000:]
    assert "   1   1.0000  Coat             Coat/Coat_3.png" in ok.stdout, ok.stdout


def test_paths_in_an_index_resolve_against_the_index_folder(runs):
    result = runs["results"]["relative_paths"]
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (runs["root"] / "grids" / "relative.png").is_file()  # the grid read the images via ../images
    assert "Coat/Coat_3.png" in result.stdout
    assert not list(runs["cwd"].iterdir())  # nothing resolved against, or written to, the cwd


def test_retrieval_savedmodel_returns_catalogue_ids_not_server_paths(runs):
    r, served, shop = runs["results"], runs["served"], runs["shop"]
    assert r["build_serve"].returncode == 0, r["build_serve"].stderr[-2000:]
    ids = json.loads(r["retrieval_ids"].stdout)
    assert ids[0][0] == "Coat/Coat_3.png" and not any(i.startswith("/") or str(shop) in i for i in ids[0])
    # The server's layout is in no file a client is served from (export.json is tfsim's own notes).
    for f in (served / "a_exact" / "1").rglob("*"):
        if f.is_file() and f.name != "export.json":
            assert str(shop).encode() not in f.read_bytes(), f
    assert r["build_paths"].returncode == 0, r["build_paths"].stderr[-2000:]
    from tfsim.index import storage

    paths = storage.load(runs["root"] / "idx_paths")
    assert paths.meta["id_kind"] == "path" and all(i.startswith(str(runs["root"])) for i in paths.ids)


@pytest.mark.parametrize("name, fragments", [
    ("a_list", ["index.json's `(top level)` is 'list'", "expected a JSON object"]),
    ("mode", ["`params.num_leaves` is None", "expected an integer >= 1"]),
    ("renamed_classes", ["index.json was changed after it was written"]),
    ("no_files", ["index.json has no `files`"]),
    ("no_digest", ["index.json has no `digest`"]),
    ("old_format", ["older format 'tfsim.scann_index.v2'", "rebuild it"]),
    ("unknown_mode", ["`params.mode` is 'faiss'", "expected one of ['brute_force', 'tree_ah', 'hamming']"]),
    ("fewer_classes", ["labels run from 0 to 2, but index.json names 2 classes"]),
    ("partial_files", ["is not in index.json's list of files"]),
])
def test_index_json_damage_is_one_line(runs, name, fragments):
    assert_clean_error(runs["results"][f"damaged_{name}"], 2, f"damaged/{name}", "rebuild", *fragments)


def test_index_json_damage_refuses_an_update_and_changes_nothing(runs):
    assert_clean_error(runs["results"]["damaged_add"], 2, "index.json has no `files`")
    assert tree_snapshot(runs["root"] / "damaged") == runs["damaged_before"]


def test_an_interrupted_update_is_recovered_and_said(runs):
    r = runs["results"]
    left1, left2, left3 = runs["left"]
    got = r["recover_tmp"]
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr[-2000:]
    assert "restored the update it had finished writing from .tmp-idx-89abcdef" in got.stderr
    assert "Removed .old-idx-0123abcd" in got.stderr and "Removed .tmp-idx-deadbeef" in got.stderr
    assert "60 nearest gallery items" in got.stdout  # the completed update (60), not the old index (10)
    assert sorted(p.name for p in left1.iterdir()) == ["idx"]

    added = r["recover_old_then_add"]
    assert added.returncode == 0 and "added 4 images" in added.stdout, added.stderr[-2000:]
    assert "restored the index as it was before the update from .old-idx-0123abcd" in added.stderr
    assert "index: " in added.stdout and "(14 images, 4 classes" in added.stdout
    assert sorted(p.name for p in left2.iterdir()) == ["idx"]

    line = assert_clean_error(r["nothing_to_recover"], 2, "is not a tfsim index",
                              ".tmp-idx-aaaa1111 (incomplete: no index.json)")
    assert "leftovers" in line and (left3 / ".tmp-idx-aaaa1111").is_dir()  # kept: it may be all there is


def test_a_locked_index_is_not_updated(runs):
    assert_clean_error(runs["results"]["locked_add"], 2, "is in use by another tfsim process", f"pid {os.getpid()}")
    assert tree_snapshot(runs["locked"].parent) == runs["locked_before"]


def test_search_says_how_many_it_found_and_where_it_cannot_write(runs):
    r = runs["results"]
    top = r["top_k"]
    assert top.returncode == 0, top.stderr[-2000:]
    assert "60 nearest gallery items of" in top.stdout and "(the index holds 60 images):" in top.stdout
    assert len([x for x in top.stdout.splitlines() if x[:4].strip().isdigit()]) == 60
    assert_clean_error(r["out_under_file"], 2, "cannot write", "afile/x.png", "is a file, not a folder")
    assert (runs["root"] / "afile").read_text() == "mine"
