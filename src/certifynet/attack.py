"""Attacks on the smoothed classifier: SmoothAdv's L2 PGD, the certificate audit, empirical robust accuracy.

**The attack** (Salman et al., NeurIPS 2019) runs on the smoothed soft classifier, estimated with m draws,
p̂(x) = (1/m) Σ_i softmax f(x + δ_i).  For input x and class c (the certified class, or the label):

    x^0 = x (first restart) or a uniform point of the ε-ball (further restarts),
    x^{t+1} = clip_[0,1](Π_ε(x^t + s·g/‖g‖₂)),   g = ∇_x −log p̂(x^t)_c,   s = 2ε/T,   t = 0 … T−1,

which is ``training.losses.smoothed_pgd_path`` (SmoothAdv training uses the same code): the same m draws at
every step of a restart, and the m·B noisy copies of a batch of B inputs in one forward/backward pass.  Of
the restarts it keeps the end point with the smallest p̂_c on m further draws (not those it descended on).
It works for any base model (a denoiser in front included) and any `certifynet.noise` distribution.

**Seeds.**  Input idx draws its attack noise from ``input_generator(seed, idx, STREAM_ATTACK)`` and the
PREDICT draws at the attacked point from ``STREAM_ATTACK_PREDICT``: independent of every sampling stream (so
of the certificate's draws) and of how inputs are batched, so runs reproduce.  A K-step diffusion denoiser in
the model draws its noise ξ from the same input's stream (`diffusion_noise_stream`): PREDICT's from input idx's,
the attack's from the first input of its batch (the attack is not a certificate: only its reproducibility
depends on the batching).

**Audit.**  A certificate (c, R) claims g(x') = c for ‖x' − x‖ < R, with probability ≥ 1 − α_c over its own
draws.  PREDICT with n fresh draws at any x' returns a class other than g(x') with probability ≤ α_p (Cohen
et al. 2019, Thm. 2).  For every row i of the audited log, certified or not, let V_i = 1 when the row is
certified (R > 0) and PREDICT(x + δ) ∉ {c, abstain} with ‖δ‖ ≤ R.  Whatever the attack does,
P(V_i = 1) ≤ P(certificate i false) + P(PREDICT wrong) ≤ α_c + α_p, and the V_i of different inputs are
independent, so over the n audited ROWS the number of violations v is stochastically below
Binomial(n, α_c + α_p).  n counts every row (an abstain or R = 0 is a non-violation), never only the
certified ones: which rows are certified is decided by the certificates' own draws, and a valid certifier
that certifies mostly when its draws come out high has a violation rate among its certified rows far above
α_c (tests/test_accounting.py: such a certifier is flagged in 79% of 2,000 simulated audits at level 0.01 with
n = certified rows, in none with n = every row).  Certified rows that were not attacked (--max, --shard) count as
non-violations, which only lowers v: the level stays true.  The audit reports v/n with its one-sided
Clopper–Pearson upper bound, and flags the certificates when the binomial test of H0: rate ≤ α_c + α_p
rejects at `level`, i.e. p = P[Bin(n, α_c + α_p) ≥ v] < level.  Several audits: see docs/attack.md.

**Runs** (what attack.py and the web app run): `run_audit` attacks every certified input of a certify log (or
of a counts file certified with a method) and writes an audit log + summary; `run_attack_curve` attacks the
label at each ε of a grid and writes a curve log; `run_attack` runs either from an `AttackOptions`. (The module
is a little over 400 lines: the attack, the audit's statistics and these runs are one story, told once.)

**Empirical robust accuracy** at ε is the fraction of inputs where PREDICT at the attacked point x + δ_ε
(attacking the label) returns the label; an abstain counts as wrong.  Certified accuracy at r = ε is, up to
α, a lower bound on it.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from scipy.stats import binom

from certifynet.certify import cp_upper, predict_from_counts
from certifynet.certify.outcome import ABSTAIN, is_correct
from certifynet.errors import CertifyNetError
from certifynet.noise import Noise
from certifynet.sampling.engine import Sampler
from certifynet.sampling.inputs import diffusion_noise_stream
from certifynet.sampling.streams import STREAM_ATTACK, STREAM_ATTACK_PREDICT, input_generator
from certifynet.training.losses import smoothed_pgd_path, smoothed_soft_nll


@dataclass
class AttackResult:
    """Per input of a batch: the attacked point, p̂_c there on held-out draws, and argmax f (no noise) there."""
    x_adv: torch.Tensor
    soft_p: torch.Tensor
    base_pred: torch.Tensor


class SmoothedPGD:
    """L2 PGD on the smoothed soft classifier (module doc), for batches of inputs with per-input ε."""

    def __init__(self, model: torch.nn.Module, noise: Noise, m: int = 32, steps: int = 20, restarts: int = 1,
                 seed: int = 0, device=None):
        for name, v in (("--m", m), ("--steps", steps), ("--restarts", restarts)):
            if int(v) < 1:
                raise CertifyNetError(f"{name} must be >= 1, got {v}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.noise, self.m, self.steps, self.restarts, self.seed = noise, int(m), int(steps), int(restarts), seed

    def _draw(self, gens, x: torch.Tensor) -> torch.Tensor:
        """m draws per input from its own generator, shaped (m, B, *x.shape[1:])."""
        buf = torch.empty((x.shape[0], self.m, *x.shape[1:]), device=x.device, dtype=x.dtype)
        for b, g in enumerate(gens):
            self.noise.sample_(buf[b], g)
        return buf.transpose(0, 1)

    @staticmethod
    def _random_start(gens, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x + a uniform point of each input's ε-ball (direction u/‖u‖, u ~ N(0, I); norm ε·U^(1/d))."""
        d = x[0].numel()
        out = torch.empty_like(x)
        for b, g in enumerate(gens):
            u = torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
            r = eps[b] * torch.rand((), generator=g, device=x.device, dtype=x.dtype) ** (1.0 / d)
            out[b] = x[b] + u * (r / u.norm().clamp_min(1e-12))
        return out

    @torch.no_grad()
    def _soft_p(self, gens, x, target):
        return torch.exp(-smoothed_soft_nll(self.model, x, target, self._draw(gens, x)))

    def attack(self, x: torch.Tensor, target: torch.Tensor, eps, idxs: Sequence[int]) -> AttackResult:
        """Attack a batch x (B, C, H, W) away from classes `target` (B,) within radii `eps` (B,) or a float."""
        with diffusion_noise_stream(self.model, self.seed, int(idxs[0]), STREAM_ATTACK):
            return self._attack(x, target, eps, idxs)

    def _attack(self, x: torch.Tensor, target: torch.Tensor, eps, idxs: Sequence[int]) -> AttackResult:
        x = x.to(self.device, torch.float32)
        target = torch.as_tensor(target, device=self.device, dtype=torch.long)
        eps = torch.as_tensor(eps, device=self.device, dtype=x.dtype).expand(x.shape[0]).contiguous()
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise CertifyNetError(f"attack radii must be finite and >= 0, got {eps.tolist()}")
        gens = [input_generator(self.seed, int(i), STREAM_ATTACK, self.device) for i in idxs]
        best_x, best_p = x.clone(), torch.full((x.shape[0],), math.inf, device=self.device)
        runs = self.restarts if float(eps.max()) > 0 else 0
        for r in range(runs):
            start = None if r == 0 else self._random_start(gens, x, eps)
            _, x_r = smoothed_pgd_path(self.model, x, target, self._draw(gens, x), self.steps,
                                       2.0 * eps / float(self.steps), maxnorm=eps, start=start)  # T > 2^63 too
            p = self._soft_p(gens, x_r, target)
            better = p < best_p
            best_x[better], best_p = x_r[better], torch.where(better, p, best_p)
        if runs == 0:
            best_p = self._soft_p(gens, x, target)
        with torch.no_grad():
            base_pred = self.model(best_x).argmax(1)
        return AttackResult(best_x, best_p, base_pred)


