"""`python -m tfsim.pipelines.tune [--config NAME_OR_FILE] [--set KEY=VALUE ...] --grid KEY=V1,V2 [...]`

Hyper-parameter search with keras-tuner: each trial is a training run scored on validation
classes carved from the training classes; the best config is then trained on all training
classes and evaluated on the test classes (`tfsim.tuning` does the work).

Example:
    python -m tfsim.pipelines.tune --set sampler.classes_per_batch=4 \\
        --grid loss.margin=0.2,0.5 --grid train.learning_rate=0.001,0.003
"""

from __future__ import annotations

import argparse

from tfsim import config
from tfsim.pipelines import _cli
from tfsim.pipelines.train import format_table

_cli.quiet_tensorflow()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.tune", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--config", default="default", help="a preset name or the path of a JSON config file")
    parser.add_argument("--list-configs", action=_cli.ListConfigs)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config value for every trial (repeatable)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config key and the values to search (repeatable)")
    parser.add_argument("--objective",
                        help="metric maximised on the validation classes (tune.objective; default map@r)")
    parser.add_argument("--tuner", help="grid (default), random, bayesian or hyperband (tune.tuner)")
    parser.add_argument("--max-trials", help="at most this many trials (tune.max_trials; 0 = the whole grid)")
    parser.add_argument("--name", help="the search's folder <run.root>/tune/<name> (tune.name; default: run.name)")
    parser.add_argument("--no-final", action="store_true",
                        help="stop after the search, without training the best config on all training classes")
    parser.add_argument("--quiet", action="store_true", help="no per-trial output")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    for flag, key in (("objective", "objective"), ("tuner", "tuner"), ("max_trials", "max_trials"), ("name", "name")):
        if getattr(args, flag) is not None:
            overrides.append(f"tune.{key}={getattr(args, flag)}")
    cfg = config.load(args.config, overrides, resolved=False)
    # lazy: TensorFlow takes seconds to import; a mistake in the arguments or config is reported first
    from tfsim import tuning
    from tfsim.training import summarize_names

    result = tuning.tune(cfg, args.grid, verbose=0 if args.quiet else "auto", train_best=not args.no_final)
    if not result.rows:  # a worker of a distributed search
        print(f"worker finished: {result.new_trials} trials run here; the chief writes the report.")
        return 0
    objective = cfg.tune.objective
    ok = [r for r in result.rows if r["status"] == "ok"]
    failed = [r for r in result.rows if r["status"] == "failed"]
    print(f"\n{len(result.rows)} trials ({len(ok)} ok, {len(failed)} failed, {result.new_trials} run now); "
          f"scored by {objective} on {len(result.val_classes)} validation classes "
          f"({summarize_names(result.val_classes, full_list=str(result.tune_dir / 'trials.md'))}).")
    best = ok[0]
    keys = [*result.grid, *(["epochs"] if "epochs" in best else [])]
    print(f"best: trial {best['trial']}: " + ", ".join(f"{k}={best[k]}" for k in keys)
          + f"  ({objective} {best[objective]:.4f})")
    print(f"table:        {result.tune_dir / 'trials.md'} (and trials.csv, objective.png)")
    print(f"best config:  {result.tune_dir / 'best.json'}")
    best_run = result.best_run
    if best_run is not None:
        print(f"\nThe best config trained on all training classes, on {len(best_run.test_classes)} test classes "
              f"({summarize_names(best_run.test_classes, full_list=str(best_run.run_dir / 'metrics.json'))}):")
        print(format_table(best_run.metrics, cfg.eval.recall_ks))
        print(f"run folder:   {best_run.run_dir}")
        if best_run.export_dir:
            print(f"SavedModel:   {best_run.export_dir}")
    print(f"TensorBoard:  tensorboard --logdir {result.tune_dir}  (HPARAMS tab)")
    return 0


if __name__ == "__main__":
    _cli.run(main)
