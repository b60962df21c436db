"""`python -m certifynet.web.worker JOB_DIR`: run one web job's stages in this process (`--serve`: a warm worker
that runs job after job, `certifynet.web.warm`).

The stages are the library functions the CLI's mains call (`sampling.stages.run_sample`,
`sampling.certify_stage.run_certify`, `analysis.summarize_runs`, `attack.run_audit`/`run_attack_curve`), each
from the options stored in job.json (`web.plan`), so every file and every radius is the CLI's by construction;
each sidecar records the equivalent `certifynet-*` command (what the job page shows). Two additions:
- `progress.json`: forward passes done (a hook on the sampler, written at most twice a second), plus `base`,
  the passes of the rows already in the stage's output when it started (a resumed job counts them), and at
  the end the job's `outcome` (done/failed, the error line), which a restarted server reads for a worker it
  adopted rather than started;
- `selection.json`: the class counts of each input's selection draws (N0, or ISS's pilot), read off the
  sampler as it counts them (`SelectionRecorder`), for the result page's histogram.
A user error ends the job with one line `error: ...` in its log (the job's error), like the CLI's.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time

PROGRESS_EVERY_S = 0.5


class ProgressFile:
    """Forward-pass counter mirrored to a small JSON file (replaced atomically, never half-written)."""

    def __init__(self, path: str, stages: int):
        self.path, self.passes, self.base, self.stage, self.index, self.stages = path, 0, 0, "", 0, stages
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
            json.dump({"passes": self.passes, "base": self.base, "stage": self.stage, "index": self.index,
                       "stages": self.stages, "first_pass": self.first_pass, "updated": self._last,
                       "pid": os.getpid(), **extra}, f)
        os.replace(tmp, self.path)


class SelectionRecorder:
    """Records the class counts of the selection draws (stream STREAM_SELECT: Cohen's N0, ISS's pilot) per input
    while the library samples, by wrapping `InputSampler._count` (what it returns is unchanged)."""

    def __init__(self):
        self.counts = {}
        self._original = None

    def install(self) -> None:
        from certifynet.sampling.inputs import InputSampler
        from certifynet.sampling.streams import STREAM_SELECT
        if self._original is not None:
            return
        original = self._original = InputSampler._count
        recorder = self

        def _count(sampler, x, noise, n, idx, stream):
            out = original(sampler, x, noise, n, idx, stream)
            if stream == STREAM_SELECT:
                recorder.counts[int(idx)] = [int(c) for c in out]
            return out
        InputSampler._count = _count

    def uninstall(self) -> None:
        if self._original is not None:
            from certifynet.sampling.inputs import InputSampler
            InputSampler._count = self._original
            self._original = None

    def save(self, path: str, key: str) -> None:
        if not self.counts:
            return
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        saved.setdefault(key, {}).update({str(k): v for k, v in self.counts.items()})
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(saved, f)
        os.replace(tmp, path)
        self.counts = {}


def stage_command(stage: dict) -> str:
    """The `certifynet-*` command a stage's sidecar records (the job page's line for it)."""
    from certifynet.web.plan import COMMAND, stage_argv
    return shlex.join([COMMAND[stage["stage"]], *stage_argv(stage)])


def run_stage(stage: dict) -> None:
    """One stage of a job from its stored spec (see `web.plan.build_stages`)."""
    from certifynet.errors import CertifyNetError
    from certifynet.sampling.config import SamplingConfig
    kind = stage["stage"]
    if kind == "analyze":
        from certifynet.analysis import summarize_runs
        summarize_runs(stage["logs"], stage["out"], labels=stage.get("labels") or None)
        if stage.get("empirical"):
            from certifynet.analysis import plot_certified_vs_empirical, read_logs
            plot_certified_vs_empirical(read_logs(stage["logs"], stage.get("labels") or None), stage["empirical"],
                                        os.path.join(stage["out"], "certified_vs_empirical"))
        return
    config = SamplingConfig.from_explicit(stage["options"])
    command = stage_command(stage)
    if kind == "sample":
        from certifynet.sampling.stages import run_sample
        run_sample(config, command)
    elif kind == "certify":
        from certifynet.sampling.certify_stage import run_certify
        run_certify(config, command)
    elif kind == "attack":
        from certifynet import attack
        attack.run_attack(config, {k: v for k, v in stage["attack"].items() if k != "mode"}, command)
    else:
        raise CertifyNetError(f"unknown job stage '{kind}'")


def done_passes(stage: dict) -> int:
    """Forward passes of the rows already in a sampling stage's output (a resume skips them; 0 for the rest)."""
    from certifynet.records import read_rows
    opts = stage.get("options") or {}
    out = opts.get("out")
    if stage["stage"] not in ("sample", "certify") or opts.get("counts") or not out or not os.path.isfile(out):
        return 0
    try:
        _, rows = read_rows(out, allow_torn=True)
    except Exception:  # a damaged file: the stage itself reports it
        return 0
    if stage["stage"] == "certify":   # sequential: the log's `samples` column
        return sum(int(float(r.get("samples") or 0)) for r in rows)
    return sum(sum(int(r.get(c) or 0) for c in ("n0", "n", "n_q", "pilot_n_q")) for r in rows)


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
    """Run the job's stages in order; the exit status (0 done, 2 a user error: its line is in the log)."""
    from certifynet.sampling import set_progress_hook
    from certifynet.web.plan import normalize
    stages = normalize(job).get("stages")
    if not stages:
        sys.stderr.write("error: this job was queued by an older version of the app; submit it again\n")
        return 2
    progress = ProgressFile(os.path.join(job_dir, "progress.json"), len(stages))
    recorder = SelectionRecorder()
    set_progress_hook(progress.add)
    recorder.install()
    try:
        for i, stage in enumerate(stages):
            progress.stage, progress.index = stage["stage"], i
            progress.base += done_passes(stage)
            progress.write()
            try:
                run_stage(stage)
            except Exception as e:  # the job's one-line error, as the CLI's
                line = _error_line(e)
                if line is None:
                    raise
                sys.stderr.write(f"error: {line}\n")
                progress.write(outcome="failed", error=line)
                return 2
            finally:
                recorder.save(os.path.join(job_dir, "selection.json"),
                              os.path.basename((stage.get("options") or {}).get("out") or stage["stage"]))
    except Exception as e:
        progress.write(outcome="failed", error=f"unexpected {type(e).__name__} (a bug: worker.log has the details)")
        raise
    finally:
        set_progress_hook(None)
        recorder.uninstall()
    progress.stage = "finished"
    progress.write(outcome="done")
    return 0


def read_job(job_dir: str) -> dict:
    with open(os.path.join(job_dir, "job.json")) as f:
        return json.load(f)


def log_to_stderr() -> None:
    """The library's load summaries and notes, into the job's log (stderr)."""
    log = logging.getLogger("certifynet")
    if not any(getattr(h, "certifynet_worker", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.certifynet_worker = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        from certifynet.web.warm import serve
        return serve(argv[1:])
    job_dir = argv[0]
    job = read_job(job_dir)
    if job.get("nice") and hasattr(os, "nice"):
        os.nice(int(job["nice"]))   # the server's pages come first
    import torch
    torch.set_num_threads(int(job.get("threads") or 1))
    log_to_stderr()
    return run_job(job_dir, job)


if __name__ == "__main__":
    sys.exit(main())
