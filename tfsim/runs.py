"""The run folder's artefacts: what makes a folder a tfsim run, its checkpoints (found, verified,
chosen), the whitening fitted on one of them, the trained model read back from them, atomic
model saves and the temporary files a killed process leaves.

    runs/<name>/config.json                 the resolved config: what marks a tfsim run folder
    runs/<name>/whitening.npz               mean, projection and the checkpoint they were fitted on
    runs/<name>/checkpoints/epoch-NNNN.keras  NNNN = completed epochs (the newest two are kept)
    runs/<name>/checkpoints/partial-EEEE-SSSSSS.keras  S steps into epoch E + 1
    runs/<name>/checkpoints/best.keras, best.json  with `train.select_best`: the best epoch's model
    runs/<name>/checkpoints/.tmp-*          being written (or left by a killed process)

A checkpoint is a zip archive (the Keras v3 format). `checkpoint_problem` opens it and checks
every member's CRC-32 (`zipfile.ZipFile.testzip`), so a truncated or overwritten file is found
before Keras tries to load it; `choose_checkpoint` returns the furthest one that passes, with
the ones it skipped and why. The model a run evaluates, exports and indexes is
`final_model(load_embedder(checkpoint), read_whitening(run_dir, checkpoint))`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from tfsim.config import Config
from tfsim.errors import UserInputError, writing
from tfsim.files import replacing
from tfsim.locks import LOCK_NAME
from tfsim.losses import memory as _memory  # noqa: F401  (registers MemoryTrainer: checkpoints load)
from tfsim.models.proxies import embedder_of
from tfsim.models.whitening import with_whitening

log = logging.getLogger(__name__)

EPOCH_PATTERN = re.compile(r"epoch-(\d+)\.keras")
PARTIAL_PATTERN = re.compile(r"partial-(\d+)-(\d+)\.keras")
_SECTIONS = {f.name for f in dataclasses.fields(Config)}


def is_run_folder(path: os.PathLike) -> bool:
    """True if `path` holds a `config.json` that tfsim wrote: a JSON object whose keys are config
    sections and include `run` and `model` (every tfsim version wrote these)."""
    cfg_file = Path(path) / "config.json"
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"run", "model"} <= set(data) <= _SECTIONS


def check_run_folder(path: os.PathLike, key: str) -> None:
    """Refuses a non-empty folder that is not a tfsim run (training would overwrite its config.json,
    metrics.json, ...). A missing or empty folder, or a tfsim run (any version), passes.

    Raises:
        UserInputError: naming the folder, a few of its entries and the fix.
    """
    path = Path(path)
    if not path.is_dir():
        return  # missing (created later) or a file (preflight.check_writable says so)
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if not entries or is_run_folder(path):
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise UserInputError(
        f"Invalid run folder {str(path)!r} ({key}): expected an empty folder or a tfsim run (with the config.json "
        f"tfsim writes), so that nothing of yours is overwritten. It holds {len(entries)} other entries ({shown}). "
        "Choose another folder, or empty this one.")


def epoch_checkpoints(directory: os.PathLike) -> list[tuple[Path, int]]:
    """`(path, completed epochs)` of every committed epoch checkpoint, oldest first."""
    directory = Path(directory)
    found = []
    for path in directory.glob("epoch-*.keras") if directory.is_dir() else ():
        match = EPOCH_PATTERN.fullmatch(path.name)
        if match:
            found.append((path, int(match.group(1))))
    return sorted(found, key=lambda item: item[1])


def partial_checkpoints(directory: os.PathLike) -> list[tuple[Path, int, int]]:
    """`(path, completed epochs, steps into the next)` of every partial checkpoint, oldest first."""
    directory = Path(directory)
    found = []
    for path in directory.glob("partial-*.keras") if directory.is_dir() else ():
        match = PARTIAL_PATTERN.fullmatch(path.name)
        if match:
            found.append((path, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda item: (item[1], item[2]))


def resume_points(directory: os.PathLike, partial: bool = True) -> list[tuple[Path, int, int]]:
    """`(path, completed epochs, steps into the next)` of every checkpoint, furthest first
    (at equal progress an epoch checkpoint before a partial one); `partial=False`: epoch ends only."""
    points = [(p, e, 0) for p, e in epoch_checkpoints(directory)]
    if partial:
        points += partial_checkpoints(directory)
    return sorted(points, key=lambda item: (item[1], item[2], item[0].name.startswith("epoch")), reverse=True)


def latest_checkpoint(directory: os.PathLike) -> Optional[tuple[Path, int]]:
    """`(path, completed epochs)` of the newest epoch checkpoint (not verified: see
    `choose_checkpoint`), or None if there is none."""
    found = epoch_checkpoints(directory)
    return found[-1] if found else None


def resume_point(directory: os.PathLike) -> Optional[tuple[Path, int, int]]:
    """`(path, completed epochs, steps into the next epoch)` of the furthest checkpoint (epoch or
    partial; not verified: see `choose_checkpoint`), or None."""
    points = resume_points(directory)
    return points[0] if points else None


def read_best(directory: os.PathLike) -> Optional[dict]:
    """`best.json` of a checkpoint folder (`tfsim.training.callbacks.BestCheckpoint`: the metric,
    the best epoch and value, every epoch's value, `stopped_early`), or None."""
    path = Path(directory) / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_problem(path: os.PathLike) -> Optional[str]:
    """Why the Keras checkpoint `path` cannot be loaded (truncated, overwritten, not a Keras archive),
    or None if its zip structure and every member's CRC-32 check out."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or not any(n.startswith("model.weights") for n in names):
                return "not a Keras model archive (no config.json or model.weights.h5 inside)"
            bad = archive.testzip()
            if bad is not None:
                return f"damaged: the checksum of {bad} inside it does not match (overwritten?)"
            json.loads(archive.read("config.json"))
    except FileNotFoundError:
        return "missing"
    except zipfile.BadZipFile as err:
        return f"damaged: not a complete zip archive ({err}; {size} bytes: truncated or overwritten?)"
    except (OSError, ValueError, EOFError, RuntimeError) as err:  # zlib/struct errors in a damaged member
        return f"damaged: cannot be read ({type(err).__name__}: {err})"
    return None


def choose_checkpoint(directory: os.PathLike, partial: bool = True
                      ) -> tuple[Optional[tuple[Path, int, int]], list[tuple[Path, str]]]:
    """The furthest checkpoint under `directory` that passes `checkpoint_problem`, and the
    `(path, reason)` of the further ones skipped; `(None, skipped)` when none passes (or none exists)."""
    skipped = []
    for point in resume_points(directory, partial):
        problem = checkpoint_problem(point[0])
        if problem is None:
            return point, skipped
        skipped.append((point[0], problem))
    return None, skipped


def no_valid_checkpoint(directory: os.PathLike, skipped: list[tuple[Path, str]], fix: str) -> UserInputError:
    """The one-line error for a checkpoint folder whose checkpoints are all damaged."""
    listed = "; ".join(f"{p.name}: {why}" for p, why in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return UserInputError(f"No valid checkpoint in {str(directory)!r}: expected a readable epoch-NNNN.keras. "
                          f"{listed}. {fix}")


def log_skipped(skipped: list[tuple[Path, str]], chosen: Path) -> None:
    for path, why in skipped:
        log.warning("Skipped checkpoint %s (%s); using %s instead.", path, why, Path(chosen).name)


def _model_bytes(model) -> int:
    """About what a `.keras` file of `model` takes: its variables and its optimizer's."""
    variables = list(model.variables) + list(getattr(getattr(model, "optimizer", None), "variables", []) or [])
    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v, "dtype", "float32")).itemsize for v in variables)


