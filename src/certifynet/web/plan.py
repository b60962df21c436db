"""A job's plan: which library stages run, in which order, on which files; and the same as CLI commands.

A job certifies one input (or a batch) with one or several methods, as one group on shared counts where the
methods allow (`certify.from_counts.readers_of`): one fixed-budget counts file serves NP and DSRS (DSRS's P
draws are NP's), one ISS counts file serves ISS-NP and ISS-DSRS, and sequential samples as it goes. So the
stages are: `sample` per counts file, `certify` per counts method, `certify` (--sequential) with the model,
and for a batch `analyze` over every log (certified-accuracy curves overlaid, one table).

The plan is a list of stages in run order, each JSON-able (`stage`: the CLI stage, `options`: the options its
command gives, or for analyze `logs`/`labels`/`out`); the worker runs it and `commands` spells it as the
`certifynet-*` console commands (run from the app's root), so what runs and what is shown are one list.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass, field

from certifynet.certify.from_counts import readers_of
from certifynet.certify.methods import METHODS as METHOD_TABLE
from certifynet.errors import CertifyNetError
from certifynet.sampling.config import SamplingConfig

METHODS = {name: m.title for name, m in METHOD_TABLE.items()}   # the form's choices, in the table's order
COUNTS_KINDS = ("np", "dsrs", "iss-np", "iss-dsrs")               # what sample.py writes (counts_kind)
STAGE_ORDER = ("sample", "certify", "analyze", "attack")
COMMAND = {"sample": "certifynet-sample", "certify": "certifynet-certify", "analyze": "certifynet-analyze",
           "attack": "certifynet-attack"}
COUNTS_FILE = {"np": "counts.csv", "dsrs": "counts.csv", "iss-np": "counts-iss.csv", "iss-dsrs": "counts-iss.csv"}
NOISE = ("sigma", "k", "N", "alpha", "batch", "seed")               # every method's sampling options
Q_OPTIONS = ("q_dist", "q_percentile", "q_sigma")
ISS_OPTIONS = ("iss", "iss_decline", "iss_n0")


@dataclass
class GroupSettings:
    """The smoothing settings shared by a group of methods: `values` holds every option the form set (σ, k, N0,
    N, α, batch, seed, select, DSRS's Q, ISS's options, sequential's radii); `config(kind)` picks those that
    one stage's command gives."""
    methods: list
    values: dict = field(default_factory=dict)

    @property
    def sigma(self) -> float:
        return self.values["sigma"]

    @property
    def alpha(self) -> float:
        return self.values["alpha"]

    @property
    def N(self) -> int:
        return self.values["N"]

    @property
    def select(self) -> str:
        return self.values.get("select", "n0")

    def config(self, kind: str) -> SamplingConfig:
        """The noise options of one sampling stage: counts of `kind` (np, dsrs, iss-np, iss-dsrs) or sequential."""
        v = self.values
        keep = [n for n in NOISE if n in v and (n != "k" or v["k"])]
        iss, dsrs = kind.startswith("iss"), kind.endswith("dsrs")
        if v.get("select", "n0") != "n0":
            keep.append("select")
        elif not iss:
            keep.append("N0")
        if dsrs:
            keep += [n for n in Q_OPTIONS if n in v]
        if iss:
            keep += [n for n in ISS_OPTIONS if n in v]
        out = {n: v[n] for n in keep if n in v}
        if kind == "sequential":
            out.update(sequential=True, radii=list(v["radii"]))
        return SamplingConfig.from_explicit(out)

    def counts_kinds(self) -> list:
        """[(counts kind, the chosen methods certified from it)]: one counts file per kind, shared. Each step takes
        the kind that serves the most remaining methods (`readers_of`), its own method first on a tie, so
        DSRS counts serve NP only when DSRS is chosen too."""
        plan, remaining = [], [m for m in self.methods if m in COUNTS_KINDS]
        while remaining:
            kind = max(COUNTS_KINDS, key=lambda k: (sum(m in readers_of(k) for m in remaining), k in remaining))
            served = [m for m in remaining if m in readers_of(kind)]
            plan.append((kind, served))
            remaining = [m for m in remaining if m not in served]
        return plan

    def passes_per_input(self) -> tuple[int, bool]:
        """(forward passes per input of the whole group, exact?): each counts file's, plus sequential's cap."""
        total, exact = 0, True
        for kind, _ in self.counts_kinds():
            n, ok = self.config(kind).passes_per_input()
            total, exact = total + n, exact and ok
        if "sequential" in self.methods:
            n, _ = self.config("sequential").passes_per_input()
            total, exact = total + n, False
        return total, exact


def check_group(settings: GroupSettings) -> None:
    """Every stage's options checked as its command would check them (one line, nothing written)."""
    from certifynet.sampling.stages import check_sequential
    for kind, _ in settings.counts_kinds():
        dataclasses.replace(settings.config(kind), model="-").validate("sample")
    if "sequential" in settings.methods:
        config = dataclasses.replace(settings.config("sequential"), model="-")
        check_sequential(config)
        config.validate("certify")


@dataclass
class Source:
    """Where a job's inputs come from: sample.py's input options (dataset and selection, or an image file)."""
    model: str
    dataset: str
    denoiser: str | None = None
    arch: str | None = None
    options: dict = field(default_factory=dict)   # data_dir/start/max, or image/image_label

    def explicit(self) -> dict:
        out = {"model": self.model, "dataset": self.dataset}
        if self.arch:
            out["arch"] = self.arch
        if self.denoiser:
            out["denoiser"] = self.denoiser
        return {**out, **self.options}


def log_name(method: str) -> str:
    return f"{method}.tsv"


def build_stages(source: Source, settings: GroupSettings, job_dir: str, batch: bool) -> tuple[list, list]:
    """(stages in run order, runs): each run is {method, title, log, counts} (paths relative to the root)."""
    stages, runs = [], []
    for kind, methods in settings.counts_kinds():
        counts = os.path.join(job_dir, COUNTS_FILE[kind])
        sample = SamplingConfig.from_explicit({**source.explicit(), **settings.config(kind).explicit(), "out": counts})
        stages.append({"stage": "sample", "options": sample.explicit()})
        for m in methods:
            log = os.path.join(job_dir, log_name(m))
            certify = SamplingConfig.from_explicit({"counts": counts, "method": m, "alpha": settings.alpha, "out": log})
            stages.append({"stage": "certify", "options": certify.explicit()})
            runs.append({"method": m, "title": METHODS[m], "log": log, "counts": counts})
    if "sequential" in settings.methods:
        log = os.path.join(job_dir, log_name("sequential"))
        seq = SamplingConfig.from_explicit({**source.explicit(), **settings.config("sequential").explicit(),
                                            "out": log})
        stages.append({"stage": "certify", "options": seq.explicit()})
        runs.append({"method": "sequential", "title": METHODS["sequential"], "log": log, "counts": None})
    if batch:
        stages.append({"stage": "analyze", "logs": [r["log"] for r in runs], "labels": [r["title"] for r in runs],
                       "out": os.path.join(job_dir, "analysis")})
    return stages, runs


# ------------------------------------------------------------------------------------------ commands
def stage_argv(stage: dict) -> list:
    """The arguments of one stage's command (without the command's name)."""
    if stage["stage"] == "analyze":
        labels = ["--label", *stage["labels"]] if stage.get("labels") else []
        return [*stage["logs"], *labels, "--out", stage["out"], *stage.get("extra", [])]
    return [*SamplingConfig.from_explicit(stage["options"]).to_argv(), *stage.get("extra", [])]


def commands(stages: list) -> list:
    """[argv] per stage, in run order, each starting with its `certifynet-*` console command."""
    return [[COMMAND[s["stage"]], *stage_argv(s)] for s in stages]


def command_lines(stages: list, root: str | None = None) -> str:
    """The job as shell commands, one per stage, preceded by `cd ROOT` (the paths are relative to it)."""
    lines = [f"cd {shlex.quote(root)}"] if root else []
    return "\n".join(lines + [shlex.join(argv) for argv in commands(stages)])


def reproduce_script(stages: list, root: str, job_id: str) -> str:
    """reproduce.sh: the job's commands as a script that stops at the first failure."""
    return ("#!/usr/bin/env bash\n"
            f"# Certify-Net web job {job_id}: the same stages with the command-line tools (pip install certifynet).\n"
            "# Each command resumes where its output stopped; a finished one is refused (delete or move its output).\n"
            "set -euo pipefail\n" + command_lines(stages, root) + "\n")


# ------------------------------------------------------------------------------------------ older jobs
def normalize(job: dict) -> dict:
    """A job of the app's first version (stages as a dict, one method, files {counts, log}) in today's form:
    `stages` a list in run order and `runs` its logs. Today's jobs are returned unchanged."""
    stages = job.get("stages")
    if isinstance(stages, list) and "runs" in job:
        return job
    job = dict(job)
    old = stages if isinstance(stages, dict) else {}
    job["stages"] = [{"stage": s, **old[s]} for s in STAGE_ORDER if s in old]
    for s in job["stages"]:
        if s["stage"] == "analyze":
            s.setdefault("labels", [])
    files = job.get("files") or {}
    method = job.get("method") or "np"
    job["runs"] = [{"method": method, "title": METHODS.get(method, method), "log": files.get("log", ""),
                    "counts": files.get("counts")}]
    job.setdefault("methods", [method])
    return job


def check_methods(methods) -> list:
    """The chosen methods in the table's order; at least one, each known."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CertifyNetError(f"method must be one of {', '.join(METHODS)}, got '{str(unknown[0])[:40]}'")
    chosen = [m for m in METHODS if m in methods]
    if not chosen:
        raise CertifyNetError("choose at least one method")
    return chosen
