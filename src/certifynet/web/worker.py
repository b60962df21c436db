"""`python -m certifynet.web.worker JOB_DIR`: run one web job's stages in this process.

The stages are the library functions the CLI's mains call (`sampling.stages.run_sample`,
`sampling.certify_stage.run_certify`, `analysis.summarize_runs` for a batch), each from the configuration
stored in job.json, so every file and every radius is the CLI's by construction; each sidecar records the
equivalent command (`scripts/<stage>.py ...`, what the job page shows). The only addition is a progress hook
on the sampler that writes `progress.json` (forward passes done) at most twice a second. A user error ends
the job with one line `error: ...` in its log (the job's error), like the CLI's.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

PROGRESS_EVERY_S = 0.5


class ProgressFile:
    """Forward-pass counter mirrored to a small JSON file (replaced atomically, never half-written)."""

    def __init__(self, path: str):
        self.path, self.passes, self.stage = path, 0, ""
        self.first_pass = self._last = None

    def add(self, n: int) -> None:
        now = time.time()
        if self.first_pass is None:
            self.first_pass = now
        self.passes += n
        if self._last is None or now - self._last >= PROGRESS_EVERY_S:
            self.write()

    def write(self, **extra) -> None:
        self._last = time.time()
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"passes": self.passes, "stage": self.stage, "first_pass": self.first_pass,
                       "updated": self._last, **extra}, f)
        os.replace(tmp, self.path)


def run_stage(stage: str, spec: dict) -> None:
    """One stage of a job from its stored spec (see `web.forms.job_stages`)."""
    from certifynet.errors import CertifyNetError
    from certifynet.sampling.config import SamplingConfig
    if stage == "analyze":
        from certifynet.analysis import summarize_runs
        summarize_runs(spec["logs"], spec["out"])
        return
    config = SamplingConfig.from_explicit(spec["options"])
    if stage == "sample":
        from certifynet.sampling.stages import run_sample
        run_sample(config)
    elif stage == "certify":
        from certifynet.sampling.certify_stage import run_certify
        run_certify(config)
    else:
        raise CertifyNetError(f"unknown job stage '{stage}'")


def _error_line(e: Exception) -> str | None:
    """The one-line message of a user error (as the CLI prints it), None for a bug."""
    from certifynet.errors import CertifyNetError
    if isinstance(e, CertifyNetError):
        return e.render(cli=True)
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename or e}"
    if isinstance(e, OSError):
        where = f" '{e.filename}'" if e.filename else ""
        return f"cannot access{where}: {e.strerror or e}"
    return None


def run_job(job_dir: str, job: dict) -> int:
    """Run the job's stages in order (sample, certify, then analyze for a batch); the exit status."""
    from certifynet.sampling import set_progress_hook
    progress = ProgressFile(os.path.join(job_dir, "progress.json"))
    set_progress_hook(progress.add)
    stages = job.get("stages")
    if not stages:
        print("error: this job was queued by an older version of the app; submit it again", file=sys.stderr)
        return 2
    for stage in ("sample", "certify", "analyze"):
        if stage not in stages:
            continue
        progress.stage = stage
        progress.write()
        try:
            run_stage(stage, stages[stage])
        except Exception as e:  # the job's one-line error, as the CLI's
            line = _error_line(e)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return 2
    progress.stage = "finished"
    progress.write()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = argv[0]
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    if job.get("nice") and hasattr(os, "nice"):
        os.nice(int(job["nice"]))   # the server's pages come first
    import torch
    torch.set_num_threads(int(job.get("threads") or 1))
    log = logging.getLogger("certifynet")   # the library's load summaries and notes, into the job's log
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.INFO)
    return run_job(job_dir, job)


if __name__ == "__main__":
    sys.exit(main())
