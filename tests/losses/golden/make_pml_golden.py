"""Generates pml_2_9_golden.{json,npz}: pytorch-metric-learning 2.9's own values and gradients.

Run once, in a separate virtualenv with torch and PML (never a tfsim dependency):

    python -m venv /tmp/pml && /tmp/pml/bin/pip install torch==2.13.0 pytorch-metric-learning==2.9.0
    /tmp/pml/bin/python tests/losses/golden/make_pml_golden.py

Each case: labels, embeddings (float64, not normalised: PML's LpDistance normalises them),
and the value and gradient of `TripletMarginLoss(margin)(emb, labels, TripletMarginMiner(margin,
type_of_triplets=kind)(emb, labels))`, which `tfsim.losses.BatchAllTripletLoss(margin, kind)`
must reproduce (tests/losses/test_batch_all.py).
"""

import json
from pathlib import Path

import numpy as np
import pytorch_metric_learning
import torch
from pytorch_metric_learning import losses, miners

OUT = Path(__file__).parent
PATTERNS = {
    "pk": np.repeat(np.arange(4), 3),
    "random": None,  # drawn per case
    "all_same": np.zeros(12, np.int64),
    "all_distinct": np.arange(12),
}


def main():
    rng = np.random.default_rng(2029)
    cases, arrays = [], {}
    case_id = 0
    for pattern, fixed in PATTERNS.items():
        for kind in ("semihard", "hard", "all", "easy"):
            for margin in (0.05, 0.2, 0.5):
                labels = fixed if fixed is not None else rng.integers(0, 4, 12)
                # a low dimension and a wide spread give triplets of every kind
                emb = rng.normal(size=(12, 3)) * rng.uniform(0.5, 2.0, size=(12, 1))
                x = torch.tensor(emb, dtype=torch.float64, requires_grad=True)
                y = torch.tensor(labels, dtype=torch.long)
                mined = miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)(x, y)
                value = losses.TripletMarginLoss(margin=margin)(x, y, mined)
                value.backward()
                arrays[f"case{case_id}_labels"] = np.asarray(labels, np.int64)
                arrays[f"case{case_id}_embeddings"] = emb
                arrays[f"case{case_id}_loss"] = np.float64(value.item())
                arrays[f"case{case_id}_grad"] = x.grad.numpy().copy()
                cases.append({"id": case_id, "labels_pattern": pattern, "triplets": kind, "margin": margin,
                              "num_mined": int(len(mined[0]))})
                case_id += 1
    np.savez(OUT / "pml_2_9_golden.npz", **arrays)
    (OUT / "pml_2_9_golden.json").write_text(json.dumps(
        {"pytorch_metric_learning": pytorch_metric_learning.__version__, "torch": torch.__version__,
         "cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases written to {OUT}")


if __name__ == "__main__":
    main()
