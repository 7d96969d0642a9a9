"""Embedding a catalogue on Apache Beam: `embed_catalogue(model, data, out)`.

The driver (this process) lists the images of a data spec without opening them
(`load_source(check_files=False)`), cuts the listing into input shards of `shard_size` rows
and writes that plan (`tfsim.catalogue.shards`). The Beam pipeline then runs on any runner:

    shard indices (those without a Parquet file yet)      beam.Create, Reshuffle
      -> ReadShard: each row's file bytes, keyed (shard, row)  (a file that cannot be read, or is
         larger than `max_file_bytes`: a dead letter)
      -> RunInference(KeyedModelHandler(ExportHandler))  the export's own `serving_default`
         (decode, pixel limit, resize, crop, network), batched by Beam, the SavedModel loaded
         once per worker process; an image the signature refuses is found by retrying its batch
         one image at a time and becomes a dead letter with TensorFlow's reason
      -> GroupByKey(shard) -> WriteShard: the shard's dead letters, then its Parquet file
         (the commit; `shards.write_shard`)

and the driver writes manifest.json when every planned shard is in place. Counters under the
"tfsim" namespace: images, bad_files, shards; the gauge images_per_second (each worker's).

By default the pipeline runs on Beam's DirectRunner in multi-process mode, one worker process
per local core: no set-up on one machine. Any Beam pipeline options pass through unchanged
(`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`, Flink, Spark);
`out` and the images must then be on a filesystem every worker sees (see docs/serving.md).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from tfsim import locks
from tfsim.catalogue import shards
from tfsim.catalogue.shards import PLAN, shard_name
from tfsim.data.specs import load_source
from tfsim.errors import UserInputError, tf_error_reason
from tfsim.export.catalogue import catalogue_ids
from tfsim.export.embed import export_max_pixels
from tfsim.export.identity import model_fingerprint, model_info
from tfsim.files import write_atomic, write_json

log = logging.getLogger(__name__)
NAMESPACE = "tfsim"
PLAN_FORMAT = "tfsim-embedding-plan/1"
MAX_FILE_BYTES = 64 * 2**20  # a larger file is set aside unread (the pixel limit bounds what is decoded)
# A file that cannot be opened for one of these reasons is a dead letter; other I/O errors are retried.
PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                    errno.ENAMETOOLONG}


# ----------------------------------------------------------------------------- the plan (driver)

def plan_job(model_dir: os.PathLike, data: str, out: os.PathLike, shard_size: int = 1000,
             ids: str = "relative") -> dict:
    """Lists `data` and writes (or, on a rerun, checks) the plan of the job into `out`.

    Returns:
        plan.json's content.

    Raises:
        UserInputError: a bad `shard_size`, data that cannot be listed, or a plan already in
            `out` for other data, another export or another shard size.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise UserInputError(f"Invalid value for `shard_size`: expected an integer >= 1 (images per shard). "
                             f"Received: shard_size={shard_size!r}")
    out = Path(out)
    info = model_info(model_dir)
    images = load_source(data, export_max_pixels(model_dir), check_files=False)
    id_arr = catalogue_ids(images, ids)
    n = len(images)
    num_shards = max(1, -(-n // shard_size))
    plan = {"format": PLAN_FORMAT, "model": info, "data": data, "id_kind": ids, "rows": n,
            "shard_size": shard_size, "num_shards": num_shards, "class_names": list(images.class_names),
            "in_memory": images.paths is None, "max_pixels": export_max_pixels(model_dir),
            "ids_sha256": shards.ids_digest(id_arr)}
    if (out / PLAN).is_file():
        old = shards.read_json(out / PLAN, "plan")
        changed = [key for key in ("rows", "shard_size", "num_shards", "ids_sha256", "id_kind", "class_names")
                   if old.get(key) != plan[key]]
        if (old.get("model") or {}).get("fingerprint") != info["fingerprint"]:
            changed.append("model")
        if changed:
            raise UserInputError(f"{str(out)!r} holds a job planned for other input ({', '.join(changed)} differ): "
                                 "rerun with the arguments of that job to complete it, or choose a new --out.")
        return old
    if out.exists() and any(p.name != "plan" and not p.name.startswith(".tmp-") for p in out.iterdir()):
        raise UserInputError(f"--out {str(out)!r} exists and is not an embed job's folder: choose a new one.")
    shutil.rmtree(out / "plan", ignore_errors=True)  # (a plan whose writing was killed before its plan.json)
    (out / "plan").mkdir(parents=True, exist_ok=True)
    paths = None if images.paths is None else np.asarray(images.paths).astype(str)
    splits = None if images.splits is None else np.asarray(images.splits).astype(str)
    for index in range(num_shards):
        lo, hi = index * shard_size, min(n, (index + 1) * shard_size)
        rows = [{"row": r, "id": str(id_arr[r]), "path": "" if paths is None else paths[r],
                 "label": int(images.labels[r]), "class_name": images.class_names[int(images.labels[r])],
                 "split": "" if splits is None else splits[r]} for r in range(lo, hi)]
        name = shard_name(index, num_shards)
        if images.paths is None:  # pixels that exist only in memory travel with the plan
            buffer = io.BytesIO()
            np.savez(buffer, pixels=np.asarray(images.images[lo:hi]))
            write_atomic(out / "plan" / f"{name}.npz", buffer.getvalue())
        write_json(out / "plan" / f"{name}.json", rows)
    write_json(out / PLAN, plan)  # last: a plan.json means the plan is whole
    return plan


def pending_shards(out: os.PathLike, plan: dict) -> list[int]:
    """The planned shards without a Parquet file (all of them on a first run)."""
    done = shards.completed_shards(out)
    return [i for i in range(plan["num_shards"]) if shard_name(i, plan["num_shards"]) not in done]


# ----------------------------------------------------------------------------- the workers

class ReadShard(beam.DoFn):
    """Shard index -> `((shard, row), encoded image)` for each row of its plan; a file that
    cannot be read or exceeds `max_file_bytes` goes to the "bad" output as
    `(shard, {"shard", "row", "id", "path", "reason"})`."""

    BAD = "bad"

    def __init__(self, out: str, num_shards: int, max_file_bytes: int = MAX_FILE_BYTES):
        self.out, self.num_shards, self.max_file_bytes = out, num_shards, max_file_bytes

    def process(self, index: int):
        name = shard_name(index, self.num_shards)
        rows = json.loads((Path(self.out) / "plan" / f"{name}.json").read_text(encoding="utf-8"))
        pixels = None
        if (Path(self.out) / "plan" / f"{name}.npz").is_file():
            with np.load(Path(self.out) / "plan" / f"{name}.npz", allow_pickle=False) as npz:
                pixels = npz["pixels"]
        for i, row in enumerate(rows):
            key = (index, row["row"])
            if pixels is not None:
                yield key, _png(pixels[i])
                continue
            try:
                with open(os.fsencode(row["path"]), "rb") as f:
                    data = f.read(self.max_file_bytes + 1)
                if len(data) > self.max_file_bytes:
                    raise ValueError(f"the file is larger than {self.max_file_bytes:,} bytes (max_file_bytes)")
            except (OSError, ValueError) as err:
                if isinstance(err, OSError) and err.errno not in PERMANENT_ERRNOS:
                    raise  # (an I/O error that may pass, e.g. EIO on a network filesystem: the runner retries)
                yield beam.pvalue.TaggedOutput(self.BAD, (index, _bad(index, row, f"cannot read the file: {err}")))
                continue
            yield key, data


def _png(image: np.ndarray) -> bytes:
    import tensorflow as tf  # lazy: only sets held in memory are encoded (lossless PNG)
    image = np.asarray(image, np.uint8)
    return tf.io.encode_png(image if image.ndim == 3 else image[..., None]).numpy()


def _bad(index: int, row: dict, reason: str) -> dict:
    return {"shard": index, "row": row["row"], "id": row["id"], "path": row.get("path", ""), "reason": reason}


class ExportHandler(ModelHandler):
    """RunInference's handler for a tfsim export: encoded images in, `(embedding, code, None)`
    out, or `(None, None, reason)` for an image the export refuses.

    The SavedModel is loaded once per worker process and checked against the planned export's
    fingerprint (a different model under the same path is refused)."""

    def __init__(self, model_dir: str, fingerprint: str, max_batch_size: int = 64):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.model_dir, self.fingerprint = model_dir, fingerprint
        self._started, self._count = None, 0
        self._rate = Metrics.gauge(NAMESPACE, "images_per_second")

    def load_model(self):
        import tensorflow as tf  # lazy: loaded in each worker process
        if model_fingerprint(self.model_dir) != self.fingerprint:
            raise UserInputError(f"The export at {self.model_dir!r} is not the one the job was planned with (its "
                                 "fingerprint differs): restore it, or plan a new job.")
        return tf.saved_model.load(self.model_dir)

    def run_inference(self, batch: Sequence[bytes], model, inference_args=None) -> Iterable[tuple]:
        import tensorflow as tf  # lazy: as in load_model
        if self._started is None:
            self._started = time.time()
        serve = model.signatures["serving_default"]

        def call(items):
            out = serve(image_bytes=tf.constant(list(items), tf.string))
            codes = out["codes"].numpy() if "codes" in out else None
            return [(e, None if codes is None else codes[i], None) for i, e in enumerate(out["embeddings"].numpy())]

        # Only a refused image (InvalidArgumentError: not an image, truncated, above the pixel limit) is
        # a dead letter; anything else (out of memory, an unavailable device) fails the bundle, which
        # the runner retries, instead of setting good images aside for good.
        try:
            results = call(batch)
        except tf.errors.InvalidArgumentError:  # one or more images refused: find them one at a time
            results = []
            for item in batch:
                try:
                    results += call([item])
                except tf.errors.InvalidArgumentError as err:
                    results.append((None, None, tf_error_reason(err, 500)))
        self._count += len(batch)
        self._rate.set(int(self._count / max(time.time() - self._started, 1e-6)))
        return results

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class WriteShard(beam.DoFn):
    """`(shard, results)` -> the shard's files (`shards.write_shard`), in row order; `dim` and
    `code_bytes` (the export's) describe the columns even when every file of a shard was bad."""

    def __init__(self, out: str, num_shards: int, dim: int = 0, code_bytes: int = 0):
        self.out, self.num_shards, self.dim, self.code_bytes = out, num_shards, dim, code_bytes
        self.images = Metrics.counter(NAMESPACE, "images")
        self.bad_files = Metrics.counter(NAMESPACE, "bad_files")
        self.shards = Metrics.counter(NAMESPACE, "shards")

    def process(self, element):
        index, results = element
        name = shard_name(index, self.num_shards)
        rows = {r["row"]: r for r in json.loads((Path(self.out) / "plan" / f"{name}.json").read_text("utf-8"))}
        good, bad = {}, []
        for kind, row, payload in results:
            if kind == "bad":
                bad.append(payload)
            elif payload[2] is not None:
                bad.append(_bad(index, rows[row], payload[2]))
            else:
                good[row] = payload
        missing = set(rows) - set(good) - {b["row"] for b in bad}
        if missing:  # (never expected: every row is embedded or set aside)
            raise RuntimeError(f"Shard {name}: rows {sorted(missing)[:5]} came back from neither output.")
        order = sorted(good)
        embeddings = np.stack([good[r][0] for r in order]) if order else np.zeros((0, self.dim), np.float32)
        codes = None
        if order and good[order[0]][1] is not None:
            codes = np.stack([good[r][1] for r in order])
        shards.write_shard(self.out, name, [rows[r] for r in order], embeddings, codes, bad, self.dim or None,
                           self.code_bytes)
        self.images.inc(len(order))
        self.bad_files.inc(len(bad))
        self.shards.inc()
        yield index


# ----------------------------------------------------------------------------- the job

def pipeline_options(beam_args: Sequence[str] = (), workers: Optional[int] = None) -> PipelineOptions:
    """The job's Beam options: `beam_args` as given; without a `--runner`, Beam's DirectRunner in
    multi-process mode with `workers` processes (default: one per local core), unless
    `beam_args` set `--direct_running_mode` or `--direct_num_workers` themselves."""
    args = list(beam_args)
    if PipelineOptions(args).view_as(StandardOptions).runner is None:
        given = {a.split("=")[0] for a in args}
        args.append("--runner=DirectRunner")
        if "--direct_running_mode" not in given:
            args.append("--direct_running_mode=multi_processing")
        if "--direct_num_workers" not in given:
            args.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
    return PipelineOptions(args)


def embed_catalogue(model_dir: os.PathLike, data: str, out: os.PathLike, beam_args: Sequence[str] = (),
                    shard_size: int = 1000, batch_size: int = 64, ids: str = "relative",
                    workers: Optional[int] = None, max_file_bytes: int = MAX_FILE_BYTES) -> dict:
    """Embeds every image of `data` with the export at `model_dir` into embedding shards at `out`
    (see module doc); a rerun into the same `out` completes what a killed job left.

    Args:
        model_dir: an export version folder.
        data: a data spec (folder, list file, tfds:NAME[:SPLIT], default).
        out: the shards folder (created; or a killed job's, to complete).
        beam_args: Beam pipeline options, e.g. ["--runner=DataflowRunner", ...].
        shard_size: images per input shard (the unit of work, of output files and of reruns).
        batch_size: the largest batch RunInference gives the export.
        ids: "relative" or "path" (`tfsim.export.catalogue.catalogue_ids`).
        workers: DirectRunner worker processes (default: the local cores).
        max_file_bytes: larger image files are set aside unread.

    Returns:
        The manifest (`shards.write_manifest`), with "embedded_now": the shards this call wrote.

    Raises:
        UserInputError: bad arguments, an export or data that cannot be read, or a folder
            planned for another job.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserInputError(f"Invalid value for `batch_size`: expected an integer >= 1. Received: {batch_size!r}")
    out = Path(out).resolve()
    model_dir = Path(model_dir).resolve()
    start = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    with locks.sibling_lock(out, "embedding job"):  # (one driver per folder: a second is refused)
        return _run(model_dir, data, out, beam_args, shard_size, batch_size, ids, workers, max_file_bytes, start)


def _run(model_dir, data, out, beam_args, shard_size, batch_size, ids, workers, max_file_bytes, start) -> dict:
    plan = plan_job(model_dir, data, out, shard_size, ids)
    for leftover in [*out.glob("shards/.tmp-*"), *out.glob("dead_letter/.tmp-*"), *out.glob(".tmp-*")]:
        leftover.unlink(missing_ok=True)  # (half-written by a job that was killed; the lock says none runs)
    pending = pending_shards(out, plan)
    num = plan["num_shards"]
    if len(pending) < num:
        log.info("%d of the %d shards are already complete; embedding the other %d.", num - len(pending), num,
                 len(pending))
    if pending:
        handler = KeyedModelHandler(ExportHandler(str(model_dir), plan["model"]["fingerprint"], batch_size))
        code_bytes = int(plan["model"]["embedding_dim"]) // 8 if plan["model"].get("binary_codes") else 0
        p = beam.Pipeline(options=pipeline_options(beam_args, workers))
        read = (p | "Shards" >> beam.Create(pending) | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(ReadShard(str(out), num, max_file_bytes)).with_outputs(
                    ReadShard.BAD, main="images"))
        embedded = (read.images | "Embed" >> RunInference(handler)
                    | "ByShard" >> beam.Map(lambda kv: (kv[0][0], ("ok", kv[0][1], kv[1]))))
        unread = read[ReadShard.BAD] | "BadByShard" >> beam.Map(lambda kv: (kv[0], ("bad", kv[1]["row"], kv[1])))
        _ = ((embedded, unread) | beam.Flatten() | beam.GroupByKey()
             | "Write" >> beam.ParDo(WriteShard(str(out), num, int(plan["model"]["embedding_dim"]), code_bytes)))
        result = p.run()
        result.wait_until_finish()
        counters = job_counters(result)
    manifest = shards.write_manifest(out, plan, time.time() - start)
    manifest["embedded_now"] = len(pending)
    manifest["counters"] = counters if pending else {}
    return manifest


def job_counters(result) -> dict:
    """The job's "tfsim" counters as the runner reports them (committed values where it has them):
    images, bad_files, shards; images_per_second: the fastest worker's last reading."""
    found = {}
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, AttributeError):  # (a runner without metrics)
        return found
    for kind in ("counters", "gauges"):
        for m in metrics.get(kind, []):
            value = m.committed if m.committed is not None else m.attempted
            value = getattr(value, "value", value)
            if value is not None:
                found[m.key.metric.name] = max(found.get(m.key.metric.name, 0), value) if kind == "gauges" \
                    else found.get(m.key.metric.name, 0) + value
    return found
