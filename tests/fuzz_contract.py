"""Running one fuzzed command, in-process or as a process, and checking the contract every command must meet:

- exit status 0 or 2;
- on failure, stderr ends with exactly one line `error: ...` (no other `error:` line, nothing after it);
- never a traceback, never "unexpected" (the CLI's line for a bug);
- no file of the workspace changed or deleted (hashes before and after), but for a damaged dataset cache
  (`<data-dir>/mnist5k.npz`), which is rebuilt by design, and for what the vector names with a flag that asks to
  replace it (`REPLACE_FLAGS`: merge.py --force OUT, train.py --overwrite --outdir DIR);
- bounded time and memory: CPU time (ITIMER_PROF in-process, RLIMIT_CPU for a process), so that a loaded machine
  does not fail a command, with a generous wall-clock backstop for a command that blocks; address space (RLIMIT_AS:
  the address space the process had plus `MEMORY_ROOM`). A request that is long by design (a cost option above
  `LONG_OK`) is cut after `LONG_CAP_S` seconds of wall clock and passes: a cut is never a failure.

In-process runs call `main(argv)` (under `one_line_errors`) with stdout/stderr captured, CERTIFYNET_NO_PROGRESS set,
one torch thread, cwd and $CERTIFYNET_ROOT in a fresh scratch folder, and every piece of process state a command may
touch (environment, cwd, torch threads, signal handlers, logging) put back afterwards. Two commands would not
return: quickstart (minutes of training) stops at its first stage (`ReachedWork`: every up-front check passed and
nothing was touched yet), and web.py's server returns from `serve_forever` at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fuzz_strategies import SCRIPTS_DIR

MEMORY_ROOM = 3 * 2 ** 30
REBUILT = "mnist5k.npz"  # the dataset cache: rebuilt by design when it cannot be read
TIME_CAP_S = 60.0        # CPU seconds: a command that ends in neither success nor refusal within this is hung
WALL_CAP_S = 900.0       # wall-clock backstop for a command that blocks without using CPU (a deadlock)
LONG_CAP_S = 8.0         # a request that is long by design (a cost option above LONG_OK) is cut here and passes


class FuzzTimeout(BaseException):
    """Raised by a timer inside a command (BaseException: no `except Exception` swallows it)."""


class ReachedWork(BaseException):
    """Raised by a stub where a command starts its long work: every up-front check passed."""


@dataclass
class Outcome:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    reached_work: bool = False
    problems: list = field(default_factory=list)


# ---------------------------------------------------------------- the workspace, hashed
_HASHES: dict = {}


def _entry(path: str):
    st = os.lstat(path)
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.isdir(path):
        return ("dir",)
    key = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _HASHES:
        with open(path, "rb") as f:
            _HASHES[key] = hashlib.sha256(f.read()).hexdigest()
    return ("file", _HASHES[key], st.st_mode)


def snapshot(folder: Path) -> dict:
    """{relative path: what it is} of every entry under `folder`: a file's SHA-256 and mode, a link's target."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, folder)] = _entry(p)
    return out


def restore(folder: Path, pristine: Path, before: dict) -> None:
    """Put the workspace back as `before` (from its pristine copy): remove what is new, restore what changed."""
    now = snapshot(folder)
    for rel in sorted(set(now) - set(before), key=len, reverse=True):
        p = folder / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()
    for rel in sorted(before, key=len):
        if now.get(rel) == before[rel]:
            continue
        src, dst = pristine / rel, folder / rel
        if before[rel][0] == "dir":
            dst.mkdir(parents=True, exist_ok=True)
            continue
        if os.path.lexists(dst):
            shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
        if before[rel][0] == "link":
            os.symlink(before[rel][1], dst)
        else:
            shutil.copy2(src, dst)


# ---------------------------------------------------------------- in-process
def address_space() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


@contextlib.contextmanager
def _process_state(cwd: Path, env: dict):
    """Run with cwd/env set; afterwards restore cwd, environment, torch threads, signals and the logger."""
    saved_cwd, saved_env, threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    sigs = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGPROF)}
    log = logging.getLogger("certifynet")
    log_state = (list(log.handlers), log.level, log.propagate)
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)
        for s, h in sigs.items():
            signal.signal(s, h)
        log.handlers[:], log.level, log.propagate = log_state


def time_caps(cap_s: float, long_ok: bool) -> tuple[float | None, float]:
    """(CPU-time cap, wall-clock cap) of a command: a long request is cut by the wall clock alone."""
    return (None, cap_s) if long_ok else (cap_s, WALL_CAP_S)


@contextlib.contextmanager
def _limits(cpu_s: float | None, wall_s: float):
    """RLIMIT_AS (soft) at the current address space + MEMORY_ROOM; timers raising FuzzTimeout after `cpu_s` of
    this process's CPU time (ITIMER_PROF, all threads) or `wall_s` of wall clock."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space() + MEMORY_ROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))

    def alarm(signum, frame):
        raise FuzzTimeout()

    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGPROF, alarm)
    signal.setitimer(signal.ITIMER_REAL, wall_s)
    if cpu_s is not None:
        signal.setitimer(signal.ITIMER_PROF, cpu_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def _stubs(script: str):
    """quickstart stops at its first stage; web.py's server stops as soon as it serves."""
    with contextlib.ExitStack() as stack:
        if script == "quickstart":
            from certifynet.cli import quickstart

            def first_stage(self, stage, argv):
                raise ReachedWork(stage)
            stack.enter_context(_patched(quickstart.Demo, "run", first_stage))
        if script == "web":
            from werkzeug.serving import BaseWSGIServer
            stack.enter_context(_patched(BaseWSGIServer, "serve_forever", lambda self, *a, **k: None))
        yield


