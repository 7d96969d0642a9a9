"""`python -m tfsim.pipelines.index --model saved_models/<name>/<version> --data DATA --out DIR`

Embeds a catalogue of images with an export and writes a ScaNN index that tunes itself to
--target-recall (`tfsim.export.catalogue` does the work); `--add DATA --index DIR` inserts new
images into an existing index (with `--model`, the export that built it, unless the index lies
inside it); `--ids path` makes the index return absolute file paths as ids instead of paths
relative to the data root; `--serve ROOT` also writes the retrieval SavedModels of the
index (`tfsim.export.retrieval`: image bytes in, top-k ids/labels/scores out) to
ROOT/<name>_exact/<version> and ROOT/<name>_scann/<version> (with only --index DIR, the
SavedModels of that index), with TF Serving warm-up records, ROOT/models.config (what stock
TF Serving loads: every model but ScaNN's) and ROOT/models_scann.config (all of them, for a
TF Serving built with ScaNN's ops). DATA is a folder
<dir>/<class>/<image>, a list file, tfds:NAME[:SPLIT] or default. Search an index with
`python -m tfsim.pipelines.search --index DIR --model EXPORT`. `--embeddings SHARDS --out DIR`
builds the index from the embedding shards of `python -m tfsim.pipelines.embed` without
re-embedding, and `--add SHARDS --index DIR` appends them (`tfsim.catalogue`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tfsim import config as config_lib
from tfsim.errors import UserInputError
from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.index", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an export version folder (with --add or --index --serve: the export that "
                                        "built the index; needed unless the index is inside it)")
    parser.add_argument("--data", help="the catalogue to index")
    parser.add_argument("--out", help="the index folder to create")
    parser.add_argument("--embeddings", metavar="SHARDS", help="build from the embedding shards of the embed command "
                                                               "(instead of --model/--data)")
    parser.add_argument("--max-items", type=int, default=0,
                        help="with --embeddings: split an index of more items into parts of at most this many, "
                             "searched by fan-out and merge (tfsim.index.ShardedIndex; docs/serving.md)")
    parser.add_argument("--add", metavar="DATA", help="images (or embedding shards) to add to the index given by "
                                                      "--index")
    parser.add_argument("--index", help="an existing index folder (with --add)")
    parser.add_argument("--ids", choices=("relative", "path"), default=None,
                        help="ids the index returns: each image's path relative to the data root (default, e.g. "
                             "Coat/img_12.png) or its absolute path (shows this machine's file layout to clients)")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="recall@k the index tunes itself to reach (default: index.target_recall, 0.95)")
    parser.add_argument("--num-neighbors", type=int, default=None, help="the k of the tuning (default 10)")
    parser.add_argument("--serve", metavar="ROOT", help="also write the retrieval SavedModels to this export root")
    parser.add_argument("--kinds", default=None, help="retrieval SavedModels to write (default: exact,scann for an "
                                                      "embedding index, hamming for binary codes)")
    parser.add_argument("--top-k", type=int, default=10,
                        help="neighbours each retrieval SavedModel returns (default 10)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)


    # The arguments and the config are checked before TensorFlow is imported: a mistake is reported at once.
    serve_only = args.index and args.add is None and args.serve and not (args.data or args.out)
    if args.add is not None and (not args.index or args.data or args.out or args.ids):
        raise UserInputError("--add DATA needs --index DIR (and no --data / --out / --ids: added images get ids "
                             "of the kind the index was built with).")
    if args.max_items < 0 or (args.max_items and (not args.embeddings or args.serve)):
        raise UserInputError("--max-items N (>= 0) splits an index built from --embeddings SHARDS into parts (serve "
                             "each part on its own: --index DIR/part-NNNNN --serve ROOT_NNNNN).")
    if args.embeddings and args.model and not args.serve:
        raise UserInputError("--embeddings SHARDS builds with the export the shards record: --model is only for "
                             "--serve (the export to write the retrieval SavedModels with).")
    if args.embeddings and (args.data or args.add is not None or args.ids or not args.out):
        raise UserInputError("--embeddings SHARDS takes --out DIR (and no --data / --add / --ids: the shards hold "
                             "their ids).")
    if not serve_only and args.add is None:
        if not (args.embeddings or (args.model and args.data)) or not args.out:
            raise UserInputError("Give --model EXPORT --data DATA --out DIR to build an index, or --add DATA "
                                 "--index DIR to add to one.")
        overrides = [f"index.{key}={value}" for key, value in
                     (("target_recall", args.target_recall), ("num_neighbors", args.num_neighbors))
                     if value is not None]
        cfg = config_lib.load("default", overrides)
    from tfsim.export import add_to_index, build_index, index_model  # lazy: TensorFlow, after the checks
    from tfsim.index import build_options, read_meta  # lazy: TensorFlow, after the checks

    added = None
    shards = args.embeddings or (args.add if args.add is not None and any(
        (Path(args.add) / name).is_file() for name in ("manifest.json", "plan.json")) else None)
    if serve_only:
        path = Path(args.index)  # only the retrieval SavedModels of an existing index
    elif shards:
        from tfsim.catalogue import add_shards, index_shards  # lazy: pyarrow, only for shards
        if args.add is not None:
            path, added = add_shards(args.index, shards)
        else:
            path = index_shards(shards, args.out, {**build_options(cfg.index),
                                                   "hamming_exact_below": cfg.index.hamming_exact_below},
                                max_items=args.max_items)
            if (path / "parts.json").is_file():
                parts = json.loads((path / "parts.json").read_text())
                print(f"\nsharded index: {path} ({parts['size']:,} images in {len(parts['parts'])} parts of at most "
                      f"{args.max_items:,}, each tuned on its own; search with tfsim.index.ShardedIndex.load; serve "
                      f"each part from a root of its own: --index {path}/part-00000 --model EXPORT --serve ROOT_00000)")
                return 0
    elif args.add is not None:
        path, added = add_to_index(args.index, args.add, args.model, args.batch_size)
    else:
        path = build_index(args.model, args.data, args.out,
                           {**build_options(cfg.index), "hamming_exact_below": cfg.index.hamming_exact_below},
                           args.batch_size,
                           ids=args.ids or "relative")
    meta = read_meta(path)
    model = index_model(path, args.model, meta) if args.serve else None  # (before printing anything)
    p = meta["params"]
    print(f"\nindex: {path} ({meta['size']} images, {len(meta['class_names'])} classes, {p['mode']})")
    if added is not None:
        print(f"added {added} images")
    if p["mode"] == "tree_ah":
        print(f"{p['num_leaves']} leaves, {p['num_leaves_to_search']} searched, reorder {p['reorder']}: "
              f"recall@{p['num_neighbors']} {p['measured_recall']:.3f} (target {p['target_recall']}) on "
              f"{p['tuning']['sample']} gallery queries, {p['queries_per_second']:,.0f} queries/s")
    elif p["mode"] == "hamming":
        print("exact Hamming search" if p.get("engine", "exact") == "exact" else
              f"inverted file of {p['num_lists']} lists, {p['num_lists_to_search']} searched: "
              f"recall@{p['num_neighbors']} {p['measured_recall']:.3f} (target {p['target_recall']}) on "
              f"{p['tuning']['sample']} gallery queries, {p['queries_per_second']:,.0f} queries/s")
    model_path = args.model or ((meta.get("model") or {}).get("path") if shards else None)
    model_arg = f" --model {model_path}" if model_path else ""
    print(f"search it: python -m tfsim.pipelines.search --index {path}{model_arg} --image IMAGE")
    if args.serve:
        from tfsim.export import SCANN_CONFIG, STOCK_CONFIG, export_retrieval  # lazy: TensorFlow, after the checks

        kinds = None if args.kinds is None else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        for kind, folder in export_retrieval(model, path, args.serve, args.top_k, kinds).items():
            print(f"retrieval SavedModel ({kind}): {folder}")
        print(f"TF Serving configs: {Path(args.serve) / STOCK_CONFIG} (stock tensorflow/serving: every model but "
              f"ScaNN's), {Path(args.serve) / SCANN_CONFIG} (a TF Serving built with ScaNN's ops: all of them)")
    return 0


if __name__ == "__main__":
    _cli.run(main)
