"""`python -m tfsim.pipelines.evaluate --model MODEL [--data DATA | --query DATA --gallery DATA]`
or `--embeddings SHARDS` (the embed command's output: evaluated without re-embedding)

Retrieval quality of a trained model on any images (`tfsim.training.assessment` does the
work). MODEL is an export saved_models/<name>/<version>, a run folder runs/<name> (its latest
checkpoint) or a checkpoint runs/<name>/checkpoints/epoch-NNNN.keras; a run's model is
evaluated on the run's held-out classes when no data is given. DATA is a folder
<dir>/<class>/<image>, a list file, tfds:NAME[:SPLIT] or default. Writes metrics.json and
metrics.md (with the classes worst first) to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tfsim.errors import UserInputError
from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", metavar="SHARDS",
                        help="evaluate the embedding shards of the embed command (instead of --model and data)")
    parser.add_argument("--model",
                        help="an export saved_models/<name>/<version>, a run folder runs/<name> (its latest "
                             "checkpoint) "
                             "or a checkpoint runs/<name>/checkpoints/epoch-NNNN.keras")
    parser.add_argument("--data", help="one set: each image queries all the others (or its own query/gallery split); "
                                       "default for a run: its held-out classes")
    parser.add_argument("--query", help="the query set (with --gallery)")
    parser.add_argument("--gallery", help="the gallery set (with --query); classes are matched by name")
    parser.add_argument("--ks", default="1,2,4,8", help="the K of Recall@K, comma-separated (default 1,2,4,8)")
    parser.add_argument("--out", default=None, help="report folder (default: runs/eval/<name>_v<version>, "
                                                    "or runs/eval/<run>_<checkpoint>)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="skip images whose header declares more pixels (width x height), undecoded "
                             "(default: the export's limit, or the run's data.max_pixels)")
    parser.add_argument("--ann", action="store_true",
                        help="also the metrics from a ScaNN index of the gallery, and their gap to exact on a sample")
    args = parser.parse_args(argv)


    # The arguments are checked before TensorFlow is imported: a mistake is reported at once.
    try:
        ks = tuple(int(k) for k in args.ks.split(",") if k.strip())
    except ValueError:
        raise UserInputError(f"Invalid --ks {args.ks!r}: expected integers separated by commas, "
                             "e.g. 1,2,4,8.") from None
    if not ks or min(ks) < 1:
        raise UserInputError(f"Invalid --ks {args.ks!r}: expected integers >= 1.")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise UserInputError(f"Invalid --max-pixels {args.max_pixels}: expected an integer >= 1 (width x height).")
    if bool(args.embeddings) == bool(args.model):
        raise UserInputError("Give --model MODEL (with data, or a run's held-out classes) or --embeddings SHARDS.")
    if args.embeddings and (args.data or args.query or args.gallery or args.max_pixels):
        raise UserInputError("--embeddings SHARDS is evaluated as it is: no --data / --query / --gallery / "
                             "--max-pixels (the shards hold their images' embeddings, labels and splits).")
    from tfsim.training import evaluate  # lazy: TensorFlow, after the checks

    if args.embeddings:
        from tfsim.catalogue import evaluate_shards  # lazy: pyarrow, only for shards
        out = Path(args.out) if args.out else Path("runs") / "eval" / f"{Path(args.embeddings).resolve().name}_shards"
        m = evaluate_shards(args.embeddings, ks, out, ann=args.ann)
        m["data"] = f"the embedding shards {args.embeddings} (of {m['data']})"
        return _report(m, ks, out)
    model = Path(args.model)
    if args.out:
        out = Path(args.out)
    elif model.suffix == ".keras":
        out = Path("runs") / "eval" / f"{model.parent.parent.name}_{model.stem}"
    elif (model / "config.json").is_file():
        out = Path("runs") / "eval" / f"{model.name}_latest"
    else:
        out = Path("runs") / "eval" / f"{model.parent.name}_v{model.name}"
    m = evaluate(model, args.data, args.query, args.gallery, ks, out, args.batch_size, ann=args.ann,
                 max_pixels=args.max_pixels)
    return _report(m, ks, out)


def _report(m: dict, ks, out: Path) -> int:
    from tfsim.training import format_table  # lazy: TensorFlow, after the checks
    if m["model_kind"] == "checkpoint":
        d = m["model_details"]
        print(f"\ncheckpoint {d['checkpoint']} of {d['run']} (whitening {d['whitening']})")
    print(f"\n{m['num_queries']} queries ({m['protocol']}) on {m['data'] or m['query'] + ' vs ' + m['gallery']}:")
    print(format_table(m, ks))
    if "hamming" in m:
        h = m["hamming"]
        print(f"binary codes (Hamming): map {h['map']:.4f}, map@100 {h['map@100']:.4f}, "
              f"precision within radius 2 {h['precision@r2']:.4f}")
    worst = sorted(m["per_class"].items(), key=lambda item: (item[1]["map@r"], item[0]))[:5]
    print("worst classes (MAP@R): " + ", ".join(f"{name} {v['map@r']:.3f}" for name, v in worst))
    if m["skipped_files"]:
        first = m["skipped_files"][0]
        print(f"skipped {len(m['skipped_files'])} image file(s) that cannot be used, e.g. {first['path']} "
              f"({first['reason']}): all listed in metrics.json (skipped_files)")
    print(f"report: {out / 'metrics.md'} (and metrics.json)")
    return 0


if __name__ == "__main__":
    _cli.run(main)
