"""Warm workers: one process per model, kept loaded, that runs quick jobs one after another.

A quick job (one input, a few thousand forward passes, or a sequential "certified at r?") costs a few tenths of
a second of sampling, but a fresh worker process pays seconds to import torch, load the checkpoint and trace
the model. A warm worker (`python -m certifynet.web.worker --serve`) pays that once: it reads job folders
from its stdin, runs each with `worker.run_job` (the same library stages, files and commands as any job), and
answers `{"rc": ...}` on its stdout. Two memos make the second job on a model fast, without changing what is
computed: the loaded model (`sampling.run.load_smoothing_model`, keyed by the files' size and mtime) and the
frozen TorchScript trace of a full batch (`Sampler._traced_model`, keyed by that loaded model, the input shape
and batch; the trace is of the same weights, so of the same function as a fresh run's).

`WarmPool` (server side) starts at most `max_workers` of them, one per model, stops the one idle longest when
another is needed and any that stays idle for `idle_s`; `warm(model)` starts one ahead of the first request
and runs a tiny job on a blank image in a temporary folder, so that the first real answer is quick too.
"""
from __future__ import annotations

import collections
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

log = logging.getLogger(__name__)
IDLE_S = 900.0
MAX_WORKERS = 2
MAX_MODELS = 4     # models a warm worker keeps loaded


class WorkerGone(Exception):
    """The warm worker ended (cancelled, killed or crashed) before it answered."""


class WarmWorker:
    """One `--serve` process and the pipe to it; one job at a time (`lock`)."""

    def __init__(self, key: str, root: str, env: dict):
        self.key, self.lock, self.job_dir = key, threading.Lock(), None
        self.proc = subprocess.Popen([sys.executable, "-m", "certifynet.web.worker", "--serve"], cwd=root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True, text=True, bufsize=1)
        self.last_used = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, message: dict) -> dict:
        """Send one message and wait for its answer (WorkerGone when the process ends first)."""
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (OSError, ValueError):
            line = ""
        finally:
            self.last_used = time.time()
        if not line:
            raise WorkerGone(self.key)
        return json.loads(line)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class WarmPool:
    """The warm workers of a server, one per model (see the module doc)."""

    def __init__(self, root: str, env, max_workers: int = MAX_WORKERS, idle_s: float = IDLE_S):
        self.root, self.env, self.max_workers, self.idle_s = root, env, max_workers, idle_s
        self._workers = {}
        self._lock = threading.Lock()
        self._closed = False

    def _worker(self, key: str) -> WarmWorker:
        with self._lock:
            if self._closed:
                raise WorkerGone(key)
            self._reap()
            w = self._workers.get(key)
            if w is not None and w.alive():
                return w
            idle = sorted((v for v in self._workers.values() if not v.lock.locked()), key=lambda v: v.last_used)
            while len(self._workers) >= self.max_workers and idle:
                old = idle.pop(0)
                old.stop()
                self._workers.pop(old.key, None)
            w = self._workers[key] = WarmWorker(key, self.root, self.env())
            return w

    def _reap(self) -> None:
        """Stop the workers idle for longer than idle_s, forget the dead ones."""
        now = time.time()
        for key, w in list(self._workers.items()):
            if not w.alive() or (not w.lock.locked() and now - w.last_used > self.idle_s):
                w.stop()
                del self._workers[key]

    def pid(self, key: str) -> int | None:
        w = self._workers.get(key)
        return w.pid if w is not None and w.alive() else None

    def run(self, key: str, job_dir: str, started=None) -> int:
        """Run the job in `job_dir` on the warm worker of `key`; its exit status (−9 when the worker was
        stopped: cancelled). `started(pid)` is called once the job has the worker."""
        try:
            w = self._worker(key)
        except WorkerGone:
            return -9
        with w.lock:
            w.job_dir = job_dir
            if started is not None:
                started(w.pid)
            try:
                return int(w.request({"job": job_dir})["rc"])
            except WorkerGone:
                with self._lock:
                    if self._workers.get(key) is w:
                        del self._workers[key]
                return -9
            finally:
                w.job_dir = None

    def ask(self, key: str, message: dict) -> dict:
        """Any other question for `key`'s worker (a cost estimate): its answer, {"rc": -9, ...} when it stopped."""
        try:
            w = self._worker(key)
            with w.lock:
                return w.request(message)
        except WorkerGone:
            with self._lock:
                if self._workers.get(key) is not None and not self._workers[key].alive():
                    del self._workers[key]
            return {"rc": -9, "error": "the model's worker stopped before it answered"}

    def cancel(self, job_dir: str) -> bool:
        """Stop the worker running the job in `job_dir` (it is started again for the next quick job)."""
        with self._lock:
            for key, w in list(self._workers.items()):
                if w.job_dir == job_dir:
                    w.stop()
                    del self._workers[key]
                    return True
        return False

    def warm(self, key: str, stages_for) -> threading.Thread:
        """Start `key`'s worker in the background and run stages_for(folder) there (a throwaway job in a
        temporary folder), so that loading and tracing are done before the first quick job."""
        def work():
            try:
                w = self._worker(key)
                with w.lock, tempfile.TemporaryDirectory(prefix="certifynet-warm-") as tmp:
                    w.request({"warm": stages_for(tmp), "dir": tmp})
            except Exception as e:  # best effort: the quick job itself reports any problem
                log.info("warm-up of %s failed: %s", key, e)
        t = threading.Thread(target=work, name="certifynet-warm-up", daemon=True)
        t.start()
        return t

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            for w in self._workers.values():
                w.stop()
            self._workers.clear()


