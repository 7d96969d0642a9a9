"""`python -m tfsim.pipelines.embed --model EXPORT --data DATA --out DIR [Beam pipeline options]`

Embeds a catalogue on Apache Beam (`tfsim.catalogue.job` does the work): the images of DATA (a
folder <dir>/<class>/<image>, a list file, tfds:NAME[:SPLIT] or default) go through the export's
own serving signature with Beam's RunInference, into Parquet embedding shards with a manifest
under DIR; files that cannot be embedded are set aside in DIR/bad_files.jsonl with the reason, and
the job goes on. Rerun the same command to complete a job that was killed: only the missing shards
are embedded. Without Beam options it runs on the local cores (DirectRunner, one process per
core); any Beam options pass through unchanged, e.g. `--runner=DataflowRunner --project=P
--region=R --temp_location=gs://B/tmp` (see docs/serving.md). Then: `python -m
tfsim.pipelines.index --embeddings DIR --out IDX`, `python -m tfsim.pipelines.evaluate
--embeddings DIR`. Needs the beam extra: pip install -e ".[beam]".
"""

from __future__ import annotations

import argparse
import logging

from tfsim.errors import UserInputError
from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.embed", description=__doc__.splitlines()[0],
                                     epilog="Other arguments are Beam pipeline options, passed through.")
    parser.add_argument("--model", required=True, help="an export version folder")
    parser.add_argument("--data", required=True, help="the catalogue to embed")
    parser.add_argument("--out", required=True, help="the shards folder (new, or a killed job's to complete)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="images per shard: the unit of work, of output files and of reruns (default 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="largest batch given to the model (default 64)")
    parser.add_argument("--ids", choices=("relative", "path"), default="relative",
                        help="ids: each image's path relative to the data root (default) or its absolute path")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the local DirectRunner (default: one per core)")
    args, beam_args = parser.parse_known_args(argv)
    if args.shard_size < 1 or args.batch_size < 1 or (args.workers is not None and args.workers < 1):
        raise UserInputError("--shard-size, --batch-size and --workers take integers >= 1.")
    runner = next((a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")), "DirectRunner")
    if args.workers is not None and runner not in ("DirectRunner", "direct"):
        raise UserInputError(f"--workers sets the local DirectRunner's processes; with --runner={runner} set the "
                             "runner's own worker options (e.g. Dataflow's --num_workers / --max_num_workers).")
    unknown = [a for a in beam_args if not a.startswith("--")]
    if unknown:
        raise UserInputError(f"Unexpected arguments {unknown}: Beam options are written --name=value.")
    try:
        from tfsim.catalogue import embed_catalogue  # lazy: Beam and TensorFlow, after the checks
    except ImportError as err:
        if "apache_beam" not in str(err):
            raise
        raise UserInputError("The embed command runs on Apache Beam: pip install -e \".[beam]\".") from None
    for name in ("apache_beam", "apache_beam.runners", "apache_beam.transforms.util"):
        logging.getLogger(name).setLevel(logging.WARNING)
    manifest = embed_catalogue(args.model, args.data, args.out, beam_args, args.shard_size, args.batch_size,
                               args.ids, args.workers)
    seconds = manifest["seconds"]
    rate = manifest["images"] / seconds if seconds and manifest["embedded_now"] == manifest["num_shards"] else None
    print(f"\nembeddings: {args.out} ({manifest['images']:,} images in {manifest['num_shards']} shards"
          + (f", {manifest['embedded_now']} embedded by this run" if manifest["embedded_now"] < manifest["num_shards"]
             else "") + (f"; {rate:,.0f} images/s" if rate else "") + ")")
    counters = manifest.get("counters") or {}
    if counters:
        print("Beam counters (tfsim): " + ", ".join(f"{k} {v:,}" for k, v in sorted(counters.items())))
    if manifest["bad_files"]:
        print(f"bad files: {manifest['bad_files']:,} set aside, listed with the reason in {args.out}/bad_files.jsonl")
    print(f"index them: python -m tfsim.pipelines.index --embeddings {args.out} --out INDEX")
    return 0


if __name__ == "__main__":
    _cli.run(main)
