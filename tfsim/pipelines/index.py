"""`python -m tfsim.pipelines.index --model saved_models/<name>/<version> --data DATA --out DIR`

Embeds a catalogue of images with an export and writes a ScaNN index that tunes itself to
--target-recall (`tfsim.index.catalogue` does the work); `--add DATA --index DIR` inserts new
images into an existing index. DATA is a folder <dir>/<class>/<image>, a list file,
tfds:NAME[:SPLIT] or default. Search it with `python -m tfsim.pipelines.search --index DIR`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.index", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an export version folder (for --add: default, the model that built the index)")
    parser.add_argument("--data", help="the catalogue to index")
    parser.add_argument("--out", help="the index folder to create")
    parser.add_argument("--add", metavar="DATA", help="images to add to the index given by --index")
    parser.add_argument("--index", help="an existing index folder (with --add)")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="recall@k the index tunes itself to reach (default: index.target_recall, 0.95)")
    parser.add_argument("--num-neighbors", type=int, default=None, help="the k of the tuning (default 10)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    from tfsim import config as config_lib
    from tfsim.errors import UserInputError
    from tfsim.index import catalogue, scann_index

    if args.add is not None:
        if not args.index or args.data or args.out:
            raise UserInputError("--add DATA needs --index DIR (and no --data / --out).")
        path, added = catalogue.add_to_index(args.index, args.add, args.model, args.batch_size)
    else:
        if not (args.model and args.data and args.out):
            raise UserInputError("Give --model EXPORT --data DATA --out DIR to build an index, or --add DATA "
                                 "--index DIR to add to one.")
        overrides = [f"index.{key}={value}" for key, value in
                     (("target_recall", args.target_recall), ("num_neighbors", args.num_neighbors)) if value is not None]
        cfg = config_lib.load("default", overrides)
        config_lib.validate(cfg)
        path = catalogue.build_index(args.model, args.data, args.out, scann_index.options(cfg.index), args.batch_size)
        added = None
    meta = json.loads((Path(path) / "index.json").read_text())
    p = meta["params"]
    print(f"\nindex: {path} ({meta['size']} images, {len(meta['class_names'])} classes, {p['mode']})")
    if added is not None:
        print(f"added {added} images")
    if p["mode"] == "tree_ah":
        print(f"{p['num_leaves']} leaves, {p['num_leaves_to_search']} searched, reorder {p['reorder']}: "
              f"recall@{p['num_neighbors']} {p['measured_recall']:.3f} (target {p['target_recall']}) on "
              f"{p['tuning']['sample']} gallery queries, {p['queries_per_second']:,.0f} queries/s")
    print(f"search it: python -m tfsim.pipelines.search --index {path} --image IMAGE")
    return 0


if __name__ == "__main__":
    _cli.run(main)