def save_model(model, path: os.PathLike, what: Optional[str] = None, after: str = "") -> Path:
    """`model.save(path)` atomically: written under `.tmp-<name>`, then renamed (an interruption
    leaves the old file or the new one, never half of one).

    A full disk (or the file-size limit) raises one `DiskFull` line naming the folder and about how
    much the write needed; the temporary file is removed whatever happens.
    """
    path = Path(path)
    # What the write needs: about what the model's other checkpoints in the folder take.
    sizes = [p.stat().st_size for p in path.parent.glob(f"*{path.suffix}") if not p.name.startswith(".")]
    written = [0]

    def needs() -> int:
        return max(sizes + written + [_model_bytes(model)])

    with writing(path.parent, what or path.name, needs, after or " and run the same command again."):
        with replacing(path) as tmp:  # (removed before `writing` measures the free space)
            try:
                with warnings.catch_warnings():
                    # Keras 3.15's Variable.__array__ lacks NumPy 2's `copy` keyword: NumPy warns once per
                    # variable per save. Silenced here, where tfsim saves.
                    warnings.filterwarnings("ignore",
                                            message=r"__array__ implementation doesn't accept a copy keyword",
                                            category=DeprecationWarning)
                    model.save(tmp)
            except BaseException:
                if tmp.is_file():
                    written[0] = tmp.stat().st_size
                raise
    return path


def remove_temporaries(folder: os.PathLike, patterns: tuple[str, ...] = (".tmp-*",)) -> list[str]:
    """Removes the files matching `patterns` in `folder` (not recursive) and returns their names.

    Call it only while holding the folder's lock (`tfsim.locks`): then no live process is writing
    them, and they are what a killed one left."""
    folder = Path(folder)
    removed = []
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else ():
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed


def write_whitening(run_dir: os.PathLike, mean: np.ndarray, projection: np.ndarray, checkpoint: os.PathLike) -> Path:
    """`<run_dir>/whitening.npz`, atomically, with the name of the checkpoint it was fitted on
    (`read_whitening` applies it to that checkpoint only)."""
    path = Path(run_dir) / "whitening.npz"
    with replacing(path) as tmp:
        np.savez(tmp, mean=mean, projection=projection, checkpoint=np.array(Path(checkpoint or "").name))
    return path


def read_whitening(run_dir: os.PathLike, checkpoint: os.PathLike) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The run's `(mean, projection)` if its whitening.npz was fitted on `checkpoint`, else None."""
    path = Path(run_dir) / "whitening.npz"
    if not path.is_file():
        return None
    with np.load(path) as stored:
        if "checkpoint" not in stored or str(stored["checkpoint"]) != Path(checkpoint).name:
            return None
        return stored["mean"], stored["projection"]


def load_embedder(checkpoint: os.PathLike) -> keras.Model:
    """The trained embedder of a checkpoint, on one device (the proxies of a proxy trainer dropped).

    Raises:
        UserInputError: the checkpoint is damaged (`checkpoint_problem`) or does not load.
    """
    problem = checkpoint_problem(checkpoint)
    if problem is None:
        try:
            return embedder_of(keras.models.load_model(checkpoint, compile=False))
        except (ValueError, TypeError, KeyError, OSError) as err:
            problem = f"Keras cannot load it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    raise UserInputError(f"Cannot load the checkpoint {str(checkpoint)!r}: {problem}. Pass another checkpoint, or "
                         "run the same train command again: it resumes from the newest intact one.")


def final_model(embedder: keras.Model, whitening: Optional[tuple[np.ndarray, np.ndarray]]) -> keras.Model:
    """The model that is evaluated, exported and indexed: the embedder, then the whitening if any."""
    return embedder if whitening is None else with_whitening(embedder, *whitening)