def predict_at(sampler: Sampler, noise: Noise, x: torch.Tensor, n: int, alpha: float, seed: int, idx: int) -> dict:
    """Cohen's PREDICT at x with n draws from input idx's STREAM_ATTACK_PREDICT: predict (−1 = abstain), the
    top two counts, the p-value, and the class counts."""
    with diffusion_noise_stream(sampler._source, seed, idx, STREAM_ATTACK_PREDICT):
        counts = sampler.counts_np(x, noise, n, input_generator(seed, idx, STREAM_ATTACK_PREDICT, sampler.device))
    pred, n1, n2, pvalue = predict_from_counts(counts, alpha)
    return {"predict": pred, "count1": n1, "count2": n2, "pvalue": pvalue, "counts": counts}


def attack_and_predict(attacker: SmoothedPGD, sampler: Sampler, noise: Noise, x: torch.Tensor, target, eps,
                       idxs: Sequence[int], n: int, alpha: float) -> list:
    """Attack a batch, then PREDICT at each attacked point with fresh draws.  One dict per input: eps, adv_norm
    (‖δ‖₂), base_flip (argmax f(x+δ) ≠ target), soft_p, predict, p_hat (fraction of the n draws on target),
    count1, count2, pvalue, time (seconds: the batch's attack shared equally, plus its own PREDICT)."""
    t0 = time.time()
    res = attacker.attack(x, target, eps, idxs)
    norms = (res.x_adv - x.to(res.x_adv.device)).flatten(1).norm(dim=1).tolist()
    eps_list = torch.as_tensor(eps, dtype=torch.float64).expand(len(idxs)).tolist()
    share = (time.time() - t0) / len(idxs)
    rows = []
    for b, idx in enumerate(idxs):
        t1 = time.time()
        c = int(target[b])
        pr = predict_at(sampler, noise, res.x_adv[b], n, alpha, attacker.seed, int(idx))
        rows.append({"eps": float(eps_list[b]), "adv_norm": float(norms[b]),
                     "base_flip": int(int(res.base_pred[b]) != c),
                     "soft_p": float(res.soft_p[b]), "predict": pr["predict"], "p_hat": float(pr["counts"][c]) / n,
                     "count1": pr["count1"], "count2": pr["count2"], "pvalue": pr["pvalue"],
                     "time": round(share + time.time() - t1, 4)})
    return rows


