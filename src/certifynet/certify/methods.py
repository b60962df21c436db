"""The certification methods, once: their names (the `--method` values and a log's `method` column), titles,
which counts each reads, the sampling flags it needs, and where it comes from.

Every front end reads this table (certify.py's choices, the web form, analyze's styles), so a method is
added in one place.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One certification method.

    `reads`: the kinds of counts file it can certify (see `counts_kind`); empty for methods that sample as
    they go (sequential). `sampling`: the sample.py flags that produce its counts."""

    name: str
    title: str
    reads: tuple[str, ...]
    sampling: str
    paper: str
    doc: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("np", "NP (Cohen et al.)", ("np", "dsrs"), "no --q-dist, no --iss",
           "Cohen, Rosenfeld & Kolter, ICML 2019", "docs/methods.md#np"),
    Method("dsrs", "DSRS", ("dsrs",), "--q-dist truncated|rescaled",
           "Li et al., Double Sampling Randomized Smoothing, ICML 2022", "docs/methods.md#dsrs"),
    Method("iss-np", "ISS-NP", ("iss-np", "iss-dsrs"), "--iss absolute|relative",
           "Chen et al., Input-Specific Robustness Certification, AAAI 2022", "docs/methods.md#iss"),
    Method("iss-dsrs", "ISS-DSRS", ("iss-dsrs",), "--iss ... --q-dist ...",
           "Chen et al. 2022 with Li et al. 2022", "docs/iss_dsrs.md"),
    Method("sequential", "Sequential", (), "certify.py --model ... --sequential --radii ...",
           "group-sequential tests calibrated exactly per radius, or an anytime-valid confidence sequence (this "
           "toolkit)", "docs/sequential.md"),
)}

# The methods that certify a stored counts file (certify.py --counts --method ...).
COUNTS_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.reads)


def counts_kind(meta: dict) -> str:
    """'np', 'dsrs', 'iss-np' or 'iss-dsrs': what a counts file holds, from its sidecar."""
    return ("iss-" if meta.get("iss") else "") + ("dsrs" if meta.get("q_mode") else "np")