@contextlib.contextmanager
def _patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def run_inprocess(script: str, argv: list[str], cwd: Path, env: dict, cap_s: float, long_ok: bool) -> Outcome:
    """`certifynet.cli.<script>.main(argv)` in this process (see the module docstring)."""
    main = importlib.import_module(f"certifynet.cli.{script}").main
    out, err = io.StringIO(), io.StringIO()
    rc, timed_out, reached = None, False, False
    t0 = time.perf_counter()
    with _process_state(cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stubs(script):
        try:
            with _limits(*time_caps(cap_s, long_ok)):
                rc = main(list(argv))
        except SystemExit as e:   # argparse: usage errors and --help
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except FuzzTimeout:
            timed_out = True
        except ReachedWork:
            rc, reached = 0, True
        finally:
            _join_app_threads()
    return Outcome(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, timed_out, reached)


def _join_app_threads(timeout_s: float = 60.0) -> None:
    """Wait for the threads web.py left (its checkpoint warm-up): a thread still inside torch when the interpreter
    exits aborts it."""
    for t in threading.enumerate():
        if t is not threading.current_thread() and t.name.startswith("certifynet-"):
            t.join(timeout_s)


# ---------------------------------------------------------------- as a process
def run_subprocess(script: str, argv: list[str], cwd: Path, env: dict, cap_s: float, long_ok: bool,
                   memory: int) -> Outcome:
    """`python scripts/<script>.py argv` under RLIMIT_AS = `memory`, RLIMIT_CPU (SIGXCPU) and a wall-clock cap
    (`time_caps`; its process group is killed at the wall-clock cap). web.py is sent SIGTERM once it says it serves."""
    cpu_s, wall_s = time_caps(cap_s, long_ok)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if cpu_s is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 10))

    cmd = [sys.executable, str(SCRIPTS_DIR / f"{script}.py"), *argv]
    full_env = {**os.environ, **env}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, preexec_fn=limit, start_new_session=True)
    timed_out = False
    try:
        if script == "web":
            out = _wait_for_server(proc, t0 + wall_s)
            rest, err = proc.communicate(timeout=max(1.0, t0 + wall_s - time.perf_counter()))
            out += rest
        else:
            out, err = proc.communicate(timeout=wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    timed_out = timed_out or proc.returncode == -signal.SIGXCPU
    text = (out.decode("utf-8", "backslashreplace"), err.decode("utf-8", "backslashreplace"))
    return Outcome(None if timed_out else proc.returncode, *text, time.perf_counter() - t0, timed_out)


def _wait_for_server(proc, deadline: float) -> bytes:
    """Read web.py's stdout until it says it serves (then SIGTERM it) or ends; the bytes read."""
    import selectors
    sel, buf = selectors.DefaultSelector(), b""
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.perf_counter() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.perf_counter())):
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            return buf
        buf += chunk
        if b"web app: http" in buf:
            proc.send_signal(signal.SIGTERM)
            return buf
    raise subprocess.TimeoutExpired(proc.args, 0)


# ---------------------------------------------------------------- the contract
# Exit statuses a script has by design besides 0 and 2, without an `error:` line: run_shards.py exits 1 when a shard
# (the user's command after '--') failed, having printed which (docs/scaleout.md).
OTHER_EXITS = {"run_shards": {1}}


# Flags with which the user asks to replace an output: the workspace paths the vector names may then change.
REPLACE_FLAGS = {"--force", "--overwrite"}


def replaceable(argv: list[str], w: Path) -> list[str]:
    """The workspace paths (relative, as in `snapshot`) that `argv` names, when it has a REPLACE_FLAGS flag."""
    if not any(a.split("=", 1)[0] in REPLACE_FLAGS for a in argv):
        return []
    out = []
    for a in argv:
        for v in {a, a.split("=", 1)[-1]}:
            if v.startswith(f"{w}{os.sep}"):
                out.append(os.path.relpath(v, w))
    return out


def _replaced(rel: str, named: list[str]) -> bool:
    """Whether `rel` is a named path, its sidecar or lock, or lies under a named folder."""
    return any(rel in (n, f"{n}.meta.json", f"{n}.lock") or rel.startswith(f"{n}{os.sep}") for n in named)


def contract_problems(o: Outcome, before: dict, after: dict, long_ok: bool, cap_s: float,
                      other_exits: set = frozenset(), named: list[str] = ()) -> list[str]:
    """What the outcome breaks of the contract (module docstring); [] when it keeps it."""
    problems = []
    if o.timed_out and not long_ok:
        problems.append(f"did not finish within {cap_s:g} s of CPU time (or {WALL_CAP_S:g} s of wall clock)")
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if not o.timed_out:
        if o.rc not in (0, 2, *other_exits):
            problems.append(f"exit status {o.rc} (want 0 or 2)")
        if o.rc not in (0, *other_exits) and (len(errors) != 1 or lines[-1] != errors[0]):
            problems.append("on failure stderr must end with exactly one line 'error: ...'")
        if o.rc == 0 and errors:
            problems.append("exit 0 with an 'error:' line")
    if "Traceback (most recent call last)" in o.err:
        problems.append("a traceback")
    if "unexpected" in " ".join(errors) or "error: unexpected" in o.err:
        problems.append("'unexpected' (the CLI's line for a bug)")
    changed = sorted(k for k in before if after.get(k) != before[k] and not k.endswith(REBUILT)
                     and not (o.rc == 0 and _replaced(k, named)))
    if changed:
        problems.append(f"pre-existing workspace entries changed or deleted: {changed[:5]}")
    return problems
