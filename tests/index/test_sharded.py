"""A sharded index (parts searched by fan-out and merge) answers as one index over all items."""

import json

import numpy as np
import pytest

from tfsim.errors import UserInputError
from tfsim.index import Index, ShardedIndex


def _parts(tmp_path, x, ids, sizes):
    names, lo = [], 0
    for i, size in enumerate(sizes):
        names.append(f"part-{i:05d}")
        Index.build(x[lo:lo + size], ids=ids[lo:lo + size]).save(tmp_path / names[-1])
        lo += size
    return ShardedIndex.write_parts(tmp_path, names)


def test_fan_out_and_merge_is_one_exact_index(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 8)).astype(np.float32)
    ids = np.array([f"item/{i:03d}" for i in range(90)])
    folder = _parts(tmp_path, x, ids, [40, 40, 10])
    sharded = ShardedIndex.load(folder)
    assert len(sharded) == 90 and len(sharded.parts) == 3
    whole = Index.build(x, ids=ids)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    for k in (1, 7, 95):
        want_scores, want_ids = whole.search(queries, k)
        scores, found = sharded.search(queries, k)
        assert found.shape == want_ids.shape == (25, min(k, 90))
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        np.testing.assert_array_equal(found, want_ids)
    # a naive reference: cosine against every item, best first
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(sharded.search(queries, 5)[1], ids[np.argsort(-(q @ unit.T), axis=1)[:, :5]])


def test_a_damaged_or_changed_sharded_index_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    folder = _parts(tmp_path, x, np.arange(30), [15, 15])
    meta = json.loads((folder / "parts.json").read_text())
    (folder / "parts.json").write_text(json.dumps(dict(meta, sizes=[15, 14])))
    with pytest.raises(UserInputError, match="do not hold the items parts.json records"):
        ShardedIndex.load(folder)
    (folder / "parts.json").write_text(json.dumps(dict(meta, parts=["../elsewhere"])))
    with pytest.raises(UserInputError, match="does not name the parts"):
        ShardedIndex.load(folder)
    (folder / "parts.json").write_text("{")
    with pytest.raises(UserInputError, match="is not a sharded index"):
        ShardedIndex.load(folder)
    with pytest.raises(ValueError, match="at least one part"):
        ShardedIndex([])
