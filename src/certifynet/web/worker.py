"""`python -m certifynet.web.worker JOB_DIR`: run one web job's CLI stages in this process.

The stages are the CLI's own `main(argv)` (sample.py, then certify.py --counts, then analyze.py for a batch),
so every file and every radius is the CLI's by construction. The only addition is a progress hook on the
sampler that writes `progress.json` (forward passes done) at most twice a second.
"""
from __future__ import annotations

import importlib
import json
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_dir = argv[0]
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    if job.get("nice") and hasattr(os, "nice"):
        os.nice(int(job["nice"]))   # the server's pages come first
    import torch
    torch.set_num_threads(int(job.get("threads") or 1))
    from certifynet.sampling import set_progress_hook
    progress = ProgressFile(os.path.join(job_dir, "progress.json"))
    set_progress_hook(progress.add)
    for stage in ("sample", "certify", "analyze"):
        if stage not in job["argv"]:
            continue
        progress.stage = stage
        progress.write()
        stage_argv = job["argv"][stage]
        sys.argv = [f"scripts/{stage}.py", *stage_argv]   # the sidecars record this as the command
        rc = importlib.import_module(f"certifynet.cli.{stage}").main(stage_argv)
        if rc:
            return rc
    progress.stage = "finished"
    progress.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
