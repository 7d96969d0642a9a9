"""Decompression bombs sent to every serving signature kind: the embedder's `serving_default` and the
exact, ScaNN and Hamming retrieval SavedModels. Each is loaded in a fresh process as TF Serving
would (plain TensorFlow; `import scann` only for the ScaNN one) and sent a 440 KB PNG that declares
12,000 x 12,000 pixels beside a valid image: it answers InvalidArgumentError naming the size and
the limit, its peak memory does not grow (decoding it would take 432 MB of pixels and ~1.7 GB at
the peak), and it then answers a valid request as before."""

import io
import json

import pytest
from PIL import Image

from tests.images import class_folders
from tests.reliability.helpers import python, tiny_export
from tfsim.export.retrieval import export_retrieval
from tfsim.export import catalogue

pytestmark = pytest.mark.slow  # fresh TF processes

SERVE = r'''
import json, resource, sys
import tensorflow as tf
paths, bomb_file, small_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
bomb, small = open(bomb_file, "rb").read(), open(small_file, "rb").read()
report = {}
for kind, path in paths.items():
    if kind == "scann":
        import scann  # noqa: F401  (registers the Scann ops, as a ScaNN-enabled server has them)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    first = {k: v.numpy().tolist() for k, v in serve(image_bytes=tf.constant([small])).items() if v.dtype != tf.string}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        serve(image_bytes=tf.constant([small, bomb, small]))
        message = None
    except tf.errors.InvalidArgumentError as err:
        message = [line for line in err.message.splitlines() if "pixels" in line][0]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    again = {k: v.numpy().tolist() for k, v in serve(image_bytes=tf.constant([small])).items() if v.dtype != tf.string}
    report[kind] = {"message": message, "grown_mb": grown, "same_after": again == first}
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def servables(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    data = class_folders(root / "catalogue", ["a", "b", "c"], 8, 0)
    models = root / "models"
    embedder, hashing = tiny_export(models, "shop"), tiny_export(models, "codes", head="hash")
    out = {"embedder": embedder}
    for export in (embedder, hashing):
        index = catalogue.build_index(export, str(data), root / f"index_{export.parent.name}", progress=False)
        out.update(export_retrieval(export, index, models, k=3))
    bomb = io.BytesIO()
    Image.new("RGB", (12000, 12000)).save(bomb, "PNG")
    (root / "bomb.png").write_bytes(bomb.getvalue())
    return root, {kind: str(path) for kind, path in out.items()}


def test_every_serving_signature_refuses_a_bomb_in_bounded_memory(servables):
    root, paths = servables
    assert set(paths) == {"embedder", "exact", "scann", "hamming"}
    assert (root / "bomb.png").stat().st_size < 500_000
    result = python(SERVE, json.dumps(paths), root / "bomb.png", root / "catalogue" / "a" / "a_0.png")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for kind, got in report.items():
        assert got["message"] is not None, kind
        assert "12000 x 12000 pixels" in got["message"] and "limit of 50000000 pixels" in got["message"], got
        assert got["grown_mb"] < 100, (kind, got)  # decoding it would take >= 432 MB
        assert got["same_after"], kind
    meta = json.loads((root / "models" / "shop" / "1" / "assets.extra" / "tfsim" / "export.json").read_text())
    assert meta["max_pixels"] == 50_000_000


def test_the_export_limit_is_the_one_it_was_exported_with(tmp_path):
    """export.max_pixels is baked into the graph: an export made with a 1,000-pixel limit refuses a
    40 x 40 image that the default accepts, names its own limit, and serves a 30 x 30 one."""
    import tensorflow as tf

    export = tiny_export(tmp_path / "models", "small", max_pixels=1000)
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]

    def jpeg(side):
        image = io.BytesIO()
        Image.new("RGB", (side, side)).save(image, "JPEG")
        return image.getvalue()

    assert serve(image_bytes=tf.constant([jpeg(30)]))["embeddings"].shape == (1, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="40 x 40 pixels .* above the limit of 1000 pixels"):
        serve(image_bytes=tf.constant([jpeg(30), jpeg(40)]))
    meta = json.loads((export / "assets.extra" / "tfsim" / "export.json").read_text())
    assert meta["max_pixels"] == 1000
