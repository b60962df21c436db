"""Sequential certification at fixed radii (certify.py --sequential; the math is `certify.sequential`)."""
from __future__ import annotations

import time

import torch

from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.sampling.engine import check_finite_input
from certifynet.sampling.inputs import InputSampler
from certifynet.sampling.streams import STREAM_P


def sequential_certifier(sampler: InputSampler, radii):
    """The run's SequentialCertifier: cap N, batches doubling from 32 up to the batch, level α."""
    from certifynet.certify.sequential import SequentialCertifier
    c = sampler.config
    return SequentialCertifier(radii, c.sigma, c.alpha, c.N, c.batch, d=sampler.dim, k=c.k)


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
    codes = certifier.decisions(state)[0]
    lower, upper = float(state.lower[0]), float(state.upper[0])
    predict = pred if lower > 0.5 else ABSTAIN
    draws = int(state.draws[0])
    return {"idx": idx, "label": label, "predict": predict, "radius": float(certifier.certified_radius(state)[0]),
            "correct": is_correct(predict, label), "time": round(time.time() - t0, 4),
            "pA_lower": lower, "pA_upper": upper, "n0": n0, "n": draws, "hits": int(state.hits[0]),
            "samples": n0 + draws, "decisions": certifier.format_decisions(codes), "method": "sequential"}
