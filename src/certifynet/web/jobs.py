"""Background certification jobs: a bounded queue, worker processes, warm workers for quick jobs, progress,
cancel, delete, and restarts that lose nothing.

Each job is a folder `<results>/web/<id>/` holding `job.json` (the spec and its state, written by the server),
the input file if one was uploaded or drawn, and what the CLI stages write (counts CSVs + sidecars, certify
logs + sidecars, for a batch the analyze.py outputs), with the worker's `worker.log`, `progress.json` and
`selection.json`. A job runs in its own process (`certifynet.web.worker`), or, when it is quick (one input,
a few thousand forward passes), on the model's warm worker (`certifynet.web.warm`); the server never samples
in a request thread.

One server per results folder (`lock.ServerLock`). On start it lists the jobs on disk: queued ones are
queued again; a running one whose worker still lives (the previous server died) is adopted and followed to
its end, its outcome read from the worker's progress.json; one whose worker is gone is 'interrupted', and
`resume` continues it (the CLI's logs skip the inputs already done).
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

from certifynet.errors import CertifyNetError
from certifynet.records import atomic_write
from certifynet.web.lock import ServerLock
from certifynet.web.plan import normalize
from certifynet.web.warm import WarmPool

JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled", "interrupted")
KILL_GRACE_S = 3.0
ADOPT_POLL_S = 0.5
MAX_QUICK = 4        # quick jobs at once (each on its model's warm worker)
INTERRUPTED = "the server stopped while this job ran; resume continues where it stopped"


def new_job_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            out = json.load(f)
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def _cmdline(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _is_our_worker(pid: int, job_dir: str) -> bool:
    """True if `pid` is alive and is the worker running `job_dir` (guards against a reused pid): its own
    process, or a warm worker that progress.json names as running it."""
    argv = _cmdline(pid)
    if b"certifynet.web.worker" not in argv:
        return False
    if os.fsencode(job_dir) in argv:
        return True
    prog = read_json(os.path.join(job_dir, "progress.json"))
    return b"--serve" in argv and prog.get("pid") == pid and not prog.get("outcome")


def write_job_file(folder: str, name: str, write, binary: bool = False) -> None:
    """Every file the server writes into a job folder goes through here (job.json, the input image):
    write(f) into a temporary file that replaces `name` atomically."""
    atomic_write(os.path.join(folder, name), write, binary=binary)


class JobManager:
    """Runs at most `workers` batch jobs at once (at most `queue_size` wait) and up to MAX_QUICK quick jobs on
    warm workers; state survives a restart (module doc)."""

    def __init__(self, root: str, jobs_dir: str, queue_size: int = 8, workers: int = 1, threads: int = 1,
                 nice: int = 10, start: bool = True, lock: bool = True):
        if queue_size < 1 or workers < 1 or threads < 1:
            raise CertifyNetError("{queue}, {workers} and {threads} must be >= 1", "queue", "workers", "threads")
        self.root, self.jobs_dir = os.path.abspath(root), os.path.join(os.path.abspath(root), jobs_dir)
        self.queue_size, self.threads, self.nice = queue_size, threads, nice
        self.lock = ServerLock(self.jobs_dir).acquire(jobs_dir) if lock else None
        self._jobs, self._procs, self._cancelled = {}, {}, set()
        self._queue = collections.deque()
        self._cv = threading.Condition()
        self._stopping, self._running = False, start   # start=False: jobs wait (tests run them with run_inline)
        self.pool = WarmPool(self.root, self._worker_env)
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
        # keys in the order they were set: the stages are a list anyway, run order is never re-sorted
        write_job_file(self.job_dir(job["id"]), "job.json", lambda f: json.dump(job, f, indent=1))

    def _load(self) -> None:
        if not os.path.isdir(self.jobs_dir):
            return
        for job_id in sorted(os.listdir(self.jobs_dir)):
            job = read_json(os.path.join(self.jobs_dir, job_id, "job.json"))
            if not JOB_ID.match(job_id) or job.get("id") != job_id:
                continue
            job = normalize(job)
            self._jobs[job_id] = job
            if job.get("state") == "running":
                pid = job.get("pid")
                if pid and _is_our_worker(pid, self.job_dir(job_id)):
                    threading.Thread(target=self._follow, args=(job_id, pid), name="certifynet-adopted",
                                     daemon=True).start()
                    continue
                job.update(state="interrupted", ended=_now(), error=INTERRUPTED)
                self._save(job)
            elif job.get("state") == "queued":
                self._queue.append(job_id)

    # ------------------------------------------------------------------ public API
    def create(self, spec_for, write_input=None) -> dict:
        """Create a job from spec_for(folder relative to the root) -> dict, write its input file with
        write_input(folder, write) and start or queue it. Refused with a one-line error, before anything is
        written, when the queue (or the quick lane) is full."""
        with self._cv:
            job_id = new_job_id()
            while job_id in self._jobs or os.path.exists(self.job_dir(job_id)):
                job_id = new_job_id()
            folder = self.job_dir(job_id)
            spec = spec_for(os.path.relpath(folder, self.root))
            quick = spec.get("lane") == "quick"
            self._check_room(quick)
            os.makedirs(folder)
            if write_input:
                write_input(folder, lambda name, write: write_job_file(folder, name, write, binary=True))
            job = {**spec, "id": job_id, "created": _now(), "state": "queued", "pid": None, "started": None,
                   "ended": None, "rc": None, "error": "", "threads": self.threads, "nice": 0 if quick else self.nice}
            self._save(job)
            self._jobs[job_id] = job
            if quick and self._running:
                threading.Thread(target=self._run_quick, args=(job_id,), name="certifynet-quick", daemon=True).start()
            else:
                self._queue.append(job_id)
                self._cv.notify_all()
            return dict(job)

    def _check_room(self, quick: bool = False):
        if quick:
            busy = sum(1 for j in self._jobs.values() if j.get("lane") == "quick" and j["state"] in ACTIVE)
            if busy >= MAX_QUICK:
                raise CertifyNetError(f"{busy} quick jobs are running; try again in a moment")
        elif len(self._queue) >= self.queue_size:
            raise CertifyNetError(f"the job queue is full ({self.queue_size} jobs waiting); "
                                  "try again when one has finished, or cancel one")

    def resume(self, job_id: str) -> None:
        """Queue an interrupted, cancelled or failed job again (its CLI logs resume)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in FINAL or job["state"] == "done":
                raise CertifyNetError("only an interrupted, cancelled or failed job can be resumed")
            self._check_room()
            job.update(state="queued", error="", rc=None, ended=None, lane="batch", nice=self.nice)
            self._save(job)
            self._queue.append(job_id)
            self._cv.notify_all()

    def cancel(self, job_id: str) -> None:
        """Drop a queued job, or stop a running one (SIGTERM to its process group, SIGKILL after a grace)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job["state"] not in ACTIVE:
                return
            if job["state"] == "queued" and job_id in self._queue:
                self._queue.remove(job_id)
                job.update(state="cancelled", ended=_now())
                self._save(job)
                return
            self._cancelled.add(job_id)
            proc, pid = self._procs.get(job_id), job.get("pid")
        if job.get("lane") == "quick" and self.pool.cancel(self.job_dir(job_id)):
            return
        if proc is not None:
            self._kill_group(proc.pid, proc)
        elif pid and _is_our_worker(pid, self.job_dir(job_id)):   # adopted
            self._kill_group(pid)

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its folder (a queued or running one is refused: cancel it first)."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job["state"] in ACTIVE:
                raise CertifyNetError("cancel the job before deleting it")
            del self._jobs[job_id]
        folder = self.job_dir(job_id)
        if os.path.dirname(os.path.realpath(folder)) == os.path.realpath(self.jobs_dir):
            shutil.rmtree(folder, ignore_errors=True)

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

    def wait(self, job_id: str, timeout: float) -> dict | None:
        """The job once it is final, or as it is after `timeout` seconds."""
        deadline = time.time() + timeout
        with self._cv:
            while (job := self._jobs.get(job_id)) is not None and job["state"] in ACTIVE:
                left = deadline - time.time()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.5))
            return dict(job) if job else None

    def position(self, job_id: str) -> int:
        """1-based place in the queue (0: not queued)."""
        with self._cv:
            return self._queue.index(job_id) + 1 if job_id in self._queue else 0

    def progress(self, job: dict) -> dict:
        """The job's progress (`results.progress_of`), with its place in the queue."""
        from certifynet.web.results import progress_of
        return progress_of(self.root, self.job_dir(job["id"]), job, self.position(job["id"]))

    def shutdown(self) -> None:
        """Stop the runner threads, the warm workers and every running worker (their jobs become
        'interrupted'), and release the folder's lock."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            procs = list(self._procs.values())
        for proc in procs:
            self._kill_group(proc.pid, proc)
        self.pool.shutdown()
        if self.lock is not None:
            self.lock.release()

    def run_inline(self, job_id: str) -> dict:
        """Run a waiting job in this process (its worker's `run_job`, no subprocess, from the root folder as a
        worker runs): for tests and scripts of a manager made with start=False. Returns the finished job."""
        from certifynet.web.worker import run_job
        with self._cv:
            if job_id in self._queue:
                self._queue.remove(job_id)
            job = self._jobs[job_id]
            job.update(state="running", pid=os.getpid(), started=_now())
            self._save(job)
        cwd = os.getcwd()
        os.chdir(self.root)
        try:
            rc = run_job(self.job_dir(job_id), job)
        finally:
            os.chdir(cwd)
        self._finish(job_id, rc)
        return self.get(job_id)

    # ------------------------------------------------------------------ the runners
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                proc = self._start(job_id)
                if proc is None:
                    continue
            rc = proc.wait()
            self._finish(job_id, rc)

    def _start(self, job_id: str):
        """Start a batch job's worker process (called with the lock held); None when it cannot start."""
        job, folder = self._jobs[job_id], self.job_dir(job_id)
        with open(os.path.join(folder, "worker.log"), "ab") as log:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "certifynet.web.worker", folder], cwd=self.root,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=self._worker_env(), start_new_session=True)
            except OSError as e:
                job.update(state="failed", error=f"cannot start the worker: {e.strerror or e}", ended=_now())
                self._save(job)
                return None
        self._procs[job_id] = proc
        job.update(state="running", pid=proc.pid, started=_now())
        self._save(job)
        self._cv.notify_all()
        return proc

    def _run_quick(self, job_id: str) -> None:
        job, folder = self._jobs[job_id], self.job_dir(job_id)

        def started(pid):
            with self._cv:
                job.update(state="running", pid=pid, started=_now())
                self._save(job)
        rc = self.pool.run(job["model"], folder, started)
        self._finish(job_id, rc)

    def warm(self, model: str, stages_for) -> None:
        """Start the model's warm worker ahead of its first quick job (`WarmPool.warm`)."""
        if self._running and self.pool.pid(model) is None and not self._stopping:
            self.pool.warm(model, stages_for)

    def _follow(self, job_id: str, pid: int) -> None:
        """Follow an adopted worker (not our child) to its end; its outcome is in progress.json."""
        folder = self.job_dir(job_id)
        while os.path.exists(f"/proc/{pid}") and _is_our_worker(pid, folder) and not self._stopping:
            time.sleep(ADOPT_POLL_S)
        if self._stopping:
            return
        outcome = read_json(os.path.join(folder, "progress.json"))
        self._finish(job_id, {"done": 0, "failed": 2}.get(outcome.get("outcome"), -15), outcome.get("error"))

    def _worker_env(self) -> dict:
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds certifynet/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        return env

    def _finish(self, job_id: str, rc: int, error: str | None = None) -> None:
        with self._cv:
            job = self._jobs.get(job_id)
            self._procs.pop(job_id, None)
            if job is None:
                return
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                job.update(state="cancelled", error="")
            elif self._stopping or rc == -15 and error is None and job.get("lane") != "quick":
                job.update(state="interrupted", error=INTERRUPTED)
            elif rc == 0:
                job.update(state="done", error="")
            else:
                job.update(state="failed", error=error or self._error_line(job_id, rc))
            job.update(rc=rc, ended=_now())
            self._save(job)
            self._cv.notify_all()

    def _error_line(self, job_id: str, rc: int) -> str:
        """The job's one-line error: the worker's outcome (progress.json), else the last `error: ...` line of its
        log, else a pointer to the log."""
        outcome = read_json(os.path.join(self.job_dir(job_id), "progress.json"))
        if outcome.get("outcome") == "failed" and outcome.get("error"):
            return outcome["error"]
        try:
            with open(os.path.join(self.job_dir(job_id), "worker.log"), errors="replace") as f:
                lines = f.read().replace("\r", "\n").splitlines()
        except OSError:
            lines = []
        errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
        if errors:
            return errors[-1]
        return f"the worker stopped with exit code {rc}; worker.log (in Downloads) has the details"