@dataclass
class AuditSummary:
    """Counts and the binomial verdict of an audit (module doc): n = `rows`, every audited row of the log."""
    attacked: int         # certified rows (c ≥ 0, R > 0) attacked
    violations: int       # v: attacked rows where PREDICT(x + δ) ∉ {c, abstain}
    alpha_cert: float     # α_c of the certificates
    alpha_predict: float  # α_p of PREDICT at x + δ
    level: float          # level of the binomial test
    rows: int             # n: the audited rows of the log, certified or not

    def __post_init__(self):
        if not 0 <= self.violations <= self.attacked <= self.rows:
            raise CertifyNetError(f"an audit needs 0 <= violations <= attacked <= rows, got {self.violations}, "
                                  f"{self.attacked}, {self.rows}")

    @property
    def allowed(self) -> float:
        """α_c + α_p: the largest violation rate per row that sound certificates allow."""
        return self.alpha_cert + self.alpha_predict

    @property
    def rate(self) -> float:
        """v/n over every audited row."""
        return self.violations / self.rows if self.rows else math.nan

    @property
    def upper(self) -> float:
        """One-sided (1 − level) Clopper–Pearson upper bound on the violation rate per row."""
        return cp_upper(self.violations, self.rows, self.level) if self.rows else math.nan

    @property
    def p_value(self) -> float:
        """P[Bin(n, α_c + α_p) ≥ v], n = every audited row."""
        return float(binom.sf(self.violations - 1, self.rows, self.allowed)) if self.rows else 1.0

    @property
    def flagged(self) -> bool:
        return self.p_value < self.level

    def as_dict(self) -> dict:
        return {"rows": self.rows, "attacked": self.attacked, "violations": self.violations, "rate": self.rate,
                "upper": self.upper, "alpha_cert": self.alpha_cert, "alpha_predict": self.alpha_predict,
                "allowed": self.allowed, "p_value": self.p_value, "level": self.level, "flagged": self.flagged}

    def report(self) -> str:
        if not self.attacked:
            return f"audit: no certified input (R > 0) to attack among {self.rows} rows"
        verdict = (f"CERTIFICATES VIOLATED: {self.violations} violations in {self.rows} rows are too many for "
                   f"α_c + α_p (p = {self.p_value:.3g} < {self.level:g})" if self.flagged else
                   f"consistent with α: {self.violations} violations in {self.rows} rows are within α_c + α_p "
                   f"(p = {self.p_value:.3g} ≥ {self.level:g})")
        return (f"audit: {self.rows} rows, {self.attacked} certified inputs attacked, {self.violations} violations, "
                f"rate per row {self.rate:.4f} (Clopper–Pearson {1 - self.level:.0%} upper bound {self.upper:.4f}); "
                f"allowed α_c + α_p = {self.alpha_cert:g} + {self.alpha_predict:g} = {self.allowed:g}\n"
                f"verdict: {verdict}")


