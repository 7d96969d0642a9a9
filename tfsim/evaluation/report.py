"""The evaluate command's report: a console table (`format_table`) and `metrics.json` +
`metrics.md` (`write_report`: the table, then every class, worst MAP@R first).

One row per search (exact; with `--ann`, the ScaNN index's figures and their gap to exact), one
column per metric in `table_columns` order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tfsim.evaluation.metrics import WHOLE_SET_METRICS
from tfsim.files import write_atomic, write_json
from tfsim.options import scalar_metrics


# The table's columns: metrics.json key -> the console's short header (as the train command's table).
_SHORT = {"recall": "R", "precision": "P", "map@r": "MAP@R", "r_precision": "R-prec", "map": "mAP", "nmi": "NMI",
          "ami": "AMI"}


def table_columns(metrics: dict, ks: Sequence[int]) -> list[str]:
    """The metrics.json keys of the report's table, in order: Recall@K, precision@K, MAP@R,
    R-precision, then mAP, NMI and AMI when they were computed."""
    per_query = scalar_metrics(ks)  # recall@K for each K, then MAP@R and R-precision
    return (per_query[:len(ks)] + [f"precision@{k}" for k in ks] + per_query[len(ks):]
            + [c for c in WHOLE_SET_METRICS if c in metrics])


def _table_rows(metrics: dict) -> list[tuple[str, dict, str]]:
    """(label, values by key, number format) of each row: exact search, then with `--ann` the
    ScaNN figures and their gap to exact (ScaNN minus exact, on the sampled queries)."""
    rows = [("exact", metrics, ".4f")]
    if "ann" in metrics:
        rows += [("ScaNN", metrics["ann"], ".4f"), ("gap", metrics["ann"]["gap"], "+.4f")]
    return rows


def format_table(metrics: dict, ks: Sequence[int]) -> str:
    """The console table of the evaluate command's metrics: one row per search (exact; with
    `--ann`, ScaNN and its gap to exact), one right-aligned column per metric under its short header (R@K:
    recall@K, P@K: precision@K), "-" where a row has no such figure; with `--ann`, a last line
    saying which index and how many queries the gap was measured on.

    Example: `format_table(tfsim.training.assessment.evaluate(export, data="default"), (1, 2))`
    returns lines such as

                   R@1     R@2     P@1     P@2   MAP@R  R-prec     mAP     NMI     AMI
        exact   0.5000  0.7500  0.5000  0.4167  0.3819  0.3750  0.4102  0.2310  0.1504
    """
    cols = table_columns(metrics, ks)
    heads = [_SHORT.get(c) or f"{_SHORT[c.split('@')[0]]}@{c.split('@')[1]}" for c in cols]
    rows = _table_rows(metrics)
    label = max(len(name) for name, _, _ in rows) + 1
    widths = [max(len(h), 7) + 1 for h in heads]  # a value is 6 or 7 characters ("+0.0123")
    lines = [" " * label + "".join(h.rjust(w) for h, w in zip(heads, widths))]
    for name, values, spec in rows:
        lines.append(name.ljust(label) + "".join(
            (format(values[c], spec) if c in values else "-").rjust(w) for c, w in zip(cols, widths)))
    if "ann" in metrics:
        a = metrics["ann"]
        lines.append(f"ScaNN: a {a['index']['mode']} index of the gallery; gap: ScaNN minus exact on "
                     f"{a['gap_sample']} sampled queries")
    return "\n".join(lines)


def write_report(out: Path, metrics: dict, ks: Sequence[int]) -> None:
    """`metrics.json` and `metrics.md` (the table, then every class, worst MAP@R first), each
    written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    cols = table_columns(metrics, ks)
    rows = _table_rows(metrics)
    many = len(rows) > 1
    lines = [f"Model `{metrics['model']}` on `{metrics['data'] or metrics['query'] + ' vs ' + metrics['gallery']}` "
             f"({metrics['protocol']}, {metrics['num_queries']} queries, {metrics['similarity']}).", "",
             "| " + " | ".join(["search"] * many + cols) + " |", "|" + " --- |" * (len(cols) + many)]
    for name, values, spec in rows:
        lines.append("| " + " | ".join([name] * many + [format(values[c], spec) if c in values else "-"
                                                         for c in cols]) + " |")
    if "ann" in metrics:
        a = metrics["ann"]
        lines += ["", f"ScaNN: a {a['index']['mode']} index of the gallery; gap: ScaNN minus exact on "
                      f"{a['gap_sample']} sampled queries."]
    lines += ["", "Per class, worst MAP@R first:", "", "| class | queries | recall@1 | map@r |",
              "| --- | --- | --- | --- |"]
    for name, m in sorted(metrics["per_class"].items(), key=lambda item: (item[1]["map@r"], item[0])):
        lines.append(f"| {name} | {m['queries']} | {m['recall@1']:.4f} | {m['map@r']:.4f} |")
    write_atomic(out / "metrics.md", "\n".join(lines) + "\n")
