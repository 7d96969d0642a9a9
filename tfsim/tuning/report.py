"""What a search leaves for a person: each trial's record (`trial_NNNN/tfsim_trial.json`), the
tables (trials.csv, trials.md), the plot (objective.png), TensorBoard hparams (in each trial's
run) and the console line of a finished trial.

A trial is one row (`dict`): `trial` (keras-tuner's id), `status` ("ok", "failed" or
"running"), one column per searched config key (its value), `epochs` (Hyperband's budget),
one per metric (`recall@1`, ..., `map@r`, `r_precision`, measured on the validation classes),
`seconds` and `reason` (why it failed). `sort_rows` puts the best objective first, then failed
and running trials.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from tfsim.files import replacing, write_atomic, write_json
from tfsim.tuning.space import decode_values, json_value

TRIAL_RECORD = "tfsim_trial.json"

METRIC_DESCRIPTION = ("On the validation classes (carved from the training classes), by the trial's model with "
                      "its whitening, as it is exported.")


def write_trial_record(trial_dir: Path, record: dict) -> None:
    """A trial's `tfsim_trial.json`: `trial`, `values`, `status`, `seconds`, and `metrics` and
    `unwhitened` (ok) or `reason` (failed)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_json(trial_dir / TRIAL_RECORD, record)


def read_trial_record(trial_dir: Path) -> dict:
    """A trial's `tfsim_trial.json`, or `{}` when the trial has not written one (still running,
    or killed)."""
    path = trial_dir / TRIAL_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def rows_from_oracle(oracle, tune_dir: Path, grid: dict[str, list], metrics: Sequence[str]) -> list[dict]:
    """One row per trial a keras-tuner oracle knows (ids in order), completed with each trial's
    record. Trials whose values are not a point of `grid` are left out."""
    rows = []
    for trial_id, trial in sorted(oracle.trials.items()):
        hp_values = trial.hyperparameters.values
        try:
            values = decode_values(grid, hp_values)
        except (KeyError, ValueError):
            continue
        row = {"trial": trial_id, **{k: json_value(v) for k, v in values.items()}}
        if "tuner/epochs" in hp_values:
            row["epochs"] = int(hp_values["tuner/epochs"])
        record = read_trial_record(tune_dir / f"trial_{trial_id}")
        status = str(trial.status)
        if status == "COMPLETED":
            row["status"] = "ok"
            for m in metrics:
                if trial.metrics.exists(m):
                    row[m] = float(trial.metrics.get_last_value(m))
        elif status in ("FAILED", "INVALID"):
            row["status"] = "failed"
            row["reason"] = record.get("reason") or _last_line(trial.message)
        else:
            row["status"] = "running"
        row["seconds"] = record.get("seconds")
        rows.append(row)
    return rows


