"""Anytime-valid sequential certification at fixed radii. Pure numpy/scipy.

Question per input and radius r: is ĉ_A certified at r? For the NP certificate that is p_A > θ_r, with
θ_r = Φ(r/σ) for Gaussian P (the generalized-Gaussian equivalent for k > 0, `radius_threshold`).
Draws X_1, X_2, … ∈ {0, 1} (f(x + δ_i) = ĉ_A) arrive in batches; S_t = Σ_{i≤t} X_i.

Confidence sequence (Robbins' beta-binomial mixture). For a prior Beta(a, b) on the rate,
    M_t(p) = ∫ q^S_t (1−q)^(t−S_t) dBeta(a, b)(q) / (p^S_t (1−p)^(t−S_t))
           = B(a + S_t, b + t − S_t) / B(a, b) / (p^S_t (1−p)^(t−S_t))
is a non-negative martingale with M_0 = 1 under the true rate p, so Ville's inequality gives
P(∃t : M_t(p_A) ≥ 1/α) ≤ α. Hence C_t = {p : M_t(p) < 1/α} = (L_t, U_t) (an interval: log M_t is convex in
p, ≤ 0 at p = S_t/t) holds p_A at EVERY t simultaneously with probability ≥ 1 − α, at any stopping time,
however the batch sizes or the stop depend on the data. Running max of L_t / min of U_t keep that property.

α accounting (see docs/sequential.md):
* Soundness concerns only "certified" claims: C at r means L > θ_r, false only when p_A ≤ θ_r < L, i.e.
  when the one confidence sequence misses p_A. ONE sequence serves every radius (the claims at all r and
  the reported lower bound are read off the same event), so no split over radii: P(any false claim) ≤ α.
* Futility stops (N: U < θ_r; U: certification is out of reach before the cap) only end sampling early
  and can only withhold certificates: they never affect soundness, only power.
* The two-sided sequence spends its α on the event {p_A ∉ C_t for some t}; the lower end alone is then
  valid at α (it is not valid at 2α: only the union of both tails is bounded).
DSRS: not supported sequentially. Two sequences (P at α/2, Q at α/2, union bound) would be valid for the
pair of intervals, but the DSRS radius needs the Q law fixed before its draws (truncated Q's p_T comes
from a P bound) and a dual solve per check; `certify.py --sequential` refuses --q-dist.

Rounding: p is rejected only when −[S ln p + (t−S) ln(1−p)] ≥ c, where c adds to ln(1/α) − (mixture term)
a margin larger than the rounding of each term, and the bisection returns the end of its bracket that lies
outside C_t (lower end rounded down, upper end up). The margins and what they cover:
* the mixture term ln B(a+S, b+t−S) − ln B(a, b): scipy's betaln subtracts log-gammas of size ~t·ln t, so
  its absolute error grows with t (5e-10 at t = 10⁵, 4e-8 at 10⁷). The margin is 64·ε·Λ with
  Λ = |lnΓ(a+S)| + |lnΓ(b+t−S)| + |lnΓ(a+b+t)| + |ln B(a, b)| + 1; measured against a 50-digit reference for
  t ≤ 10⁹ (tests/test_accounting.py) the error stays below 1.3·ε·Λ, 50× inside it. Not proven: it assumes
  betaln's error keeps that form;
* the likelihood term S·ln p + (t−S)·ln(1−p) (a few ε relative, on an exactly representable p): the
  relative 1e-12 on c, and an absolute 1e-12 plus a relative 1e-12 of the mixture term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln, xlog1py, xlogy
from scipy.stats import norm

from certifynet.certify.dsrs import generalized_np_radius
from certifynet.certify.neyman_pearson import np_radius
from certifynet.errors import CertifyNetError, check_alpha, check_sigma

# Beta(a, b) mixing prior of the confidence sequence. b < 1 puts more mass near p = 1, where the
# thresholds θ_r = Φ(r/σ) of the usual radii sit: at S_t = t the mixture costs only b·ln t (uniform:
# ln(t + 1)), e.g. 6k instead of 12.5k draws to certify 3σ at α = 0.001 (docs/sequential.md).
DEFAULT_PRIOR = (1.0, 0.1)
FIRST_BATCH = 32  # first batch of a sequence; batches then double up to --batch
DECIDED_CODES = {2: "C", 1: "N", 0: "U"}  # certified / not certifiable / undecided within the cap
_LOG_MARGIN_REL, _LOG_MARGIN_ABS = 1e-12, 1e-12
_BETALN_ULPS = 64.0  # margin on the mixture term, in units of ε·Λ (module doc: Rounding)
_BISECT_STEPS, _SECTION_POINTS = 64, 256
# Threshold search: p ≤ 1 − _P_TOP (the generalized NP radius is not computable closer to 1), bracket
# width ≤ _P_TOL·(1 − θ) (θ errs upward by at most that).
_P_TOP, _P_TOL = 1e-12, 1e-9


def _check_prior(prior):
    a, b = (float(v) for v in prior)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise CertifyNetError(f"confidence-sequence prior Beta(a, b) needs a, b > 0, got {prior}")
    return a, b


def log_mixture_ratio(hits, draws, p, prior=DEFAULT_PRIOR):
    """log M_t(p) = ln B(a+S, b+t−S) − ln B(a, b) − S·ln p − (t−S)·ln(1−p)."""
    a, b = _check_prior(prior)
    s, t, p = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (hits, draws, p)))
    with np.errstate(divide="ignore"):
        return betaln(a + s, b + t - s) - betaln(a, b) - xlogy(s, p) - xlog1py(t - s, -p)


def mixture_margin(hits, draws, prior=DEFAULT_PRIOR):
    """Margin on ln B(a+S, b+t−S) − ln B(a, b) as scipy computes it: 1e-12·(1 + |value|) + 64·ε·Λ (module doc)."""
    a, b = _check_prior(prior)
    s, t = np.asarray(hits, dtype=float), np.asarray(draws, dtype=float)
    mix = betaln(a + s, b + t - s) - betaln(a, b)
    scale = (np.abs(gammaln(a + s)) + np.abs(gammaln(b + t - s)) + np.abs(gammaln(a + b + t))
             + abs(float(betaln(a, b))) + 1.0)
    return _LOG_MARGIN_ABS + _LOG_MARGIN_REL * np.abs(mix) + _BETALN_ULPS * np.finfo(float).eps * scale


def confidence_sequence(hits, draws, alpha, prior=DEFAULT_PRIOR):
    """(L_t, U_t): ends of C_t = {p : M_t(p) < 1/α}, vectorised; L rounded down, U up.

    p is rejected when −[S·ln p + (t−S)·ln(1−p)] ≥ c = (ln(1/α) − ln B(a+S, b+t−S) + ln B(a, b) + margin)
    / (1 − 1e-12), margin = `mixture_margin` (module doc: Rounding). Bisection keeps 'outer end rejected,
    inner end (the MLE S/t, where M ≤ 1) accepted' and returns the outer end. t = 0 gives (0, 1).
    """
    alpha = check_alpha(alpha)
    a, b = _check_prior(prior)
    s, t = np.broadcast_arrays(np.asarray(hits, dtype=float), np.asarray(draws, dtype=float))
    shape, s, t = s.shape, s.ravel(), t.ravel()
    if np.any((s < 0) | (s > t)):
        raise CertifyNetError("confidence sequence needs 0 <= hits <= draws")
    mix = betaln(a + s, b + t - s) - betaln(a, b)
    c = (math.log(1.0 / alpha) - mix + mixture_margin(s, t, (a, b))) / (1.0 - _LOG_MARGIN_REL)
    mle = s / np.maximum(t, 1.0)

    def outer_end(inner, outer):  # inner accepted, outer rejected
        return _section_search(lambda q: -(s[:, None] * np.log(q) + (t - s)[:, None] * np.log1p(-q)) >= c[:, None],
                               inner, outer)

    # p = 0 is rejected iff S > 0 and p = 1 iff S < t (infinite −log-likelihood), when t > 0
    lower = np.where((s > 0) & (t > 0), outer_end(mle, np.zeros_like(mle)), 0.0)
    upper = np.where((s < t) & (t > 0), outer_end(mle, np.ones_like(mle)), 1.0)
    if not shape:
        return float(lower[0]), float(upper[0])
    return lower.reshape(shape), upper.reshape(shape)


def _section_search(rejected, inner, outer):
    """Shrink brackets [inner (accepted), outer (rejected)] to adjacent floats; returns the outer ends.

    Each round tests K − 1 evenly spaced points per bracket (K = 2: bisection, for many inputs; up to
    256 for one input, where numpy's per-call overhead dominates) and keeps the first rejected point
    seen from the inner end and its accepted neighbour: both ends stay verified, whatever the rounding.
    """
    k = max(2, _SECTION_POINTS // max(inner.size, 1))
    frac = np.arange(1, k) / k
    rows = np.arange(inner.size)
    for _ in range(-(-_BISECT_STEPS // int(math.log2(k)))):
        pts = inner[:, None] + (outer - inner)[:, None] * frac
        with np.errstate(divide="ignore", invalid="ignore"):
            rej = rejected(pts)
        hit = rej.any(axis=1)
        first = np.where(hit, rej.argmax(axis=1), k - 1)
        outer = np.where(hit, pts[rows, np.minimum(first, k - 2)], outer)
        inner = np.where(first > 0, pts[rows, np.maximum(first - 1, 0)], inner)
    return outer


def radius_threshold(radius, sigma, d=None, k=0):
    """θ_r: a rate with NP radius(p) ≥ r for every p ≥ θ_r (1.0 when r is out of reach of any p < 1).

    Gaussian (k = 0): NP radius σΦ⁻¹(p), θ_r ≈ Φ(r/σ); generalized Gaussian: `generalized_np_radius`.
    Found by bisection on p with the invariant radius(hi) ≥ r, returning hi (for k = 0: Φ(r/σ) stepped up
    by ulps): it errs toward a larger θ, and both radius functions are themselves rounded down, so
    p > θ_r always certifies r. Radii needing p > 1 − 1e-12 get θ = 1 (never certified).
    """
    sigma, r = check_sigma(sigma), float(radius)
    if not (r >= 0.0 and math.isfinite(r)):
        raise CertifyNetError(f"radii must be finite and >= 0, got {radius}")
    k = int(k or 0)
    if k:
        if d is None:
            raise CertifyNetError("the generalized-Gaussian threshold needs the input dimension d")

        def rad(p):
            return generalized_np_radius(p, sigma, d, k)
    else:
        def rad(p):
            return float(np_radius(p, sigma))
    lo, hi = 0.5, 1.0 - _P_TOP
    if rad(hi) < r:
        return 1.0
    if r == 0.0:
        return 0.5  # radius 0 means only p_A > ½ (a prediction, Cohen's abstain rule)
    if not k:  # Φ(r/σ) is exact up to rounding: step up by ulps until the rounded-down radius reaches r
        p = max(float(norm.cdf(r / sigma)), lo)
        while rad(p) < r:
            p = float(np.nextafter(p, 1.0))
        return p
    while hi - lo > _P_TOL * (1.0 - hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rad(mid) < r else (lo, mid)
    return hi


def check_radii(radii) -> list:
    """The requested radii, sorted; they must be distinct, finite and > 0."""
    radii = [float(r) for r in radii or ()]
    if not radii or any(not (r > 0 and math.isfinite(r)) for r in radii) or len(set(radii)) != len(radii):
        raise CertifyNetError(f"{{radii}} must be distinct finite numbers > 0, got {radii}", "radii")
    return sorted(radii)


def batch_schedule(n_max, batch, first=FIRST_BATCH):
    """Batch sizes first, 2·first, … up to `batch`, then `batch`, the last one cut so they sum to n_max."""
    n_max, batch = int(n_max), int(batch)
    if n_max < 1 or batch < 1:
        raise CertifyNetError(f"sequential sampling needs N >= 1 and batch >= 1, got N={n_max}, batch={batch}")
    sizes, total, size = [], 0, min(int(first), batch)
    while total < n_max:
        sizes.append(min(size, n_max - total))
        total += sizes[-1]
        size = min(2 * size, batch)
    return np.array(sizes, dtype=np.int64)


class RadiusDecisions:
    """What both sequential certifiers share, given their `radii`, `schedule`, `start`, `update` and `_codes`
    (per input and radius: 2 certified, 1 refuted, 0 out of reach, −1 open)."""

    def settled(self, state) -> np.ndarray:
        """Inputs with every radius decided (nothing left to draw for)."""
        return np.all(self._codes(state) >= 0, axis=1)

    def decisions(self, state) -> np.ndarray:
        """Final codes per input and radius: 2 = C, 1 = N, 0 = U (radii open at the stop count as U)."""
        return np.maximum(self._codes(state), 0)

    def certified_radius(self, state) -> np.ndarray:
        """Largest requested radius certified (0.0 where none)."""
        codes = self.decisions(state)
        return np.array([self.radii[c == 2].max() if np.any(c == 2) else 0.0 for c in codes])

    def run(self, draw_hits, m=1):
        """Drive the schedule: draw_hits(size, active) -> hits per input for this batch (active inputs);
        returns the final state."""
        state = self.start(m)
        for size in self.schedule:
            if not state.active.any():
                break
            state = self.update(state, draw_hits(int(size), state.active), int(size))
        return state

    def format_decisions(self, codes) -> str:
        """'0.25:C,0.5:C,1:N' for one input's codes."""
        return ",".join(f"{r:g}:{DECIDED_CODES[int(c)]}" for r, c in zip(self.radii, codes))


@dataclass
class SequenceState:
    """Per-input arrays of one sequential run (length m: inputs simulated or sampled together)."""
    hits: np.ndarray
    draws: np.ndarray
    lower: np.ndarray     # running max of L_t
    upper: np.ndarray     # running min of U_t
    reach: np.ndarray     # L at the cap if every remaining draw hits (best case)
    active: np.ndarray    # still sampling

    @property
    def m(self):
        return self.hits.size


class SequentialCertifier(RadiusDecisions):
    """Stops an input as soon as the decision at every requested radius is settled, or at the cap N.

    Per radius r (threshold θ_r): C (certified) when L > θ_r; N (not certifiable) when U < θ_r;
    U (undecided) at the cap, or earlier when even all remaining draws hitting could not lift L at N
    above θ_r. This last futility check uses the all-hits path, along which M_t(θ) only grows once θ
    is below the posterior mean, so its best point is the cap; it is a stopping heuristic for cost
    only: stopping and withholding a certificate is always sound.
    """

    def __init__(self, radii, sigma, alpha, n_max, batch, d=None, k=0, prior=DEFAULT_PRIOR,
                 first_batch=FIRST_BATCH):
        self.alpha, self.sigma = check_alpha(alpha), check_sigma(sigma)
        self.radii = np.array(check_radii(radii))
        self.prior = _check_prior(prior)
        self.n_max, self.d, self.k = int(n_max), d, int(k or 0)
        self.schedule = batch_schedule(n_max, batch, first_batch)
        self.thresholds = np.array([radius_threshold(r, sigma, d, k) for r in self.radii])

    def params(self) -> dict:
        """What a log's sidecar records about the sequence."""
        return {"radii": self.radii.tolist(), "thresholds": self.thresholds.tolist(),
                "confidence_sequence": "beta-binomial mixture (Robbins), two-sided, all radii at alpha",
                "cs_prior": list(self.prior), "first_batch": int(self.schedule[0])}

    def bounds(self, hits, draws):
        """(L_t, U_t); the deliberately invalid peeking control in tests/test_sequential.py overrides this."""
        return confidence_sequence(hits, draws, self.alpha, self.prior)

    def start(self, m=1) -> SequenceState:
        z = np.zeros(m)
        return SequenceState(hits=z.astype(np.int64), draws=z.astype(np.int64), lower=z.copy(), upper=z + 1.0,
                             reach=z + 1.0, active=np.ones(m, dtype=bool))

    def update(self, state: SequenceState, new_hits, new_draws) -> SequenceState:
        """Add a batch to the active inputs, refresh their bounds, deactivate the settled ones."""
        act = np.flatnonzero(state.active)
        state.hits[act] += np.broadcast_to(new_hits, state.hits.shape)[act]
        state.draws[act] += np.broadcast_to(new_draws, state.draws.shape)[act]
        lo, up = self.bounds(state.hits[act], state.draws[act])
        state.lower[act] = np.maximum(state.lower[act], lo)
        state.upper[act] = np.minimum(state.upper[act], up)
        state.reach[act] = self.bounds(state.hits[act] + (self.n_max - state.draws[act]), self.n_max)[0]
        state.active[act] = (state.draws[act] < self.n_max) & ~self.settled(state)[act]
        return state

    def _codes(self, state):
        """[m, radii] int codes: 2 certified, 1 not certifiable, 0 undecided, −1 still open."""
        th = self.thresholds[None, :]
        cert = state.lower[:, None] > th
        refuted = state.upper[:, None] < th
        out_of_reach = state.reach[:, None] <= th
        return np.where(cert, 2, np.where(refuted, 1, np.where(out_of_reach, 0, -1)))


def simulate(certifier: SequentialCertifier, p, rng) -> SequenceState:
    """The sequential run on Bernoulli(p) draws (one input per entry of p), as the sampler would feed it."""
    p = np.asarray(p, dtype=float)
    return certifier.run(lambda size, active: rng.binomial(size, p), m=p.size)
