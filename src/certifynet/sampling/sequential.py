"""Sequential certification at fixed radii (certify.py --sequential; the math is `certify.group_sequential` and
`certify.sequential`).

Two rules (`SamplingConfig.sequential_rule`):
- "gs" (default): the calibrated group-sequential rule (`GroupSequentialCertifier`), with the futility stop
  `futility` ("none", "upper", "projected") at level γ = `futility_level`;
- "cs": the anytime-valid confidence sequence (`SequentialCertifier`), the rule before the calibrated one.
Both read the same draws: the batch schedule and the noise streams are the same.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.sampling.config import SamplingConfig
from certifynet.sampling.engine import check_finite_input
from certifynet.sampling.inputs import InputSampler
from certifynet.sampling.streams import STREAM_P

RULE_NAMES = {"gs": "calibrated group-sequential", "cs": "confidence sequence"}


def make_certifier(config: SamplingConfig, radii, dim: int):
    """The rule of `config` for these radii: cap N, batches doubling from 32 up to the batch, level α.
    Calibrating the group-sequential rule takes seconds the first time (cached in memory per schedule, α, θ)."""
    c = config
    if c.sequential_rule == "cs":
        from certifynet.certify.sequential import SequentialCertifier
        return SequentialCertifier(radii, c.sigma, c.alpha, c.N, c.batch, d=dim, k=c.k)
    from certifynet.certify.group_sequential import GroupSequentialCertifier
    futility = None if c.futility == "none" else c.futility_level
    rule = c.futility if futility is not None else "upper"
    return GroupSequentialCertifier(radii, c.sigma, c.alpha, c.N, c.batch, d=dim, k=c.k, futility=futility,
                                    futility_rule=rule)


def sequential_certifier(sampler: InputSampler, radii):
    """The run's certifier (`make_certifier` with the sampler's configuration and input dimension)."""
    return make_certifier(sampler.config, radii, sampler.dim)


def sequential_params(certifier) -> dict:
    """What the sidecar records about the rule: `params()`, and for the calibrated rule its batch schedule as
    [size, repeats] runs (the calibration holds for this schedule only; a resume with another is refused)."""
    params = certifier.params()
    if "sequential_rule" in params:  # the calibrated rule; the confidence sequence's sidecar is as it was
        sizes = certifier.schedule.tolist()
        runs = []
        for size in sizes:
            if runs and runs[-1][0] == size:
                runs[-1][1] += 1
            else:
                runs.append([size, 1])
        params["schedule"] = runs
    return params


def row_decisions(certifier, state, lower: float) -> tuple[np.ndarray, float, bool]:
    """(codes per radius, certified radius, predicts?) of one finished input.

    ĉ_A is predicted when the confidence sequence's L > ½ at the stop (Cohen's abstain rule). Every claim of a
    row needs that: a C of the calibrated rule with L ≤ ½ (possible only for radii with θ_r close to ½) is
    withheld (U). Then for p_A ≤ ½ every false claim needs L > ½ ≥ p_A (probability ≤ α), and for p_A > ½ only
    a false C can be false (≤ α, the rule's guarantee): at most α for any p_A (docs/sequential.md).
    """
    codes = certifier.decisions(state)[0]
    predicts = lower > 0.5
    if not predicts:
        codes = np.where(codes == 2, 0, codes)
    radius = float(certifier.radii[codes == 2].max()) if np.any(codes == 2) else 0.0
    return codes, radius, predicts


def certify_sequential(sampler: InputSampler, certifier, idx: int, x: torch.Tensor, label: int) -> dict:
    """One sequential log row for input idx.

    ĉ_A from N0 selection draws (stream STREAM_SELECT, as in Cohen's CERTIFY) or the label; then fresh
    STREAM_P draws in the certifier's batches until every radius is settled or the cap N is reached.
    Deterministic from (seed, idx) and the batch schedule (recorded in the sidecar).
    """
    check_finite_input(x, idx)
    t0, s, noise = time.time(), sampler.sampler, sampler.p_noise
    pred, n0 = sampler.select(idx, x, label)
    gen = sampler._gen(idx, STREAM_P)
    with sampler.noise_stream(idx, STREAM_P):   # a K-step diffusion denoiser's ξ: input idx's own stream
        state = certifier.run(lambda size, active: int(s.counts_np(x, noise, size, gen)[pred]))
    lower, upper = float(state.lower[0]), float(state.upper[0])
    codes, radius, predicts = row_decisions(certifier, state, lower)
    predict = pred if predicts else ABSTAIN
    draws = int(state.draws[0])
    return {"idx": idx, "label": label, "predict": predict, "radius": radius,
            "correct": is_correct(predict, label), "time": round(time.time() - t0, 4),
            "pA_lower": lower, "pA_upper": upper, "n0": n0, "n": draws, "hits": int(state.hits[0]),
            "samples": n0 + draws, "decisions": certifier.format_decisions(codes), "method": "sequential"}