def _last_line(message: Optional[str]) -> str:
    """The exception line of a keras-tuner failure message (its traceback's last line, without the type)."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1] if lines else ""


def sort_rows(rows: list[dict], objective: str) -> list[dict]:
    """Finished trials by objective, best first (ties: trial id), then the others by id."""
    def key(row):
        value = row.get(objective)
        ok = row["status"] == "ok" and value is not None and math.isfinite(value)
        return (0 if ok else 1, -value if ok else 0.0, row["trial"])
    return sorted(rows, key=key)


def _columns(rows: list[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[str]:
    extra = ["epochs"] if any("epochs" in r for r in rows) else []
    return ["trial", "status", *keys, *extra, *metrics, "seconds", "reason"]


def _text(value, column: str = "") -> str:
    if value is None:
        return ""
    if column == "seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _csv_cell(value):
    if value is None:
        return ""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def write_tables(out: Path, rows: list[dict], keys: Sequence[str], metrics: Sequence[str], objective: str,
                 header: str = "") -> None:
    """`trials.csv` (machine-readable, full precision) and `trials.md` (`header`, then the rows
    sorted; metrics with 4 decimals, whole seconds)."""
    rows = sort_rows(rows, objective)
    cols = _columns(rows, keys, metrics)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in cols])
    write_atomic(out / "trials.csv", buffer.getvalue())
    lines = [header, ""] if header else []
    lines += ["| " + " | ".join(f"**{c}**" if c == objective else c for c in cols) + " |",
              "| " + " | ".join("---" for _ in cols) + " |"]
    for row in rows:
        cells = [_text(row.get(c), c).replace("|", "/").replace("\n", " ") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    write_atomic(out / "trials.md", "\n".join(lines) + "\n")


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_objective(path: Path, rows: list[dict], keys: Sequence[str], objective: str) -> Optional[Path]:
    """`objective.png`: the objective of each finished trial against each searched key, one panel per
    key (log axis for positive numbers spanning 10x or more), the best trial ringed. None if no trial
    finished."""
    # lazy: matplotlib.use("Agg") is a process-wide choice, made only when a plot is drawn
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    done = [r for r in rows if r["status"] == "ok" and r.get(objective) is not None and math.isfinite(r[objective])]
    if not done or not keys:
        return None
    best = max(done, key=lambda r: r[objective])
    failed = sum(r["status"] == "failed" for r in rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys) + 0.6, 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r[key] for r in done]
        y = [r[objective] for r in done]
        if _numeric(values):
            x = values
            positive = all(v > 0 for v in values)
            if positive and max(values) >= 10 * min(values):
                ax.set_xscale("log")
            best_x = best[key]
        else:  # categories, in the order they were searched
            names = list(dict.fromkeys(_text(v) for v in values))
            x = [names.index(_text(v)) for v in values]
            ax.set_xticks(range(len(names)), names, rotation=30 if max(map(len, names)) > 6 else 0)
            best_x = names.index(_text(best[key]))
        jitter = np.random.default_rng(0).uniform(-0.02, 0.02, len(x)) if not _numeric(values) else 0
        ax.scatter(np.asarray(x, float) + jitter, y, s=28, color="tab:blue", alpha=0.8)
        ax.scatter([best_x], [best[objective]], s=140, facecolors="none", edgecolors="tab:red", linewidths=1.8)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{objective} (validation classes)")
    title = f"{len(done)} trials"
    if failed:
        title += f", {failed} failed (not shown)"
    fig.suptitle(title + "; ringed: best", fontsize=10)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def trial_name(search: str, trial_id: str) -> str:
    """How TensorBoard's HPARAMS tab names a trial: `<search>/trial_<id>`, as its folder
    (`<run.root>/tune/<search>/trial_<id>/`) and trials.md's `trial` column; the search's name
    keeps trials of different searches apart under one logdir."""
    return f"{search}/trial_{trial_id}"


def trial_message(record: dict, objective: str) -> str:
    """The console line of a trial that finished (its record, status "ok"; a failed trial's
    line is the warning `tfsim.tuning.trial` logs)."""
    seconds = f" in {record['seconds']:.0f} s" if record.get("seconds") is not None else ""
    score = record["metrics"][objective]
    text = f"Trial {record['trial']} done{seconds}: {objective} {score:.4f} on the validation classes"
    if "unwhitened" in record:
        text += (f" (its model with whitening, as exported; before whitening, as in the epoch lines: "
                 f"{record['unwhitened'][objective]:.4f})")
    return text + "."


def write_hparams_trial(logdir: Path, trial: str, values: dict, metrics: dict, space: dict[str, list]) -> None:
    """One trial in TensorBoard's HPARAMS tab, written into the trial's own TensorBoard run
    (`logdir`: its `run/tensorboard/`, beside its training curves): the search's experiment
    (the searched keys with their values, and the metrics), the trial's session named `trial`
    (`trial_name`) with its `values`, and its `metrics` as scalars `tune/<metric>`.

    The experiment is written with every trial rather than once in the search's folder, where
    it would make that folder a TensorBoard run of its own with nothing else in it (TensorBoard
    reads the first experiment it finds). `values` keys not in `space` (Hyperband's
    `tuner/epochs`) are shown without a list of values.
    """
    hparams = [hparams_api.HParam(key, hparams_api.Discrete(space[key]) if key in space else None) for key in values]
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=[
            hparams_api.Metric(f"tune/{m}", display_name=m, description=METRIC_DESCRIPTION) for m in metrics])
        hparams_api.hparams(values, trial_id=trial)
        for name, value in metrics.items():
            tf.summary.scalar(f"tune/{name}", value, step=0)
    writer.close()
