"""`python -m tfsim.pipelines.train [--config NAME_OR_FILE] [--set key=value ...]`

Trains, evaluates on held-out classes, exports a SavedModel and a ScaNN index
(`tfsim.training.train` does the work; this file only parses arguments and prints).
With no arguments it runs the default preset on the embedded Fashion-MNIST subset.
"""

from __future__ import annotations

import argparse

from tfsim import config
from tfsim.pipelines import _cli

_cli.quiet_tensorflow()


def format_table(metrics: dict, ks) -> str:
    """The final retrieval table: trained model (before whitening too), and the baselines."""
    cols = [f"R@{k}" for k in ks] + ["MAP@R", "R-prec"]
    b = metrics.get("baselines", {})
    rows = [("trained", metrics), ("trained, unwhitened", metrics.get("unwhitened")),
            ("untrained network", b.get("untrained")), ("raw pixels", b.get("raw_pixels")),
            ("raw pixels whitened", b.get("raw_pixels_whitened"))]
    lines = [f"{'':<20}" + "".join(f"{c:>8}" for c in cols)]
    for name, m in rows:
        if m is None:
            continue
        vals = [m[name] for name in config.scalar_metrics(ks)]
        lines.append(f"{name:<20}" + "".join(f"{v:>8.4f}" for v in vals))
    return "\n".join(lines)


def format_whitening(choice: dict) -> str:
    """whitening.enabled=auto's choice and its figures (metrics.json's "whitening")."""
    line = f"whitening: {'none' if choice['chosen'] == 'off' else 'power ' + choice['chosen']} (whitening.enabled=auto"
    if "means" not in choice:
        return f"{line}: {choice['reason'].split(': ', 1)[-1]})"
    means = ", ".join(f"{name} {value:.4f}" for name, value in choice["means"].items())
    return (f"{line}; mean {choice['metric']} {means} on {choice['on'].split(', each')[0]}; the held-out classes "
            "played no part)")


def format_calibration(calibration) -> str:
    """The match flag's summary: its threshold with precision and recall on the validation classes it
    was calibrated on and on the test classes, or why the export has none (metrics.json's "calibration")."""
    c = calibration
    if c.get("threshold") is None:
        return f"match flag: none, {c.get('reason', '')}"

    def figure(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"
    line = (f"match flag: score >= {c['threshold']:.4f}, precision {c['precision']:.3f} and recall {c['recall']:.3f} "
            f"on the {len(c['validation_classes'])} validation classes held out of training")
    if c.get("test_pairs"):
        line += (f"; on the test classes precision {figure(c['test_precision'])} and recall {figure(c['test_recall'])} "
                 f"({c['test_accepted_share']:.0%} of their {c['k']} nearest flagged, "
                 f"{c['test_positive_pair_share']:.0%} of one class)")
    return line


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfsim.pipelines.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default",
                        help="a preset name (tfsim/presets/<name>.json) or the path of a JSON config file")
    parser.add_argument("--list-configs", action=_cli.ListConfigs)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: <run.root>/<run.name>)")
    parser.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch Keras output")
    args = parser.parse_args(argv)

    cfg = config.load(args.config, args.overrides, resolved=False)  # before TensorFlow: a mistake is reported at once
    # lazy: TensorFlow (about 6 s) loads only once the config is known to be valid
    from tfsim.training import summarize_names, train

    result = train(cfg, args.run_dir, resume=not args.no_resume, verbose=0 if args.quiet else "auto")
    m = result.metrics
    if not m:  # a multi-worker task other than the chief: the chief reports
        print(f"\nworker finished training in {result.seconds:.0f} s; the chief writes {result.run_dir}")
        return 0
    classes = summarize_names(result.test_classes, full_list=f"{result.run_dir / 'metrics.json'}")
    print(f"\nRetrieval on {len(result.test_classes)} held-out classes ({classes}; "
          f"{m['num_queries']:,} queries, " + ("each against the gallery):" if m.get("protocol") == "query_gallery"
                                                else "each against all other held-out images):"))
    print(format_table(m, cfg.eval.recall_ks))
    if m.get("whitening"):
        print("\n" + format_whitening(m["whitening"]))
    if "selected" in m:
        sel = m["selected"]
        print(f"\nselected epoch {sel['epoch']} of {sel['epochs_trained']} by {sel['metric']} {sel['value']:.4f} on "
              f"validation classes {sel['validation_classes']}"
              + (f" (stopped early at epoch {sel['stopped_early']})" if sel["stopped_early"] else ""))
    if m.get("calibration"):
        print("\n" + format_calibration(m["calibration"]))
    print(f"\nrun folder:   {result.run_dir}  (metrics.json, baselines.json, config.json, tensorboard/, "
          "checkpoints/, whitening.npz, samples/)")
    if result.export_dir:
        print(f"SavedModel:   {result.export_dir}")
    if result.index_dir:
        print(f"ScaNN index:  {result.index_dir}")
    for folder in result.retrieval_dirs:
        print(f"retrieval:    {folder}  (image bytes -> nearest held-out images, for TF Serving)")
    print(f"finished in {result.seconds:.0f} s")
    if result.export_dir:
        samples = sorted((result.run_dir / "samples").glob("*.png"))
        if samples:
            print(f"\ntry: python -m tfsim.pipelines.search --model {result.export_dir} --image {samples[0]} --top-k 6")
    return 0


if __name__ == "__main__":
    _cli.run(main)
