"""An image the decoder refuses in the middle of a command (a file replaced after the loader checked
it, an image of a TFDS set, which is not checked at load) ends the command with one line naming the
file, its size and the limit, exit 2, no traceback."""

import io

import pytest
import tensorflow as tf
from PIL import Image

from tfsim.data.preprocess import decode_file
from tfsim.pipelines import _cli


def test_a_refusal_inside_a_tf_data_pipeline_is_one_line(tmp_path, capsys):
    path = tmp_path / "swapped.png"
    data = io.BytesIO()
    Image.new("RGB", (300, 200)).save(data, "PNG")
    path.write_bytes(data.getvalue())

    def main(argv):  # as the training loop meets it: inside a tf.data map, raised at iteration
        ds = tf.data.Dataset.from_tensor_slices([str(path)]).map(lambda p: decode_file(p, max_pixels=50_000))
        for _ in ds:
            pass
        return 0

    with pytest.raises(SystemExit) as exited:
        _cli.run(main, [])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Image (") and "swapped.png" in lines[0], err
    assert "of 300 x 200 pixels (width x height) is above the limit of 50000 pixels" in lines[0]