def audited_rows(rows, start: int = 0, end: int | None = None) -> int:
    """n of the audit's binomial test: the rows of the audited log with start ≤ idx < end, certified or not."""
    return sum(1 for r in rows if int(float(r["idx"])) >= start and (end is None or int(float(r["idx"])) < end))


def certified_targets(rows, eps_scale: float = 1.0) -> list:
    """(idx, label, certified class c, radius R, ε = R·eps_scale) for the rows of a certify log with c ≥ 0, R > 0."""
    if not (math.isfinite(eps_scale) and eps_scale > 0):
        raise CertifyNetError(f"{{eps_scale}} must be a finite number > 0, got {eps_scale}", "eps_scale")
    out = []
    for r in rows:
        c, radius = int(float(r["predict"])), float(r["radius"])
        if c >= 0 and radius > 0 and math.isfinite(radius):
            out.append((int(float(r["idx"])), int(float(r["label"])), c, radius, radius * eps_scale))
    return sorted(out)



# ------------------------------------------------------------------------------------------ the runs
AUDIT_COLUMNS = ["idx", "label", "certified", "radius", "eps", "adv_norm", "base_flip", "soft_p", "predict", "p_hat",
                 "count1", "count2", "pvalue", "violation", "time"]
CURVE_FIELDS = ["predict", "correct", "p_hat", "adv_norm"]  # one column each per ε: predict@0.5, ...
EPS_MARGIN = 1e-6  # audit radius R·scale·(1 − 1e-6): float32 rounding in the projection never leaves the ball
# What a log's sidecar and this run must agree on (key, the argument that sets it here).
SAME_MODEL = (("model_sha256", "model"), ("denoiser_sha256", "denoiser"), ("dataset", "dataset"),
              ("normalization", "normalization"), ("split", "split"), ("sigma", "sigma"), ("k", "k"),
              ("dist", "dist"))


@dataclass
class AttackOptions:
    """What attack.py takes beyond the sampling options: the attack (m, steps, restarts), and either the audit
    (log or counts + method, eps_scale, level) or the curve (eps)."""
    m: int = 32
    steps: int = 20
    restarts: int = 1
    eps: list = field(default_factory=list)
    log: str | None = None
    counts: str | None = None
    method: str = "np"
    eps_scale: float = 1.0
    level: float = 0.01

    @property
    def audit(self) -> bool:
        return bool(self.log or self.counts)


def _audit_source(opts: AttackOptions, alpha: float):
    """(certify-log rows, the source's sidecar, α of its certificates) from opts.log or opts.counts."""
    from certifynet.certify.from_counts import certify_row
    from certifynet.records import read_counts, read_meta, read_rows
    path = opts.log or opts.counts
    if not os.path.isfile(path):
        raise CertifyNetError(f"{'certify log' if opts.log else 'counts file'} '{path}' not found")
    meta = read_meta(path)
    header, rows = read_rows(path, sep=None if opts.log else ",")
    if opts.log:
        missing = [c for c in ("idx", "label", "predict", "radius") if c not in header]
        if missing or meta.get("kind") != "certify_log":
            raise CertifyNetError(f"'{path}' is not a certify log (kind {meta.get('kind')!r}, "
                                  f"missing {', '.join(missing) or 'nothing'})")
        return rows, meta, float(meta["alpha"])
    if meta.get("kind") != "counts":
        raise CertifyNetError(f"'{path}' is not a counts file (kind {meta.get('kind')!r})")
    meta, _, rows = read_counts(path)  # every check certify.py --counts makes: digests, completion record
    return [certify_row(r, meta, opts.method, alpha) for r in rows], meta, alpha


