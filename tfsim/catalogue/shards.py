"""Embedding shards: a catalogue's embeddings as columnar files, what the Beam job writes
(`tfsim.catalogue.job`) and what the index and evaluate commands read without re-embedding.

A shards folder (`--out` of `python -m tfsim.pipelines.embed`):

    plan.json                        what the job embeds: the data spec, the export's identity, the
                                     shard size and count, a digest of every id (a rerun must match)
    plan/shard-00003-of-00016.json   the rows of input shard 3 (row, id, path, label, class, split)
                                     (or .npz: the pixels of a set that only exists in memory)
    shards/shard-00003-of-00016.parquet
                                     its embedded rows, in row order: row (int64), id, label (int32),
                                     class_name, split, path (strings), embedding (float32 x D) and,
                                     for a hashing export, code (the packed bits, binary)
    dead_letter/shard-00003-of-00016.jsonl
                                     its files that could not be embedded: {"row", "id", "path", "reason"}
    manifest.json                    written last: the export, the shards (rows, bad files,
                                     sha256), the totals; its presence means the job completed
    bad_files.jsonl                  every dead letter, for people

Every file is written under a temporary name and renamed (`tfsim.files.replacing`); a shard's
dead letters are renamed into place before its Parquet file, so a Parquet file present means the
shard is complete. A rerun of a killed job embeds only the shards whose Parquet file is missing
(`pending_shards`): no row is lost or written twice.

Parquet (Apache Arrow's `pyarrow`, installed with the `beam` extra) is read by BigQuery, Spark,
pandas and DuckDB as it is; nothing in these files is code (no pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim.errors import UserInputError
from tfsim.files import replacing, write_json

FORMAT = "tfsim-embedding-shards/1"
PLAN, MANIFEST, BAD_FILES = "plan.json", "manifest.json", "bad_files.jsonl"
ROW_FIELDS = ("row", "id", "path", "label", "class_name", "split")


def _arrow():
    try:
        import pyarrow  # lazy: only shards need Arrow (installed with the beam extra)
        import pyarrow.parquet  # noqa: F401  # lazy: as above
    except ImportError:
        raise UserInputError("Embedding shards are Parquet files, read and written with pyarrow: install the beam "
                             "extra (pip install -e \".[beam]\") or pip install pyarrow.") from None
    return pyarrow


def shard_name(index: int, count: int) -> str:
    """`shard-00003-of-00016`: a shard's file stem."""
    return f"shard-{index:05d}-of-{count:05d}"


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ids in order: what a rerun checks its listing against."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: os.PathLike, what: str) -> dict:
    """A JSON object file of the shards folder, or a UserInputError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"Cannot read the {what} {str(path)!r} ({type(err).__name__}: {err}): the folder is "
                             "not complete embedding shards; rerun the embed command into it.") from None
    if not isinstance(data, dict):
        raise UserInputError(f"The {what} {str(path)!r} is not a JSON object: not tfsim embedding shards.")
    return data


# ----------------------------------------------------------------------------- writing

def write_shard(out: os.PathLike, name: str, rows: list[dict], embeddings: np.ndarray,
                codes: Optional[np.ndarray], bad: list[dict], dim: Optional[int] = None,
                code_bytes: int = 0) -> Path:
    """Writes one input shard's results: its dead letters, then its Parquet file (the commit).

    Args:
        out: the shards folder.
        name: `shard_name(index, count)`.
        rows: the embedded rows' plan entries (ROW_FIELDS), in row order.
        embeddings: float32 `[len(rows), D]`.
        codes: uint8 `[len(rows), bits / 8]` packed codes (a hashing export), or None.
        bad: `{"row", "id", "path", "reason"}` of the rows that could not be embedded.
        dim: the embedding dimension (needed when no row was embedded: every file was bad).
        code_bytes: bytes per packed code of a hashing export (0: none); its `code` column is
            written even when no row was embedded.
    """
    pa = _arrow()
    out = Path(out)
    (out / "dead_letter").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    with replacing(out / "dead_letter" / f"{name}.jsonl", unique=True) as tmp:
        tmp.write_text("".join(json.dumps(b) + "\n" for b in sorted(bad, key=lambda b: b["row"])), encoding="utf-8")
    dim = int(dim or np.asarray(embeddings).shape[-1])
    embeddings = np.asarray(embeddings, np.float32).reshape(len(rows), dim)
    columns = {
        "row": pa.array([int(r["row"]) for r in rows], pa.int64()),
        "id": pa.array([str(r["id"]) for r in rows], pa.string()),
        "label": pa.array([int(r["label"]) for r in rows], pa.int32()),
        "class_name": pa.array([str(r["class_name"]) for r in rows], pa.string()),
        "split": pa.array([str(r.get("split") or "") for r in rows], pa.string()),
        # (a name that is not UTF-8 keeps its bytes as surrogate escapes: stored escaped, as ids are)
        "path": pa.array([str(r.get("path") or "").encode("utf-8", "backslashreplace").decode("utf-8")
                          for r in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), dim),
    }
    if codes is not None or code_bytes:
        width = int(code_bytes or np.asarray(codes).shape[-1])
        codes = np.ascontiguousarray(codes if codes is not None else np.zeros((0, width)), np.uint8)
        columns["code"] = pa.array([c.tobytes() for c in codes.reshape(len(rows), width)], pa.binary(width))
    table = pa.table(columns)
    target = out / "shards" / f"{name}.parquet"
    with replacing(target, unique=True) as tmp:
        pa.parquet.write_table(table, str(tmp))
    return target


def completed_shards(out: os.PathLike) -> set[str]:
    """The names of the shards whose Parquet file is in place (each one complete)."""
    folder = Path(out) / "shards"
    return {p.stem for p in folder.glob("shard-*.parquet")} if folder.is_dir() else set()


# ----------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class EmbeddingShards:
    """A completed shards folder read into memory, rows in the catalogue's order.

    Attributes:
        embeddings: float32 `[N, D]`.
        ids, paths, splits: str `[N]` (paths "" for images that only existed in memory; splits
            "" when the source has none).
        labels: int32 `[N]`, indices into `class_names`.
        class_names: tuple of str.
        codes: uint8 `[N, bits / 8]` for a hashing export, else None.
        manifest: manifest.json (the export's identity under "model", the data spec, totals).
        rows: int64 `[N]`, each row's place in the job's listing (bad files leave gaps).
    """

    embeddings: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple
    paths: np.ndarray
    splits: np.ndarray
    codes: Optional[np.ndarray]
    manifest: dict
    rows: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def model(self) -> dict:
        return self.manifest["model"]


def read_manifest(folder: os.PathLike) -> dict:
    """manifest.json of a completed shards folder, checked.

    Raises:
        UserInputError: no manifest (not shards, or a job that has not completed), or not
            tfsim's format.
    """
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        hint = (" It holds a plan but no manifest: the embed job did not complete; rerun it with the same "
                "arguments to finish the missing shards.") if (folder / PLAN).is_file() else ""
        raise UserInputError(f"{str(folder)!r} is not a folder of embedding shards: expected {MANIFEST}, written by "
                             f"python -m tfsim.pipelines.embed when a job completes.{hint}")
    manifest = read_json(folder / MANIFEST, "manifest")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), list):
        raise UserInputError(f"{str(folder / MANIFEST)!r} is not a tfsim shards manifest (format "
                             f"{manifest.get('format')!r}, expected {FORMAT!r}).")
    return manifest


def read_shards(folder: os.PathLike, verify: bool = True, names: Optional[Sequence[str]] = None) -> EmbeddingShards:
    """Every row of a completed shards folder (see module doc), checked against its manifest.

    Args:
        verify: check each Parquet file's sha256 against the manifest (a file changed or
            damaged since the job is refused).
        names: only these shards (`shard_name`s of the manifest), e.g. one part of a sharded
            index; default all.

    Raises:
        UserInputError: not a completed shards folder, a shard missing, damaged or changed, or
            rows that disagree with the manifest (dimension, count).
    """
    pa = _arrow()
    folder = Path(folder)
    manifest = read_manifest(folder)
    dim = int(manifest["model"]["embedding_dim"])
    parts, total = [], 0
    count = int(manifest.get("num_shards", 0))
    own = {shard_name(i, count) for i in range(count)}
    for entry in manifest["shards"]:
        if entry.get("name") not in own:
            raise UserInputError(f"{str(folder / MANIFEST)!r} names a shard {entry.get('name')!r} that is not one of "
                                 "its own: not a manifest the embed job wrote.")
        if names is not None and entry["name"] not in names:
            continue
        path = folder / "shards" / f"{entry['name']}.parquet"
        if not path.is_file():
            raise UserInputError(f"Shard {str(path)!r}, listed in the manifest, is missing: restore it, or rerun the "
                                 "embed command into a new folder.")
        if verify and file_sha256(path) != entry.get("sha256"):
            raise UserInputError(f"Shard {str(path)!r} is not the file the job wrote (its sha256 differs from the "
                                 "manifest's): it was changed or damaged; rerun the embed command into a new folder.")
        try:
            table = pa.parquet.read_table(str(path))
        except (OSError, pa.ArrowException) as err:
            raise UserInputError(f"Cannot read shard {str(path)!r}: {err}") from None
        if table.num_rows != int(entry["rows"]):
            raise UserInputError(f"Shard {str(path)!r} holds {table.num_rows} rows; the manifest says {entry['rows']}.")
        parts.append(table)
        total += table.num_rows
    classes = tuple(manifest["class_names"])
    if not total:  # (no shard, or only shards whose every file was bad)
        empty = np.zeros(0, str)
        codes = np.zeros((0, dim // 8), np.uint8) if manifest["model"].get("binary_codes") else None
        return EmbeddingShards(np.zeros((0, dim), np.float32), empty, np.zeros(0, np.int32), classes, empty, empty,
                               codes, manifest, np.zeros(0, np.int64))
    table = pa.concat_tables([t for t in parts if t.num_rows])
    flat = table.column("embedding").combine_chunks()
    embeddings = np.asarray(flat.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(total, -1)
    if embeddings.shape[1] != dim:
        raise UserInputError(f"The shards hold {embeddings.shape[1]}-dimensional embeddings; the manifest's model "
                             f"has {dim}.")
    rows = table.column("row").to_numpy()
    order = np.argsort(rows, kind="stable")
    codes = None
    if "code" in table.column_names:
        codes = np.frombuffer(b"".join(table.column("code").to_pylist()), np.uint8).reshape(total, -1)[order]

    def text(col):
        return np.array(table.column(col).to_pylist(), dtype=str)[order]

    labels = table.column("label").to_numpy().astype(np.int32)[order]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserInputError(f"Shard labels outside the manifest's {len(classes)} classes.")
    return EmbeddingShards(embeddings[order], text("id"), labels, classes, text("path"), text("split"), codes, manifest,
                           rows[order])


def planned_pixels(folder: os.PathLike, rows: np.ndarray) -> Optional[np.ndarray]:
    """The pixels of `rows` for a job over images held in memory (the plan's .npz files, as the
    driver wrote them), or None for a job over files."""
    folder = Path(folder)
    plan = read_json(folder / PLAN, "plan")
    if not plan.get("in_memory"):
        return None
    size, parts = int(plan["shard_size"]), []
    for index in range(int(plan["num_shards"])):
        with np.load(folder / "plan" / f"{shard_name(index, plan['num_shards'])}.npz", allow_pickle=False) as npz:
            parts.append(npz["pixels"])
    pixels = np.concatenate(parts)
    if len(pixels) != int(plan["rows"]) or (len(rows) and rows.max() >= len(pixels)):
        raise UserInputError(f"The plan's pixels in {str(folder / 'plan')!r} do not cover its {plan['rows']} rows "
                             f"({len(pixels)} with shard size {size}): the folder was changed.")
    return pixels[rows]


def dead_letters(folder: os.PathLike) -> list[dict]:
    """Every dead letter of the shards folder (`dead_letter/*.jsonl`), in row order."""
    found = []
    for path in sorted((Path(folder) / "dead_letter").glob("shard-*.jsonl")):
        found += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(found, key=lambda b: b["row"])


def write_manifest(folder: os.PathLike, plan: dict, seconds: float) -> dict:
    """manifest.json (and bad_files.jsonl) of a folder whose planned shards are all complete.

    Raises:
        UserInputError: a planned shard is missing (the job did not finish it).
    """
    pa = _arrow()
    folder = Path(folder)
    entries, missing = [], []
    bad_by_shard = {}
    for b in dead_letters(folder):
        bad_by_shard[b["shard"]] = bad_by_shard.get(b["shard"], 0) + 1
    for index in range(plan["num_shards"]):
        name = shard_name(index, plan["num_shards"])
        path = folder / "shards" / f"{name}.parquet"
        if not path.is_file():
            missing.append(name)
            continue
        rows = pa.parquet.ParquetFile(str(path)).metadata.num_rows
        entries.append({"name": name, "rows": int(rows), "bad_files": bad_by_shard.get(index, 0),
                        "sha256": file_sha256(path)})
    if missing:
        raise UserInputError(f"{len(missing)} of the {plan['num_shards']} shards were not written (e.g. "
                             f"{missing[0]}): rerun the same embed command to complete them.")
    bad = dead_letters(folder)
    with replacing(folder / BAD_FILES, unique=True) as tmp:
        tmp.write_text("".join(json.dumps(b) + "\n" for b in bad), encoding="utf-8")
    images = sum(e["rows"] for e in entries)
    manifest = {"format": FORMAT, "model": plan["model"], "data": plan["data"], "id_kind": plan["id_kind"],
                "class_names": plan["class_names"], "num_shards": plan["num_shards"],
                "shard_size": plan["shard_size"], "images": images, "bad_files": len(bad),
                "planned": plan["rows"], "seconds": round(float(seconds), 3), "shards": entries}
    write_json(folder / MANIFEST, manifest, unique=True)
    return manifest
