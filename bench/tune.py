"""The tune command measured: its overhead per trial, and what a preset grid gains on the shipped data.

Part 1, overhead (`--overhead`): a two-trial grid run by `tfsim.tuning.tune`, then
each trial's config trained again by a plain `tfsim.training.train` call on the same images
(the trial's training classes, scored on its validation classes). Prints the seconds of each
and the ratio (target: the search costs <= 5% more than the plain runs it contains).

Part 2, the preset grid (`--grid-search`): `GRID` below on the `default` preset with
P = 4 classes per batch (the trials train on 4 of the 6 training classes: 2 are carved off
as validation classes, so P = 6 cannot be drawn), scored by MAP@R on the validation
classes. Then the best config and the `default` preset are both trained on all training
classes over `--seeds` and scored on the test classes, which the search never saw: the
search's gain over the defaults, mean +- sd; the search's base config (the default
preset at P = 4) is trained too, to separate the grid's values from P.

    python bench/tune.py                 # both parts, ~25 min on 2 cores
    python bench/tune.py --overhead      # ~2 min
Writes `runs/bench/tune.json` (and the search under `runs/bench/tune/`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfsim import config, tuning  # noqa: E402
from tfsim.training import load_split, train  # noqa: E402
from tfsim.tuning.space import apply_values, trial_config  # noqa: E402
from tfsim.tuning.trial import validation_split  # noqa: E402

ROOT = Path("runs/bench")
BASE = ["sampler.classes_per_batch=4", "export.enabled=false", "index.enabled=false"]
GRID = ["train.learning_rate=0.001,0.003", "loss.margin=0.2,0.5,1.0", "model.embedding_dim=64,128"]
OVERHEAD_GRID = ["loss.margin=0.4,0.6"]
OVERHEAD_BASE = ["train.epochs=3", "train.steps_per_epoch=60"]
KEYS = ("recall@1", "map@r", "r_precision")


def overhead(root: Path) -> dict:
    """Plain runs before and after the search (the machine's speed drifts), the search between."""
    cfg = config.load("default", BASE + OVERHEAD_BASE + [f"run.root={root / 'overhead'}", "tune.name=overhead"])
    grid = tuning.parse_grid(cfg, OVERHEAD_GRID)
    split = validation_split(load_split(cfg), cfg.tune)

    def plain_runs(tag: str) -> tuple[float, list]:
        seconds, metrics = 0.0, []
        for i, margin in enumerate(grid["loss.margin"]):
            trial_cfg = trial_config(cfg, {"loss.margin": margin}, f"plain_{tag}_{i}")
            keras.backend.clear_session()
            start = time.perf_counter()
            metrics.append(train(trial_cfg, root / "overhead_plain" / f"{tag}{i}", verbose=0, split=split).metrics)
            seconds += time.perf_counter() - start
        return seconds, metrics

    before, plain_metrics = plain_runs("before")
    start = time.perf_counter()
    result = tuning.tune(cfg, OVERHEAD_GRID, train_best=False)
    search_seconds = time.perf_counter() - start
    after, _ = plain_runs("after")
    plain = (before + after) / 2
    inside = sum(r["seconds"] for r in result.rows)
    by_margin = {r["loss.margin"]: r["map@r"] for r in result.rows}
    same = all(abs(by_margin[m] - pm["map@r"]) < 1e-9 for m, pm in zip(grid["loss.margin"], plain_metrics))
    out = {"trials": len(result.rows), "search_seconds": search_seconds, "trial_seconds_inside": inside,
           "plain_seconds_before": before, "plain_seconds_after": after, "ratio": search_seconds / plain,
           "same_metrics": same}
    print(f"\nOverhead: {out['trials']} trials; the search took {search_seconds:.1f} s (the trials' own train() "
          f"calls {inside:.1f} s); the same configs as plain train() runs took {before:.1f} s before it and "
          f"{after:.1f} s after it. Ratio search / plain = {out['ratio']:.3f}; identical metrics: {same}")
    return out


def grid_search(root: Path, seeds: list[int]) -> dict:
    cfg = config.load("default", BASE + [f"run.root={root}", "tune.name=shipped_grid"])
    start = time.perf_counter()
    result = tuning.tune(cfg, GRID, train_best=False)
    seconds = time.perf_counter() - start
    best = result.rows[0]
    values = {k: best[k] for k in ("train.learning_rate", "loss.margin", "model.embedding_dim")}
    print(f"\nGrid of {len(result.rows)} trials in {seconds / 60:.1f} min; best on the validation classes "
          f"{result.val_classes}: {values} (map@r {best['map@r']:.4f})")
    print((result.tune_dir / "trials.md").read_text())

    rows = {"default preset": [], "search base (P = 4)": [], "best of the search": []}
    for seed in seeds:
        seeds_set = [f"train.seed={seed}", f"sampler.seed={seed}", "export.enabled=false", "index.enabled=false",
                     "eval.baselines=false", f"run.root={root / 'final'}"]
        for name, c in (("default preset", config.load("default", seeds_set + [f"run.name=default_s{seed}"])),
                        ("search base (P = 4)", config.load("default", BASE + seeds_set + [f"run.name=base_s{seed}"])),
                        ("best of the search", apply_values(
                            config.load("default", BASE + seeds_set + [f"run.name=best_s{seed}"]), values))):
            keras.backend.clear_session()
            m = train(c, verbose=0).metrics
            rows[name].append({k: m[k] for k in KEYS})
            print(f"seed {seed} {name:<20} " + "  ".join(f"{k} {m[k]:.4f}" for k in KEYS), flush=True)
    print(f"\nTest classes (never seen by the search), mean +- sd over seeds {seeds}:")
    print("| | " + " | ".join(KEYS) + " |\n| --- |" + " --- |" * len(KEYS))
    for name, ms in rows.items():
        cells = [f"{np.mean([m[k] for m in ms]):.3f} +- {np.std([m[k] for m in ms]):.3f}" for k in KEYS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    def gain(over: str) -> dict:
        return {k: float(np.mean([b[k] - d[k] for b, d in zip(rows["best of the search"], rows[over])])) for k in KEYS}

    for over in ("default preset", "search base (P = 4)"):
        print(f"gain of the best over the {over} (paired by seed): "
              + ", ".join(f"{k} {v:+.3f}" for k, v in gain(over).items()))
    return {"grid": GRID, "base": BASE, "search_seconds": seconds, "trials": result.rows, "best": values,
            "val_classes": result.val_classes, "test": rows,
            "gain_over_default": gain("default preset"), "gain_over_base": gain("search base (P = 4)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead", action="store_true", help="only part 1")
    parser.add_argument("--grid-search", action="store_true", help="only part 2")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    both = not (args.overhead or args.grid_search)
    out_file = ROOT / "tune.json"
    out = json.loads(out_file.read_text()) if out_file.is_file() else {}
    if args.overhead or both:
        out["overhead"] = overhead(ROOT / "tune_overhead")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(out, indent=2))
    if args.grid_search or both:
        out["grid_search"] = grid_search(ROOT, [int(s) for s in args.seeds.split(",")])
        out_file.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
