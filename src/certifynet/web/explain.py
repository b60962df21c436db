"""What a certificate says, in words, for the result page (torch-free: the numbers come from `certify`).

- The guarantee: with probability ≥ 1 − α over the certificate's own noise draws, the smoothed classifier
  g(x′) = argmax_c P(f(x′ + δ) = c) returns ĉ_A at every x′ with ‖x′ − x‖₂ < R (sequential: at each radius
  it decided C). An abstain certifies nothing.
- The cap: N draws cannot certify more than the radius of N hits out of N; for NP with Gaussian P that is
  R_max = σΦ⁻¹(α^{1/N}) (Clopper–Pearson's lower bound at N hits is α^{1/N}). A radius at the cap is
  flagged, with the N that the next radius step needs: the smallest N whose all-hit certificate reaches it.
  Both come from `certify.from_counts.certify_row` on the row with every draw a hit, so they hold for every
  counts method (DSRS: with the row's Q fixed; ISS: for the fresh draws n).
- Certified ≠ correct: a certificate says g is constant around x, not that it is right.
"""
from __future__ import annotations

import math

RADIUS_STEP = 0.25    # the analysis grid's step (0, 0.25, 0.5, ...): "the next radius step"
MAX_N = 10 ** 10      # certifynet.errors.MAX_SAMPLES


def _all_hits(row: dict, n: int) -> dict:
    """The counts row as if n draws were made and each one hit ĉ_A (Q draws likewise, n of n)."""
    out = dict(row, n=n, count=n)
    if "n_q" in row and str(row.get("n_q")) not in ("", "0"):
        out.update(n_q=n, count_q=n)
    return out


def cap_radius(row: dict, meta: dict, method: str, alpha: float, n: int | None = None) -> float:
    """The largest radius `method` can certify for this counts row with n (default: its own) draws."""
    from certifynet.certify.from_counts import certify_row
    n = int(row["n"]) if n is None else n
    if int(row.get("pred", -1)) < 0 or n <= 0:
        return 0.0
    return float(certify_row(_all_hits(row, n), meta, method, alpha)["radius"])


def n_for_radius(row: dict, meta: dict, method: str, alpha: float, radius: float) -> int | None:
    """The smallest N whose all-hit certificate reaches `radius` (bisection); None beyond MAX_N."""
    lo = max(int(row["n"]), 1)
    hi = lo
    while cap_radius(row, meta, method, alpha, hi) < radius:
        lo, hi = hi, hi * 4
        if hi > MAX_N:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cap_radius(row, meta, method, alpha, mid) >= radius else (mid, hi)
    return int(hi)


def next_step(radius: float) -> float:
    return (math.floor(radius / RADIUS_STEP + 1e-9) + 1) * RADIUS_STEP


def _noise_words(meta: dict) -> str:
    sigma, k = meta.get("sigma"), int(meta.get("k") or 0)
    noise = f"δ ~ N(0, σ²I), σ = {sigma:g}" if not k else f"δ from the generalized Gaussian (σ = {sigma:g}, k = {k})"
    return noise + (" (f: the classifier behind the denoiser)" if meta.get("denoiser") else "")


def guarantee(row: dict, method: str, meta: dict, alpha: float) -> str:
    """One plain sentence of what the row certifies."""
    predict, radius = int(float(row["predict"])), float(row["radius"])
    conf = f"{(1 - alpha) * 100:.10g}%"
    if method == "sequential":
        decided = dict(p.split(":") for p in (row.get("decisions") or "").split(",") if ":" in p)
        yes = [r for r, c in decided.items() if c == "C"]
        if predict < 0 or not yes:
            return (f"No radius certified: the draws did not show p_A above the threshold of any radius asked "
                    f"({', '.join(f'r = {r}: {c}' for r, c in decided.items())}; C certified, N not certifiable, "
                    f"U undecided within the cap).")
        return (f"With probability at least 1 − α = {conf} over its noise draws, the smoothed classifier g "
                f"({_noise_words(meta)}) returns class {predict} at every x′ with ‖x′ − x‖₂ < r for each radius "
                f"certified here (r = {', '.join(yes)}); so R = {radius:.4g}.")
    if predict < 0:
        return (f"No certificate: p̲_A = {float(row.get('pA_lower') or 0):.4f} < ½, so the smoothed classifier "
                f"abstains here (no class is sure enough at level α = {alpha:g}); this is not a prediction.")
    return (f"With probability at least 1 − α = {conf} over the certificate's own noise draws, the smoothed "
            f"classifier g(x′) = argmax_c P(f(x′ + δ) = c), {_noise_words(meta)}, returns class {predict} at every "
            f"x′ with ‖x′ − x‖₂ < R = {radius:.4f} (pixel values in [0, 1]).")


def explain(row: dict, method: str, meta: dict, alpha: float, counts_row: dict | None = None,
            counts_meta: dict | None = None) -> dict:
    """{sentence, at_cap, cap, next_radius, next_n, mismatch} for one result row (a certify log's)."""
    out = {"sentence": guarantee(row, method, meta, alpha), "at_cap": False, "cap": None, "next_radius": None,
           "next_n": None, "mismatch": None}
    predict, label, radius = int(float(row["predict"])), int(float(row["label"])), float(row["radius"])
    if predict >= 0 and label >= 0 and predict != label:
        out["mismatch"] = (f"Certified ≠ correct: g is certified to return class {predict} around x, but the true "
                           f"label is {label}. The certificate says the prediction cannot be changed within R, "
                           f"not that it is right.")
    if counts_row is not None and counts_meta is not None and predict >= 0 and method != "sequential":
        cap = cap_radius(counts_row, counts_meta, method, alpha)
        out["cap"] = cap
        if cap > 0 and radius >= cap * (1 - 1e-9):
            out["at_cap"] = True
            out["next_radius"] = next_step(radius)
            out["next_n"] = n_for_radius(counts_row, counts_meta, method, alpha, out["next_radius"])
    return out


def cap_words(info: dict, n: int, method: str, k: int = 0) -> str:
    """The flag shown when R is at the cap N allows."""
    gaussian_np = method in ("np", "iss-np") and not k
    formula = f" = σΦ⁻¹(α^(1/N)) = {info['cap']:.4f}" if gaussian_np else f" ({info['cap']:.4f})"
    text = (f"R is at the cap that N allows: even with all N = {n:,} draws on ĉ_A, no larger radius can be "
            f"certified{formula}.")
    if info["next_n"]:
        text += f" The next radius step, r = {info['next_radius']:g}, needs N ≥ {info['next_n']:,}."
    return text