# ------------------------------------------------------------------------------------------ the worker side
def _file_key(path):
    """(path, size, mtime) of a file; of a folder (a diffusers model), those of every file in it."""
    if not path:
        return None
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
        return os.path.abspath(path), tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def install_memos() -> None:
    """Memoize the model load and the full-batch trace in this process (see the module doc)."""
    import certifynet.sampling.run as run_module
    from certifynet.sampling.engine import Sampler
    load, traced = run_module.load_smoothing_model, Sampler._traced_model
    models, traces = collections.OrderedDict(), {}

    def load_smoothing_model(model_path, dataset=None, arch=None, denoiser_path=None, sigma=None, device="cpu",
                             normalization=None, quiet=False, diffusion_options=None):
        key = (_file_key(model_path), dataset, arch, _file_key(denoiser_path), sigma, str(device), repr(normalization),
               repr(diffusion_options))
        hit = models.pop(key, None)
        if hit is None:
            hit = load(model_path, dataset, arch, denoiser_path, sigma, device, normalization, quiet,
                       diffusion_options=diffusion_options)
        elif not quiet:
            logging.getLogger("certifynet.sampling.model").info("model: %s (kept loaded)", hit[1].summary())
        models[key] = hit
        while len(models) > MAX_MODELS:
            models.popitem(last=False)
        return hit[0], hit[1], copy.deepcopy(hit[2])

    def _traced_model(self, shape):
        key = (id(self._source), tuple(shape), self.batch, str(self.device), self.channels_last, self.amp)
        hit = traces.get(key)
        if hit is not None and hit[0] is self._source and self.optimize:
            self._traced[shape] = hit[1]
            return hit[1]
        out = traced(self, shape)
        if self.optimize and out is not None:
            traces[key] = (self._source, out)
        return out

    run_module.load_smoothing_model = load_smoothing_model
    Sampler._traced_model = _traced_model


class _Redirect:
    """fd 1 and 2 into a job's log while it runs (the library's notes and a job's error line land there)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in zip((1, 2), self.saved):
            os.dup2(fd, target)
            os.close(fd)


def _run_one(job_dir: str) -> int:
    import traceback

    import torch

    from certifynet.web.worker import read_job, run_job
    with _Redirect(os.path.join(job_dir, "worker.log")):
        try:
            job = read_job(job_dir)
            torch.set_num_threads(int(job.get("threads") or 1))
            return run_job(job_dir, job)
        except Exception:  # a bug: the traceback goes to the job's log, the worker lives on
            traceback.print_exc()
            return 1


def _warm_up(stages: list, folder: str) -> None:
    import numpy as np

    from certifynet.web.worker import run_stage
    for stage in stages:
        image = (stage.get("options") or {}).get("image")
        if image and not os.path.exists(image):
            np.save(image, np.zeros(stage.pop("shape"), np.float32))
        stage.pop("shape", None)
        with _Redirect(os.path.join(folder, "warm.log")):
            try:
                run_stage(stage)
            except Exception:  # best effort
                pass


def serve(argv=None) -> int:
    """The warm worker's loop: one JSON message per line on stdin, one answer per line on stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything printed goes to stderr (or a job's log), never into the answers
    import torch

    from certifynet.web.worker import log_to_stderr
    torch.set_num_threads(1)
    log_to_stderr()
    install_memos()
    for line in sys.stdin:
        message = json.loads(line)
        if "job" in message:
            answer = {"rc": _run_one(message["job"])}
        elif "estimate" in message:
            answer = estimate(message["estimate"])
        else:
            _warm_up(message.get("warm") or [], message.get("dir") or tempfile.gettempdir())
            answer = {"rc": 0}
        try:
            answers.write(json.dumps(answer) + "\n")
        except OSError:   # the server is gone
            return 0
    return 0


def estimate(stages: list) -> dict:
    """The cost of a job's sampling stages from a pilot on this worker's model and device
    (`sampling.estimate.estimate_run`, what sample.py / certify.py --estimate print): {"rc": 0, "estimates": [one
    Estimate.to_dict() per stage]}, or {"rc": 2, "error": one line}. Nothing is written."""
    from certifynet.errors import CertifyNetError
    from certifynet.sampling.config import SamplingConfig
    try:
        from certifynet.sampling.estimate import estimate_run
    except ImportError:
        return {"rc": 2, "error": "this certifynet has no cost estimate yet (certifynet.sampling.estimate)"}
    out = []
    for stage in stages:
        config = SamplingConfig.from_explicit({k: v for k, v in stage["options"].items() if k != "out"})
        try:
            with _Redirect(os.devnull):
                out.append(estimate_run(config, "sample" if stage["stage"] == "sample" else "certify").to_dict())
        except CertifyNetError as e:
            return {"rc": 2, "error": e.render(cli=True)}
        except Exception as e:  # noqa: BLE001 - a bug in the estimate must not end the warm worker
            return {"rc": 1, "error": f"the estimate failed ({type(e).__name__}: {str(e)[:200]})"}
    return {"rc": 0, "estimates": out}
