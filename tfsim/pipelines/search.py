"""`python -m tfsim.pipelines.search (--model saved_models/<name>/<version> | --index DIR) --image q.png [--top-k 6]`

Prints the k nearest gallery items of an image (from the export's own ScaNN index, or an
index built by `python -m tfsim.pipelines.index`, searched with `--model`, the export that built
it) and writes a PNG grid: the query on the left, the results to its right, labelled. A result
with the query's own pixels (a query taken from the gallery finds itself first) is marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tfsim.errors import UserInputError
from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.search", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an export version folder: saved_models/<name>/<version> (with --index: "
                                        "the export that built it; needed unless the index is inside it)")
    parser.add_argument("--index", help="an index folder built by python -m tfsim.pipelines.index "
                                        "(default: the index inside the export)")
    parser.add_argument("--image", required=True, help="query image (JPEG/PNG/BMP/GIF)")
    parser.add_argument("--top-k", type=int, default=6, help="number of results (default 6)")
    parser.add_argument("--out", default=None, help="PNG grid to write (default: search_<image name>.png)")
    args = parser.parse_args(argv)


    if args.top_k < 1:  # (search_image checks it too; here before TensorFlow is imported, to be reported at once)
        raise UserInputError(f"Invalid value for `--top-k`: expected an integer >= 1. Received: {args.top_k}")
    from tfsim.export import check_output, render_grid, search_image  # lazy: TensorFlow, after the checks

    out = check_output(args.out or f"search_{Path(args.image).stem}.png")
    result = search_image(args.model, args.image, args.top_k, args.index)
    found = len(result.ids)
    note = f" (the index holds {result.gallery_size} images)" if found < args.top_k else ""
    print(f"{found} nearest gallery items of {args.image}{note}:")
    print(f"{'rank':>4}  {'score':>7}  {'label':<16} id")
    for i, (score, label, id_, same) in enumerate(zip(result.scores, result.labels, result.ids,
                                                      result.same_as_query), start=1):
        print(f"{i:>4}  {score:>7.4f}  {label:<16} {id_}" + ("  (the query image itself: it is in the gallery)"
                                                             if same else ""))
    out = render_grid(result, out)
    print(f"grid written to {out}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
