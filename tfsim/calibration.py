"""Calibration: a similarity threshold for "same class?" decisions, from labelled embeddings.

    res = tfsim.calibration.calibrate(model.predict(x_val), y_val, precision=0.9)
    res.threshold, res.precision, res.recall, res.f1
    res.matches(scores)            # scores >= res.threshold, e.g. beside each neighbour of a search

What TF Similarity's `SimilarityModel.calibrate` did: each query paired with its nearest
neighbours (leave-one-out, or a query / gallery split), the threshold reaching a target
precision on those pairs, or the one of best F1 without a target. Scores are tfsim's (larger is
closer, `tfsim.distances`), so a threshold applies to what `tfsim.index` and the retrieval
SavedModels return. `calibrate_pairs(scores, same_class)` calibrates pairs you scored yourself.
The training pipeline calibrates on validation classes and records the threshold in its export
(`export.calibration`). The implementation is `tfsim.evaluation.calibration`.
"""

from tfsim.evaluation.calibration import Calibration, CalibrationCurve, calibrate, calibrate_pairs

__all__ = ["Calibration", "CalibrationCurve", "calibrate", "calibrate_pairs"]
