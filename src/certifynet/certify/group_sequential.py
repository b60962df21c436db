"""Group-sequential certification at fixed radii, calibrated exactly for the batch schedule. Pure numpy/scipy.

Question per input and radius r (threshold θ_r, `sequential.radius_threshold`): is p_A > θ_r? Draws arrive on
the schedule fixed in advance (`sequential.batch_schedule`: 32, 64, … up to --batch, cap N), checks at
n_1 < … < n_K, S_{n_k} hits of ĉ_A.

Per radius, a group-sequential test (`gs_boundaries.calibrated_design`):
* certify (C) at the first check with S_{n_k} ≥ b_k(θ_r), where b = min(Clopper–Pearson at λ*, the
  confidence-sequence boundary) and λ* is the largest level with P_{θ_r}(∃k : S_{n_k} ≥ b_k) ≤ α, computed
  exactly by `crossing.crossing_probability`;
* refute (N) at the first check with S_{n_k} ≤ a_k(θ_r), the mirror image, P_{θ_r}(∃k : S_{n_k} ≤ a_k) ≤ α;
* with `futility=γ`, give up (N) when the Clopper–Pearson upper bound ū at level γ is below θ_r; with
  futility_rule="projected" also when even at the rate ū the expected path misses every later boundary;
* out of reach (U): no boundary crossing is possible any more at r (even if every remaining draw hits), or
  the confidence-sequence rule would say so (all hits to the cap would not lift its L above θ_r).
Closure: C at r only if C at every smaller radius; N (refuted) at r only if refuted at every larger radius;
a radius blocked by a smaller one that was refuted, given up or out of reach is settled (U, or N if given up).
An input stops when every radius is settled, or at the cap.

α accounting (docs/sequential.md): P_p(∃k : S_{n_k} ≥ b_k) is non-decreasing in p (S_n is stochastically
increasing in p, the event is an up-set), so ≤ α for every p ≤ θ_r. A false C at any r implies a crossing at
r° = the smallest radius with θ_{r°} ≥ p_A (closure), so P(some false C) ≤ α for all radii together, with no
split. Stopping early (refuting, giving up, out of reach, settled elsewhere) only removes crossings of the full
schedule's boundary, so never adds to it. Refutations: P(some false N from refutation) ≤ α likewise; "given up"
N's make no claim. Unlike `sequential.SequentialCertifier`, the guarantee needs the schedule, α and radii fixed
before the draws and holds only for the decisions at these radii: `lower`/`upper` in the state are the
anytime-valid confidence sequence (valid at α on their own), reported alongside.

Against the confidence-sequence rule (`SequentialCertifier`, the same schedule and α): b_k ≤ b^cs_k and every
stop of that rule is a stop here, so on every input this rule stops no later and certifies every radius that
rule certifies (unless its own refuting boundary ruled the radius out first: a path crossing one boundary, then
the other).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from certifynet.certify.gs_boundaries import (
    DEFAULT_FAMILY,
    FAMILIES,
    Design,
    calibrated_design,
    futility_boundary,
    projected_futility_boundary,
)
from certifynet.certify.sequential import (
    DEFAULT_PRIOR,
    FIRST_BATCH,
    RadiusDecisions,
    batch_schedule,
    check_radii,
    confidence_sequence,
    radius_threshold,
)
from certifynet.errors import CertifyNetError, check_alpha, check_sigma

RULE = "group-sequential"
FUTILITY_RULES = ("upper", "projected")


@dataclass
class GroupSequentialState:
    """Per-input arrays of one run (m inputs); [m, R] flags are per radius, radii ascending."""
    hits: np.ndarray
    draws: np.ndarray
    lower: np.ndarray         # running max of the confidence sequence's L_t (anytime-valid at α on its own)
    upper: np.ndarray         # running min of the confidence sequence's U_t
    active: np.ndarray
    crossed: np.ndarray       # S ≥ b at some check (certifying boundary crossed)
    refuted: np.ndarray       # S ≤ a at some check
    gave_up: np.ndarray       # futility: CP upper bound at γ below θ
    out_of_reach: np.ndarray  # no crossing possible any more
    checks: int = 0           # schedule batches fed to the active inputs

    @property
    def m(self):
        return self.hits.size


def _check_futility(futility):
    if futility is None:
        return None
    g = float(futility)
    if not 0.0 < g < 1.0:
        raise CertifyNetError(f"{{futility}} must be in (0, 1) or None, got {futility}", "futility")
    return g


class GroupSequentialCertifier(RadiusDecisions):
    """The calibrated group-sequential rule; same interface as `sequential.SequentialCertifier`.

    boundary: "cp+cs" (default: dominates the confidence-sequence rule on every input), "cp" or "mixture"
    (gs_boundaries).
    futility: None, or γ to give up at r when the Clopper–Pearson upper bound ū at level γ is below θ_r.
    futility_rule: "upper" (that rule) or "projected" (also give up when S + (n_k' − n_k)·ū < b_k' at every later
    check k': at the optimistic rate ū, the expected path misses the boundary; docs/sequential.md).
    """

    def __init__(self, radii, sigma, alpha, n_max, batch, d=None, k=0, *, boundary: str = DEFAULT_FAMILY,
                 futility: float | None = None, futility_rule: str = "upper", prior=DEFAULT_PRIOR,
                 first_batch=FIRST_BATCH):
        self.alpha, self.sigma = check_alpha(alpha), check_sigma(sigma)
        self.radii = np.array(check_radii(radii))
        if boundary not in FAMILIES:
            raise CertifyNetError(f"{{boundary}} must be one of {', '.join(FAMILIES)}, got {boundary!r}", "boundary")
        if futility_rule not in FUTILITY_RULES:
            raise CertifyNetError(f"{{futility_rule}} must be one of {', '.join(FUTILITY_RULES)}, got "
                                  f"{futility_rule!r}", "futility_rule")
        self.boundary, self.futility, self.futility_rule = boundary, _check_futility(futility), futility_rule
        self.prior = tuple(float(v) for v in prior)
        confidence_sequence(0, 0, self.alpha, self.prior)  # refuses a bad prior before calibrating
        self.n_max, self.d, self.k = int(n_max), d, int(k or 0)
        self.schedule = batch_schedule(n_max, batch, first_batch)
        self.checks = np.cumsum(self.schedule)
        self.thresholds = np.array([radius_threshold(r, sigma, d, k) for r in self.radii])
        self.designs = [self._design(float(th)) for th in self.thresholds]
        self.certify_at = np.array([dz.upper for dz in self.designs])    # [R, K]: C when S ≥
        self.refute_at = np.array([dz.lower for dz in self.designs])     # [R, K]: N when S ≤
        self.give_up_at = self._give_up_boundaries()                     # [R, K]: N (given up) when S ≤
        self.reach_at = self._reach_boundaries()                         # [R, K]: U when S <

    def _design(self, theta: float) -> Design:
        """The calibrated test at θ (tests override this with a deliberately uncalibrated one)."""
        return calibrated_design(tuple(self.schedule.tolist()), theta, self.alpha, self.boundary, self.prior)

    def _give_up_boundaries(self) -> np.ndarray | None:
        if self.futility is None:
            return None
        give_up = np.array([futility_boundary(self.checks, th, self.futility) for th in self.thresholds])
        if self.futility_rule == "projected":
            projected = [projected_futility_boundary(self.checks, dz.upper, self.futility) for dz in self.designs]
            give_up = np.maximum(give_up, np.array(projected))
        return give_up

    def _reach_boundaries(self) -> np.ndarray:
        """u[r, k]: S_{n_k} < u ⟹ no future check can be crossed, even if every remaining draw hits (own
        boundary: ∀k' > k, S + n_k' − n_k < b_k'), or the confidence-sequence rule would call r out of reach
        (all hits to the cap leave its L ≤ θ: S + N − n_k < b^cs_K, with b^cs_K ≥ b_K)."""
        b, n = self.certify_at, self.checks
        ahead = b - n[None, :]                                 # b_k' − n_k'
        future = np.minimum.accumulate(ahead[:, ::-1], axis=1)[:, ::-1]  # min over k' ≥ k
        own = np.concatenate([future[:, 1:], np.full((b.shape[0], 1), np.iinfo(np.int64).max // 4)], axis=1)
        own = own + n[None, :]
        cs_reach = np.array([dz.cs_upper[-1] for dz in self.designs])[:, None] - (n[-1] - n[None, :])
        return np.maximum(own, cs_reach)

    def params(self) -> dict:
        """What a log's sidecar records: the rule, its calibrated levels and the schedule."""
        return {"radii": self.radii.tolist(), "thresholds": self.thresholds.tolist(), "sequential_rule": RULE,
                "boundary": self.boundary, "levels": [float(f"{dz.level:.6g}") for dz in self.designs],
                "refute_levels": [float(f"{dz.refute_level:.6g}") for dz in self.designs],
                "crossing_at_threshold": [float(f"{dz.crossing.bound:.4g}") for dz in self.designs],
                "futility": self.futility, "futility_rule": self.futility_rule if self.futility else None,
                "first_batch": int(self.schedule[0]), "checks": int(self.schedule.size),
                "confidence_sequence": "beta-binomial mixture (Robbins), two-sided, all radii at alpha (pA bounds)",
                "cs_prior": list(self.prior)}

    def bounds(self, hits, draws):
        """Today's anytime-valid (L_t, U_t) at α: reported as pA_lower / pA_upper, not used to decide."""
        return confidence_sequence(hits, draws, self.alpha, self.prior)

    def start(self, m=1) -> GroupSequentialState:
        z, flags = np.zeros(m), np.zeros((m, self.radii.size), dtype=bool)
        return GroupSequentialState(hits=z.astype(np.int64), draws=z.astype(np.int64), lower=z.copy(),
                                    upper=z + 1.0, active=np.ones(m, dtype=bool), crossed=flags.copy(),
                                    refuted=flags.copy(), gave_up=flags.copy(), out_of_reach=flags.copy())

    def update(self, state: GroupSequentialState, new_hits, new_draws) -> GroupSequentialState:
        """Add the next scheduled batch to the active inputs, apply the boundaries of that check, deactivate
        the settled inputs. The batch must be the schedule's next one (the calibration assumes it)."""
        k = state.checks
        if k >= self.schedule.size or int(new_draws) != int(self.schedule[k]):
            raise CertifyNetError(f"the group-sequential rule needs the batches of its schedule: batch {k + 1} "
                                  f"must have {self.schedule[k] if k < self.schedule.size else 0} draws, "
                                  f"got {new_draws}")
        act = np.flatnonzero(state.active)
        state.hits[act] += np.broadcast_to(new_hits, state.hits.shape)[act]
        state.draws[act] += int(new_draws)
        lo, up = self.bounds(state.hits[act], state.draws[act])
        state.lower[act] = np.maximum(state.lower[act], lo)
        state.upper[act] = np.minimum(state.upper[act], up)
        s = state.hits[act][:, None]
        dead = state.refuted[act] | state.gave_up[act] | state.out_of_reach[act]
        crossed = state.crossed[act] | (~dead & (s >= self.certify_at[None, :, k]))
        live = ~crossed
        state.crossed[act] = crossed
        state.refuted[act] |= live & (s <= self.refute_at[None, :, k])
        if self.give_up_at is not None:
            state.gave_up[act] |= live & (s <= self.give_up_at[None, :, k])
        state.out_of_reach[act] |= live & (s < self.reach_at[None, :, k])
        state.checks = k + 1
        state.active[act] = (state.draws[act] < self.n_max) & ~self.settled(state)[act]
        return state

    def _codes(self, state) -> np.ndarray:
        """[m, R] int codes: 2 C, 1 N (refuted, or given up), 0 U, −1 still open; closure over radii."""
        certified = np.cumprod(state.crossed, axis=1).astype(bool)                  # crossed at every r' ≤ r
        refuted = np.cumprod(state.refuted[:, ::-1], axis=1)[:, ::-1].astype(bool)  # refuted at every r' ≥ r
        given_up = np.cumsum(state.gave_up, axis=1) > 0
        blocked = np.cumsum(state.refuted | state.gave_up | state.out_of_reach, axis=1) > 0
        return np.where(certified, 2, np.where(refuted | given_up, 1, np.where(blocked, 0, -1)))
