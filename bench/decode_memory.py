"""What decoding an image costs in memory, and what the pixel limit saves: the figures behind
`tfsim.data.formats.DEFAULT_MAX_PIXELS` (data.max_pixels, export.max_pixels).

Each row is one fresh process that loads an export's `serving_default` (the graph TF Serving
runs: header check, decode, resize, network) and sends it one black image of the given size,
after a warm-up request of a small one: the growth of the process's peak resident memory is what
that one request cost. With the limit lifted (`max_pixels=0`) it is the cost of decoding; with
the default limit, an image above it is refused before decoding. One run, one machine.

    python bench/decode_memory.py          # ~1 min
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import io, json, resource, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
data = open(sys.argv[2], "rb").read()
small = tf.io.encode_png(tf.zeros([64, 64, 3], tf.uint8))
serve(image_bytes=tf.stack([small]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    serve(image_bytes=tf.constant([data]))
    answer = "embedded"
except tf.errors.InvalidArgumentError:
    answer = "refused"
print(json.dumps({"answer": answer, "grown_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
'''


def main() -> None:
    from PIL import Image

    from tfsim.data.formats import DEFAULT_MAX_PIXELS
    from tfsim.export import export_embedder
    from tfsim.models import build_embedding_model

    work = Path(tempfile.mkdtemp(prefix="decode_memory_"))
    model = build_embedding_model("small_resnet", 28, 64, seed=0)
    exports = {limit: export_embedder(model, work / "models", f"limit{limit}", 28, max_pixels=limit)
               for limit in (0, DEFAULT_MAX_PIXELS)}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"{'image':>13} {'MP':>6} {'file KB':>8}  {'limit':>10}  {'answer':>8} {'peak +MB':>9} {'B/pixel':>8}")
    for side, fmt in ((2000, "PNG"), (4000, "JPEG"), (4000, "PNG"), (7000, "PNG"), (12000, "PNG")):
        path = work / f"{side}.{fmt.lower()}"
        data = io.BytesIO()
        Image.new("RGB", (side, side)).save(data, fmt)
        path.write_bytes(data.getvalue())
        for limit, export in exports.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(export), str(path)], capture_output=True,
                                 text=True, env=env, timeout=600)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            per_pixel = got["grown_mb"] * 2 ** 20 / side ** 2
            print(f"{side:>6}x{side:<5}{fmt:>4} {side * side / 1e6:>5.0f} {path.stat().st_size / 1024:>8.0f}  "
                  f"{limit or 'none':>10}  {got['answer']:>8} {got['grown_mb']:>9.0f} {per_pixel:>8.1f}")


if __name__ == "__main__":
    main()
