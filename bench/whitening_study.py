"""Which judge can choose the whitening after training: the study behind `whitening.enabled=auto`.

For each of `bench/peer_parity.py`'s sets and seeds it trains the default preset at the bench's
budget (P=5 x K=8, 5 passes), then, from the final checkpoint:

* truth: the held-out classes' Recall@1 / MAP@R with no whitening and with powers 0.25, 0.5, 1,
  each fitted on every training image;
* in-sample folds (`--mode insample`): 4 interleaved slices of a seeded order of the training
  classes (slices of fewer than 2 classes skipped), each candidate fitted on the other classes'
  embeddings and scored on the slice's, leave-one-out;
* held-out validation (`--mode heldout`): trained with `train.select_best` (its validation
  classes never trained on), each candidate fitted on the other training classes and scored on
  the validation classes. At P=5 only glyphs has enough training classes for this.

Then it scores rules (candidates, judge metric, margin over power 0.5): how often the chosen
candidate is within 0.005 Recall@1 of the best one on the held-out classes, and the mean change
against always 0.5. Training is independent of the whitening (it is fitted after training), so
the runs are those any version of the default preset trains.

    python bench/whitening_study.py --mode insample --datasets glyphs,default,sklearn_digits,opencv_digits,fmnist_test
    python bench/whitening_study.py --mode heldout --datasets glyphs

About 20 minutes for the first on 2 cores. Runs are kept under --work and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

import peer_parity as pp

POWERS = [None, 0.25, 0.5, 1.0]
NAMES = {None: "off", 0.25: "0.25", 0.5: "0.5", 1.0: "1"}


def _candidates(fit: np.ndarray, val: np.ndarray, labels: np.ndarray) -> dict:
    from tfsim.evaluation.metrics import retrieval_metrics
    from tfsim.models.whitening import apply_whitening, fit_whitening
    out = {}
    for p in POWERS:
        e = val if p is None else np.asarray(apply_whitening(val, *fit_whitening(fit, p, None)))
        m = retrieval_metrics(e, labels, (1,), "cosine")
        out[NAMES[p]] = [m["recall@1"], m["map@r"]]
    return out


def study_run(ds: str, seed: int, mode: str, work: Path) -> dict:
    import keras
    from tfsim import config, runs
    from tfsim.training import train
    from tfsim.training.task import Task
    folder, train_classes, test_classes = pp.DATASETS[ds](pp.CACHE / "data", pp.ensure_pml_python(None))
    bench_args = argparse.Namespace(image_size=32, classes_per_batch=5, examples_per_class=8, margin=0.2,
                                    learning_rate=1e-3)
    extra = ["train.select_best=true"] if mode == "heldout" else []
    cfg = pp.tfsim_config("default", folder, train_classes, test_classes, bench_args, seed, extra)
    task = Task(config.resolve(cfg))
    split = task.build_inputs()
    run_dir = work / f"{ds}_{seed}_{mode}"
    keras.backend.clear_session()
    train(config.apply_overrides(cfg, ["train.epochs=5", f"train.steps_per_epoch={len(split.train) // 40}"]),
          run_dir=run_dir, resume=True, verbose=0)
    best = run_dir / "checkpoints" / "best.keras"
    embedder = runs.load_embedder(best if best.is_file() else runs.choose_checkpoint(run_dir / "checkpoints")[0][0])
    train_emb, test_emb = task.embed(embedder, split.train), task.embed(embedder, split.test)
    y = split.train.labels
    record = {"truth": _candidates(train_emb, test_emb, split.test.labels), "folds": []}
    if mode == "heldout":
        val = np.isin(y, np.unique(task.fit_split(split).test.labels))
        record["folds"].append(_candidates(train_emb[~val], train_emb[val], y[val]))
    else:
        order = np.random.default_rng(seed).permutation(np.unique(y))
        for f in range(4):
            if len(order[f::4]) >= 2:
                val = np.isin(y, order[f::4])
                record["folds"].append(_candidates(train_emb[~val], train_emb[val], y[val]))
    return record


def score_rules(results: dict) -> list[str]:
    lines = []
    for cands in (["off", "0.5"], ["0.25", "0.5"], ["off", "0.25", "0.5"], ["off", "0.25", "0.5", "1"]):
        for metric, mi in (("recall@1", 0), ("map@r", 1)):
            for margin in (0.0, 0.005, 0.01):
                right, change, picks = 0, [], []
                for r in results.values():
                    mean = {c: np.mean([f[c][mi] for f in r["folds"]]) for c in cands}
                    best = max(cands, key=mean.get)
                    chosen = best if mean[best] > mean["0.5"] + margin else "0.5"
                    truth = r["truth"]
                    right += truth[chosen][0] >= max(truth[c][0] for c in cands) - 0.005
                    change.append(np.subtract(truth[chosen], truth["0.5"]))
                    picks.append(chosen)
                d = np.mean(change, axis=0)
                lines.append(f"{'/'.join(cands):18s} {metric:8s} margin {margin:<5} right {right}/{len(results)}  "
                             f"vs always 0.5: R@1 {d[0]:+.4f} MAP@R {d[1]:+.4f}  chose {', '.join(picks)}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["insample", "heldout"], default="insample")
    p.add_argument("--datasets", default="glyphs,default,sklearn_digits,opencv_digits,fmnist_test")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="runs/bench/whitening_study")
    args = p.parse_args(argv)
    logging.getLogger("tfsim").setLevel(logging.WARNING)
    work = Path(args.work)
    out = work / f"{args.mode}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    for ds in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            key = f"{ds}_{seed}"
            if key not in results:
                results[key] = study_run(ds, seed, args.mode, work)
                work.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))
            t = results[key]["truth"]
            print(f"{key:18s} held-out R@1 / MAP@R " + "  ".join(f"{c} {v[0]:.3f}/{v[1]:.3f}" for c, v in t.items()),
                  flush=True)
    print("\n".join(["", *score_rules(results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
