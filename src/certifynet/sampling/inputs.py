"""`InputSampler`: the per-input sampling of NP, DSRS (P and Q) and ISS, from a `SamplingConfig`.

Every count comes from the input's own (seed, idx, stream) generator (`streams`), so a row does not depend on
sharding, ordering, resumption or cross-input batching (`prefetch`, --inputs-per-batch). So does the noise ξ of a
K-step diffusion denoiser in f (`diffusion_noise_stream`, bound around each input's counts).
"""
from __future__ import annotations

import time

import torch

from certifynet.denoise.diffusion.denoiser import diffusion_noise_stream
from certifynet.noise import make_noise
from certifynet.progress import progress
from certifynet.sampling.config import SamplingConfig, check_inputs_per_batch, parse_percentile
from certifynet.sampling.engine import Sampler, check_finite_input
from certifynet.sampling.streams import STREAM_P, STREAM_Q, STREAM_Q_PILOT, STREAM_SELECT, input_generator

# Inputs with at least this many batches of draws get their own progress bar (N = 10⁶ at --batch 1000).
INNER_PROGRESS_BATCHES = 200


class InputSampler:
    """Per-input sampling for NP, DSRS (P and Q) and ISS; every stream seeded by (seed, idx, stream)."""

    def __init__(self, model, num_classes: int, dim: int, config: SamplingConfig, device):
        c = self.config = config
        self.device, self.dim = device, dim
        self.sampler = Sampler(model, num_classes, c.batch, device, c.amp, c.channels_last, c.optimize,
                               c.cuda_graph)
        self.inputs_per_batch = check_inputs_per_batch(c.inputs_per_batch)
        self._prefetched = {}  # (idx, stream) → counts sampled ahead by prefetch()
        dist = "general_gaussian" if c.k else c.dist  # --k K alone selects the generalized Gaussian
        self.p_noise = make_noise(dist, c.sigma, dim, c.k)
        self.q_dist = c.q_dist
        self.q_percentile = parse_percentile(c.q_percentile) if self.q_dist == "truncated" else None
        self.planner = None
        self.iss_step = min(c.batch, c.N)  # ISS sample sizes are multiples of this (the reference: the batch)
        if c.iss and c.q_dist == "none":  # ISS-NP plans with the Gaussian R(n, p); ISS-DSRS plans per input
            from certifynet.certify.iss import IssPlanner
            self.planner = IssPlanner(n_max=c.N, batch=self.iss_step, sigma=c.sigma, alpha=c.alpha,
                                      decline=c.iss_decline, mode=c.iss, n0=c.iss_n0)
        if self.q_dist == "rescaled":
            self.q_sigma = c.q_sigma if c.q_sigma is not None else 0.8 * c.sigma
            self.q_noise = make_noise("general_gaussian", self.q_sigma, dim, c.k)
        self.show_progress = c.progress

    def meta(self) -> dict:
        a = self.config
        m = {"sigma": a.sigma, "k": a.k, "d": self.dim, "dist": self.p_noise.params(), "N0": a.N0, "N": a.N,
             "alpha": a.alpha, "seed": a.seed, "select": a.select, "q_mode": None, "q_param": None, "iss": a.iss,
             # these fix how the (seed, idx) noise stream is laid out, so resumed rows stay identical
             "batch": a.batch, "channels_last": a.channels_last, "amp": a.amp, "optimize": a.optimize}
        if a.iss:
            m.update(N0=a.iss_n0, iss_decline=a.iss_decline, iss_n0=a.iss_n0)
        elif a.select == "label":
            m["N0"] = 0
        if self.q_dist == "rescaled":
            m.update(q_mode="rescaled", q_param=self.q_sigma)
        elif self.q_dist == "truncated":
            m.update(q_mode="truncated", q_param=self.q_percentile)
        return m

    def columns(self):
        cols = ["idx", "label", "pred", "n0", "n", "count"]
        if self.q_dist != "none":
            cols += ["n_q", "count_q", "q_kind", "q_param"]
        if self.config.iss:
            cols += ["pilot_n", "pilot_count"] + (["pilot_n_q", "pilot_count_q"] if self.q_dist != "none" else [])
        return cols + ["time"]

    def _gen(self, idx, stream):
        return input_generator(self.config.seed, idx, stream, self.device)

    def noise_stream(self, idx, stream):
        """Binds a K-step diffusion denoiser's ξ to input idx's `stream` (a no-op for any other f)."""
        return diffusion_noise_stream(self.sampler._source, self.config.seed, idx, stream)

    def _count(self, x, noise, n, idx, stream):
        """Class counts (numpy) of n draws from input idx's `stream`: sampled ahead by prefetch(), or now.
        Inputs of ≥ INNER_PROGRESS_BATCHES batches are counted in chunks of whole batches (the same draws)
        with a progress bar of their own."""
        ahead = self._prefetched.pop((idx, stream), None)
        if ahead is not None:
            return ahead
        with self.noise_stream(idx, stream):
            return self._count_now(x, noise, n, idx, stream)

    def _count_now(self, x, noise, n, idx, stream):
        s, gen = self.sampler, self._gen(idx, stream)
        chunk = INNER_PROGRESS_BATCHES * s.batch
        if n < chunk or not self.show_progress:
            return s.counts_np(x, noise, n, gen)
        total = None
        with progress(n, f"input {idx}", "draw", leave=False) as bar:
            for start in range(0, n, chunk):
                part = s.counts_np(x, noise, min(chunk, n - start), gen)
                total = part if total is None else total + part
                bar.update(min(chunk, n - start))
        return total

    def _truncated_q(self, p_lower, p_upper):
        """Truncated Q with p_T fixed (a number) or from heuristic x / x+ on a P lower bound."""
        from certifynet.certify.dsrs import pooled_np_fallback_needed, truncation_beta, truncation_percentile
        a = self.config
        if self.q_percentile in ("x", "x+"):
            if self.q_percentile == "x+" and pooled_np_fallback_needed(p_upper):
                return self.p_noise, "P", float("nan")
            pt = truncation_percentile(p_lower, heuristic="x")
        else:
            pt = float(self.q_percentile)
        return make_noise("truncated", a.sigma, self.dim, a.k, percentile=pt,
                          beta=truncation_beta(pt, self.dim, a.k)), "Q", pt

    def _choose_q(self, count, n, alpha_bound):
        """(Q noise, kind, q_param), fixed from P counts that are independent of every Q draw."""
        if self.q_dist == "rescaled":
            return self.q_noise, "Q", self.q_sigma
        from certifynet.certify.neyman_pearson import cp_interval
        return self._truncated_q(*cp_interval(count, n, alpha_bound))

    def _q_pilot_cap(self, pilot_count: int) -> int:
        """ISS-DSRS: the budget cap when a Q pilot can save draws for this P pilot count, else 0 (fixed run)."""
        from certifynet.certify.iss import iss_dsrs_q_pilot_cap
        a = self.config
        return iss_dsrs_q_pilot_cap(pilot_count, a.iss_n0, a.N, self.iss_step, a.sigma, a.alpha, a.iss_decline,
                                    a.iss)

    def select(self, idx: int, x: torch.Tensor, label: int) -> tuple[int, int]:
        """(ĉ_A, selection draws): the top class of N0 STREAM_SELECT draws (Cohen's CERTIFY), or the label, 0."""
        if self.config.select == "n0":
            return int(self._count(x, self.p_noise, self.config.N0, idx, STREAM_SELECT).argmax()), self.config.N0
        return label, 0

    def sample(self, idx: int, x: torch.Tensor, label: int) -> dict:
        """One counts row for input idx.

        Fixed budget: ĉ_A from N0 selection draws (or the label), then N fresh P draws, and for DSRS N
        fresh Q draws (truncated Q's p_T from the P run's bound at α/2, as in the reference).
        ISS: a pilot of n0 draws picks ĉ_A and the sample size; the certificate uses fresh draws only.
        ISS-DSRS also fixes Q from the P pilot and, where that can save draws, draws an n0 Q pilot and plans
        (n_P, n_Q) within a cap; elsewhere it runs n_P = n_Q = N (never dearer than fixed-N DSRS).
        """
        check_finite_input(x, idx)
        a, t0 = self.config, time.time()
        row = {"idx": idx, "label": label}
        q = None
        if a.iss:
            pilot = self._count(x, self.p_noise, a.iss_n0, idx, STREAM_SELECT)
            pred = int(pilot.argmax()) if a.select == "n0" else label
            k0 = int(pilot[pred])
            row.update(n0=a.iss_n0, pilot_n=a.iss_n0, pilot_count=k0)
            if self.q_dist == "none":
                n = n_q = self.planner.sample_size(k0)
            else:
                from certifynet.certify.iss import dsrs_expected_radius_fn, iss_dsrs_budget
                q = self._choose_q(k0, a.iss_n0, 2 * a.alpha)  # one-sided pilot bound at α
                cap = self._q_pilot_cap(k0)
                n = n_q = a.N  # the Q pilot cannot save draws: the fixed run (cost n0 + 2N)
                row.update(pilot_n_q=0, pilot_count_q=0)
                if cap:  # it can: plan within the cap, so that cost 2·n0 + 2n ≤ n0 + 2N
                    kq0 = int(self._count(x, q[0], a.iss_n0, idx, STREAM_Q_PILOT)[pred])
                    row.update(pilot_n_q=a.iss_n0, pilot_count_q=kq0)
                    radius_fn = dsrs_expected_radius_fn(a.sigma, self.dim, a.k, self.q_dist, q[2], a.alpha)
                    n, n_q = iss_dsrs_budget(k0, kq0, a.iss_n0, a.N, self.iss_step, a.alpha, a.iss_decline, a.iss,
                                             radius_fn, n_cap=cap)
        else:
            pred, row["n0"] = self.select(idx, x, label)
            n = n_q = a.N
        count = int(self._count(x, self.p_noise, n, idx, STREAM_P)[pred]) if n > 0 else 0
        row.update(pred=pred, n=n, count=count)
        if self.q_dist != "none":
            q_noise, kind, q_param = q or self._choose_q(count, n, a.alpha / 2)
            count_q = int(self._count(x, q_noise, n_q, idx, STREAM_Q)[pred]) if n_q > 0 else 0
            row.update(n_q=n_q, count_q=count_q, q_kind=kind, q_param=q_param)
        row["time"] = round(time.time() - t0, 4)
        return row

    def predict_counts(self, idx: int, x: torch.Tensor):
        """Class counts of N fresh P draws for Cohen's PREDICT (stream P), after the input check."""
        check_finite_input(x, idx)
        return self._count(x, self.p_noise, self.config.N, idx, STREAM_P)

    # ---- cross-input batching of the selection / pilot draws (--inputs-per-batch)
    def prefetch(self, items) -> None:
        """Sample the first draws of several inputs [(idx, x, label)] together (`Sampler.counts_many`): the N0
        selection draws, or the ISS pilot (and, for ISS-DSRS, the Q pilot, with Q fixed from each P pilot).
        Each input's draws come from its own (seed, idx, stream) generator in the chunks `sample` would use, so
        its noise is the same as alone, and so are its rows wherever f's output on a row does not depend on the
        other rows of its forward pass (see `Sampler.counts_many`). These draws only choose ĉ_A and the sample
        sizes; the certificate's counts are always drawn afresh, input by input."""
        a = self.config
        n_first = a.iss_n0 if a.iss else (a.N0 if a.select == "n0" else 0)
        if n_first <= 0 or len(items) < 2:
            return
        for idx, x, _ in items:
            check_finite_input(x, idx)
        xs = [x for _, x, _ in items]
        # (K-step diffusion noise would come from the first input's stream; SamplingConfig refuses K > 1 here)
        with self.noise_stream(items[0][0], STREAM_SELECT):
            pilots = self.sampler.counts_many(xs, self.p_noise, [n_first] * len(xs),
                                              [self._gen(idx, STREAM_SELECT) for idx, _, _ in items]).cpu().numpy()
        self._prefetched.update({(idx, STREAM_SELECT): c for (idx, _, _), c in zip(items, pilots)})
        if a.iss and self.q_dist != "none":
            preds = [int(c.argmax()) if a.select == "n0" else label for c, (_, _, label) in zip(pilots, items)]
            # only where `sample` will draw a Q pilot (it can save draws)
            todo = [j for j, (c, p) in enumerate(zip(pilots, preds)) if self._q_pilot_cap(int(c[p]))]
            if not todo:
                return
            qs = [self._choose_q(int(pilots[j][preds[j]]), n_first, 2 * a.alpha)[0] for j in todo]
            with self.noise_stream(items[todo[0]][0], STREAM_Q_PILOT):
                q_pilots = self.sampler.counts_many([xs[j] for j in todo], qs, [n_first] * len(todo),
                                                    [self._gen(items[j][0], STREAM_Q_PILOT) for j in todo])
            q_pilots = q_pilots.cpu().numpy()
            self._prefetched.update({(items[j][0], STREAM_Q_PILOT): c for j, c in zip(todo, q_pilots)})

    def prefetcher(self, data, item):
        """For run_rows: prefetch(idxs) sampling the first draws of `inputs_per_batch` inputs at a time
        (item(data, i) → (x, label)); None when --inputs-per-batch is 1."""
        if self.inputs_per_batch <= 1:
            return None

        def prefetch(idxs):
            self.prefetch([(i, *item(data, i)) for i in idxs])
        prefetch.group = self.inputs_per_batch
        return prefetch
