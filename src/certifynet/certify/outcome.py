"""What a log row says about one input: abstain, unknown label, correct. One definition for every writer and
reader (certify, predict, sequential, attack, analyze, the web app).

- `ABSTAIN` (−1) is the prediction of a smoothed classifier that declines to answer (Cohen et al.'s
  `Smooth.ABSTAIN`).
- `UNKNOWN_LABEL` (−1) is the label of an input whose true class is not known (one image given with
  `--image` and no `--image-label`).
- `is_correct(predict, label)` = 1 iff the prediction is a class and equals a known label. An abstain is
  never correct, and neither is any prediction on an input of unknown label: certified accuracy counts
  such an input as not certified-correct, which can only understate it.
"""
from __future__ import annotations

import numpy as np

ABSTAIN = -1
UNKNOWN_LABEL = -1


def is_correct(predict, label):
    """1 where predict ≥ 0 and predict == label ≥ 0, else 0 (an int for scalars, an int array for arrays)."""
    p, y = np.asarray(predict), np.asarray(label)
    ok = ((p == y) & (p >= 0) & (y >= 0)).astype(int)
    return int(ok) if ok.ndim == 0 else ok