def _adopt_noise(config, src):
    """σ, k and P from the audited run's sidecar (a different value given here is refused later)."""
    if config.sigma is None:
        config.sigma = src.get("sigma")
    if config.k is None:
        config.k = int(src.get("k") or 0)
    if config.dist is None:
        config.dist = (src.get("dist") or {}).get("dist", "gaussian")


def _check_same_model(path, src, run):
    for key, name in SAME_MODEL:
        if src.get(key) != run.get(key):
            raise CertifyNetError(f"'{path}' was made with {key} {src.get(key)!r}, this run has {run.get(key)!r} "
                                  f"({{{name}}}); audit a log with the model that produced it", name)


def _pick(items, config, shard):
    """start/end (on idx), then skip/max/shard (on the list) of the certified inputs."""
    from certifynet.records import select_indices
    items = [t for t in items if t[0] >= config.start and (config.end is None or t[0] < config.end)]
    return [items[i] for i in select_indices(len(items), 0, None, config.skip, config.max, shard)]


def _stack(data, idxs):
    from certifynet.sampling.run import item
    return torch.stack([item(data, i)[0] for i in idxs])


def _chunk(config, opts):
    return max(1, config.batch // opts.m)


def _check_size(config, opts) -> None:
    """m noisy copies of batch // m inputs per attack step must fit (bounds.check_batch_memory), before any work."""
    from certifynet.bounds import check_batch_memory, input_dim
    check_batch_memory(_chunk(config, opts) * opts.m, input_dim(config.dataset), ("m", "batch"),
                       "noisy copies (m per input)")


def _attack_meta(config, opts, attacker):
    return {"attack": {"algorithm": "smoothadv_pgd_l2", "m": attacker.m, "steps": attacker.steps,
                       "restarts": attacker.restarts, "step_size": "2*eps/steps", "batch_inputs": _chunk(config, opts)},
            "predict_n": config.N, "predict_alpha": config.alpha}


def run_audit(config, opts: AttackOptions, command: str | None = None):
    """The audit (module doc) of opts.log, or of opts.counts certified with opts.method at config.alpha: a row per
    attacked input into config.out (default <log>.audit.tsv / <counts>.<method>.audit.tsv) and its summary into
    <out>.summary.json. Returns (out, AuditSummary), or (None, None) when this shard selects nothing."""
    from certifynet.models import file_sha256
    from certifynet.records import RowLog, read_rows
    from certifynet.records.guard import write_beside
    from certifynet.sampling.rows import nothing_to_do, run_batches
    from certifynet.sampling.run import open_run
    _check_size(config, opts)
    src_rows, src, alpha_cert = _audit_source(opts, config.alpha)
    path = opts.log or opts.counts
    items = certified_targets(src_rows, opts.eps_scale)
    _adopt_noise(config, src)
    default = (f"{os.path.splitext(path)[0]}.audit.tsv" if opts.log
               else f"{os.path.splitext(path)[0]}.{opts.method}.audit.tsv")
    run = open_run(config, "attack", default, command)
    sampler, data, meta, shard, out = run.sampler, run.data, run.meta, run.shard, run.out
    _check_same_model(path, src, meta)
    items = _pick(items, config, shard)
    if nothing_to_do(items, shard):
        return None, None
    attacker = SmoothedPGD(sampler.sampler.model, sampler.p_noise, opts.m, opts.steps, opts.restarts, config.seed,
                           sampler.device)
    meta = {**meta, **_attack_meta(config, opts, attacker), "kind": "attack_audit", "audited": os.path.abspath(path),
            "audited_sha256": file_sha256(path), "alpha_cert": alpha_cert, "eps_scale": opts.eps_scale,
            "eps_margin": EPS_MARGIN, "method": src.get("method", opts.method)}
    by_idx = {t[0]: t for t in items}

    def process(idxs):
        batch = [by_idx[i] for i in idxs]
        classes = torch.tensor([t[2] for t in batch])
        eps = [t[4] * (1 - EPS_MARGIN) for t in batch]
        rows = attack_and_predict(attacker, sampler.sampler, sampler.p_noise, _stack(data, idxs), classes, eps, idxs,
                                  config.N, config.alpha)
        return [{"idx": i, "label": label, "certified": c, "radius": radius, **r,
                 "violation": int(r["predict"] not in (c, ABSTAIN))}
                for (i, label, c, radius, _), r in zip(batch, rows)]

    with RowLog(out, AUDIT_COLUMNS, meta) as log:
        run_batches(log, list(by_idx), process, _chunk(config, opts), "audit", config.progress)
    _, rows = read_rows(out)
    summary = AuditSummary(len(rows), sum(int(r["violation"]) for r in rows), alpha_cert, config.alpha, opts.level,
                           rows=audited_rows(src_rows, config.start, config.end))
    write_beside(out, ".summary.json", lambda f: json.dump(summary.as_dict(), f, indent=1, sort_keys=True))
    return out, summary


def curve_columns(eps):
    return ["idx", "label"] + [f"{f}@{e:g}" for e in eps for f in CURVE_FIELDS] + ["time"]


def run_attack_curve(config, opts: AttackOptions, command: str | None = None):
    """Empirical robust accuracy (module doc): for each ε of opts.eps, attack the label, then PREDICT at x+δ;
    one row per input into config.out (default results/attack_curve.tsv). Returns (out, rows), or (None, [])."""
    from certifynet.paths import default_path
    from certifynet.records import RowLog, read_rows
    from certifynet.sampling.rows import nothing_to_do, run_batches
    from certifynet.sampling.run import item, open_run
    _check_size(config, opts)
    config.k = 0 if config.k is None else config.k
    config.dist = config.dist or "gaussian"
    run = open_run(config, "attack", default_path("results/attack_curve.tsv"), command)
    sampler, data, indices, meta, shard, out = run.sampler, run.data, run.indices, run.meta, run.shard, run.out
    if nothing_to_do(indices, shard):
        return None, []
    attacker = SmoothedPGD(sampler.sampler.model, sampler.p_noise, opts.m, opts.steps, opts.restarts, config.seed,
                           sampler.device)
    meta = {**meta, **_attack_meta(config, opts, attacker), "kind": "attack_curve", "eps": list(opts.eps)}
    labels = {i: int(item(data, i)[1]) for i in indices}

    def process(idxs):
        x, y = _stack(data, idxs), torch.tensor([labels[i] for i in idxs])
        rows = [{"idx": i, "label": labels[i], "time": 0.0} for i in idxs]
        for e in opts.eps:
            for row, r in zip(rows, attack_and_predict(attacker, sampler.sampler, sampler.p_noise, x, y, e, idxs,
                                                       config.N, config.alpha)):
                row.update({f"predict@{e:g}": r["predict"], f"correct@{e:g}": is_correct(r["predict"], row["label"]),
                            f"p_hat@{e:g}": r["p_hat"], f"adv_norm@{e:g}": r["adv_norm"]})
                row["time"] = round(row["time"] + r["time"], 4)
        return rows

    with RowLog(out, curve_columns(opts.eps), meta) as log:
        run_batches(log, indices, process, _chunk(config, opts), "attack curve", config.progress)
    _, rows = read_rows(out)
    return out, rows


def run_attack(config, opts: AttackOptions | dict, command: str | None = None):
    """`run_audit` or `run_attack_curve`, as opts says (a dict: the AttackOptions fields, e.g. from a web job)."""
    opts = opts if isinstance(opts, AttackOptions) else AttackOptions(**opts)
    return (run_audit if opts.audit else run_attack_curve)(config, opts, command)
