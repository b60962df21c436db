"""Background certification jobs: a bounded queue, worker processes, progress, cancel, and restart.

Each job is a folder `<results>/web/<id>/` holding `job.json` (the spec and its state, written by the server),
the input file if one was uploaded or drawn, and what the CLI stages write (counts CSV + sidecar, certify
log + sidecar, for a batch the analyze.py outputs). A job runs in its own process (`certifynet.web.worker`),
which runs the CLI stages; the server never samples in a request thread. Progress is the worker's
`progress.json` (forward passes done) plus the rows already in the counts file.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

from certifynet.errors import CertifyNetError
from certifynet.records import atomic_write

JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled", "interrupted")
KILL_GRACE_S = 3.0


def new_job_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def count_rows(path: str) -> int:
    """Complete data rows of a RowLog file (lines after the header); 0 when absent."""
    try:
        with open(path, "rb") as f:
            return max(0, f.read().count(b"\n") - 1)
    except OSError:
        return 0


def _is_our_worker(pid: int, job_dir: str) -> bool:
    """True if `pid` is alive and is the worker of `job_dir` (guards against a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"certifynet.web.worker" in argv and os.fsencode(job_dir) in argv


class JobManager:
    """Runs at most `workers` jobs at once; at most `queue_size` wait. State survives a server restart:
    finished jobs are listed from disk, queued ones are queued again, running ones become 'interrupted'
    (their worker is stopped; `resume` continues them, the CLI's logs skipping the inputs already done)."""

    def __init__(self, root: str, jobs_dir: str, queue_size: int = 8, workers: int = 1, threads: int = 1,
                 nice: int = 10, start: bool = True):
        if queue_size < 1 or workers < 1 or threads < 1:
            raise CertifyNetError("{queue}, {workers} and {threads} must be >= 1", "queue", "workers", "threads")
        self.root, self.jobs_dir = os.path.abspath(root), os.path.join(os.path.abspath(root), jobs_dir)
        self.queue_size, self.threads, self.nice = queue_size, threads, nice
        self._jobs, self._procs, self._cancelled = {}, {}, set()
        self._queue = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._load()
        self._threads = [threading.Thread(target=self._loop, name=f"certifynet-job-{i}", daemon=True)
                         for i in range(workers)]
        if start:
            for t in self._threads:
                t.start()

    # ------------------------------------------------------------------ state on disk
    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.jobs_dir, job_id)

    def _save(self, job: dict) -> None:
        atomic_write(os.path.join(self.job_dir(job["id"]), "job.json"),
                     lambda f: json.dump(job, f, indent=1, sort_keys=True))

    def _load(self) -> None:
        if not os.path.isdir(self.jobs_dir):
            return
        for job_id in sorted(os.listdir(self.jobs_dir)):
            job = _read_json(os.path.join(self.jobs_dir, job_id, "job.json"))
            if not JOB_ID.match(job_id) or job.get("id") != job_id:
                continue
            if job.get("state") == "running":
                pid = job.get("pid")
                if pid and _is_our_worker(pid, self.job_dir(job_id)):
                    self._kill_group(pid)
                job.update(state="interrupted", ended=_now(), error="the server stopped while this job ran; "
                                                                    "resume continues where it stopped")
                self._save(job)
            self._jobs[job_id] = job
            if job.get("state") == "queued":
                self._queue.append(job_id)

    # ------------------------------------------------------------------ public API
    def create(self, spec_for, write_input=None) -> dict:
        """Create a job from spec_for(folder relative to the root) -> dict, write its input file with
        write_input(folder) and queue it. Refused with a one-line error, before anything is written, when the
        queue is full."""
        with self._cv:
            self._check_room()
            job_id = new_job_id()
            while job_id in self._jobs or os.path.exists(self.job_dir(job_id)):
                job_id = new_job_id()
            folder = self.job_dir(job_id)
            spec = spec_for(os.path.relpath(folder, self.root))
            os.makedirs(folder)
            if write_input:
                write_input(folder)
            job = {**spec, "id": job_id, "created": _now(), "state": "queued", "pid": None, "started": None,
                   "ended": None, "rc": None, "error": "", "threads": self.threads, "nice": self.nice}
            self._save(job)
            self._jobs[job_id] = job
            self._queue.append(job_id)
            self._cv.notify()
            return dict(job)

    def _check_room(self):
        if len(self._queue) >= self.queue_size:
            raise CertifyNetError(f"the job queue is full ({self.queue_size} jobs waiting); "
                                  "try again when one has finished, or cancel one")

    def resume(self, job_id: str) -> None:
        """Queue an interrupted, cancelled or failed job again (its CLI logs resume)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in FINAL or job["state"] == "done":
                raise CertifyNetError("only an interrupted, cancelled or failed job can be resumed")
            self._check_room()
            job.update(state="queued", error="", rc=None, ended=None)
            self._save(job)
            self._queue.append(job_id)
            self._cv.notify()

    def cancel(self, job_id: str) -> None:
        """Drop a queued job, or stop a running one (SIGTERM to its process group, SIGKILL after a grace)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in ACTIVE:
                return
            if job["state"] == "queued":
                self._queue.remove(job_id)
                job.update(state="cancelled", ended=_now())
                self._save(job)
                return
            self._cancelled.add(job_id)
            proc = self._procs.get(job_id)
        if proc is not None:
            self._kill_group(proc.pid, proc)

    @staticmethod
    def _kill_group(pid: int, proc=None) -> None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + KILL_GRACE_S
        while time.time() < deadline:
            if (proc.poll() is not None) if proc is not None else not os.path.exists(f"/proc/{pid}"):
                return
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def get(self, job_id: str):
        if not JOB_ID.match(job_id or ""):
            return None
        with self._cv:
            job = self._jobs.get(job_id)
            return dict(job) if job else None

    def list(self) -> list:
        with self._cv:
            return [dict(j) for j in sorted(self._jobs.values(), key=lambda j: j["id"], reverse=True)]

    def position(self, job_id: str) -> int:
        """1-based place in the queue (0: not queued)."""
        with self._cv:
            return self._queue.index(job_id) + 1 if job_id in self._queue else 0

    def progress(self, job: dict) -> dict:
        """Forward passes done of the total (exact for fixed N; for ISS estimated from the inputs done), inputs
        done, elapsed seconds and ETA."""
        folder = self.job_dir(job["id"])
        prog = _read_json(os.path.join(folder, "progress.json"))
        passes, inputs = int(prog.get("passes", 0)), int(job.get("inputs", 1))
        done_inputs = min(inputs, count_rows(os.path.join(self.root, job["files"]["counts"])))
        per_input = int(job.get("passes_per_input", 0))
        total = per_input * inputs
        if not job.get("passes_exact", True) and done_inputs:
            # ISS: the sizes vary per input; project the mean of the finished inputs onto the rest
            total = min(total, passes + round((inputs - done_inputs) * passes / max(done_inputs, 1)))
        total = max(total, passes)
        elapsed = eta = None
        if prog.get("first_pass") and prog.get("updated"):
            elapsed = max(0.0, prog["updated"] - prog["first_pass"])
            if job["state"] == "running" and passes and elapsed > 0:
                eta = (total - passes) * elapsed / passes
        return {"state": job["state"], "stage": prog.get("stage", ""), "passes": passes, "total": total,
                "exact": bool(job.get("passes_exact", True)), "inputs_done": done_inputs, "inputs": inputs,
                "elapsed_s": elapsed, "eta_s": eta,
                "queue_position": self.position(job["id"]), "error": job.get("error", "")}

    def shutdown(self) -> None:
        """Stop the runner threads and every running worker (their jobs become 'interrupted')."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            procs = list(self._procs.values())
        for proc in procs:
            self._kill_group(proc.pid, proc)

    # ------------------------------------------------------------------ the runner
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                job = self._jobs[job_id]
                folder = self.job_dir(job_id)
                log = open(os.path.join(folder, "worker.log"), "ab")
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "certifynet.web.worker", folder], cwd=self.root,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=self._worker_env(), start_new_session=True)
                except OSError as e:
                    log.close()
                    job.update(state="failed", error=f"cannot start the worker: {e.strerror or e}", ended=_now())
                    self._save(job)
                    continue
                self._procs[job_id] = proc
                job.update(state="running", pid=proc.pid, started=_now())
                self._save(job)
            rc = proc.wait()
            log.close()
            self._finish(job_id, rc)

    def _worker_env(self) -> dict:
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds certifynet/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        return env

    def _finish(self, job_id: str, rc: int) -> None:
        with self._cv:
            job = self._jobs[job_id]
            self._procs.pop(job_id, None)
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                job.update(state="cancelled", error="")
            elif self._stopping:
                job.update(state="interrupted", error="the server stopped while this job ran; resume continues "
                                                      "where it stopped")
            elif rc == 0:
                job.update(state="done")
            else:
                job.update(state="failed", error=self._error_line(job_id, rc))
            job.update(rc=rc, ended=_now())
            self._save(job)

    def _error_line(self, job_id: str, rc: int) -> str:
        """The CLI's one-line `error: ...` from the worker's log, else a pointer to the log."""
        try:
            with open(os.path.join(self.job_dir(job_id), "worker.log"), errors="replace") as f:
                lines = f.read().replace("\r", "\n").splitlines()
        except OSError:
            lines = []
        errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
        if errors:
            return errors[-1]
        where = os.path.relpath(os.path.join(self.job_dir(job_id), "worker.log"), self.root)
        return f"the worker stopped with exit code {rc}; see {where}"
