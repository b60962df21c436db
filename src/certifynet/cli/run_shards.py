"""run_shards.py --shards N [--jobs J] [--merge OUT] -- SCRIPT ARGS...: run the N shards of a command locally.

  python scripts/run_shards.py --shards 4 --jobs 2 --merge results/np.tsv -- \\
      scripts/certify.py --model models/lenet.pt --sigma 0.25 --N 10000 --out results/np.tsv

Each shard runs `SCRIPT ARGS... --shard i/N` as its own process (a .py SCRIPT runs under this Python),
at most J at a time, with its stdout and stderr appended to a log file (<shard output>.log when --out is
given, else <--logs>/<script>.shardIofN.log). A failed shard is reported with its exit code and the end
of its log; the exit status is non-zero if any shard failed. Rerunning the same command resumes the
shards (finished ones have nothing left to do); --only reruns just some. --merge OUT merges the shard
outputs afterwards (see merge.py). Each shard gets OMP_NUM_THREADS = cores / J unless --threads or the
environment says otherwise.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import itertools
import os
import re
import shlex
import subprocess
import sys
import threading
import time

from certifynet.bounds import MAX_WORKERS
from certifynet.cli import CliParser, HelpFormatter, one_line_errors
from certifynet.errors import CertifyNetError
from certifynet.paths import check_output_file, default_path
from certifynet.records import WriterLock, shard_path
from certifynet.records.merge import check_merge_output, merge_files

OUTPUT_LINE = re.compile(r"^(?:log|counts): (.+)$")  # what sample/certify/predict print last
LOG_HEADER = "=== "  # each shard run starts its log with this line: how a shard log is recognised as ours


def build_parser():
    p = CliParser(prog="run_shards.py", description=__doc__, usage="%(prog)s [options] -- SCRIPT ARGS...",
                  formatter_class=HelpFormatter)
    p.add_argument("--shards", type=int, required=True, metavar="N", help="number of shards")
    p.add_argument("--jobs", type=int, metavar="J", help="shards run at once (default: N, at most the CPU cores)")
    p.add_argument("--only", type=int, nargs="+", metavar="I", help="run only these shard numbers")
    p.add_argument("--threads", type=int, metavar="T", help="OMP_NUM_THREADS of each shard (default cores/J)")
    p.add_argument("--logs", metavar="DIR", help="folder of the per-shard logs (default: beside the outputs, or "
                                                 "<project>/logs)")
    p.add_argument("--merge", metavar="OUT", help="merge the shard outputs into OUT when all shards succeeded")
    p.add_argument("--allow-missing", action="store_true", help="passed to the merge")
    return p


def split_argv(argv):
    """(our options, the command) around the first '--'."""
    if "--" not in argv and ("-h" in argv or "--help" in argv):
        return argv, []
    if "--" not in argv:
        raise CertifyNetError("put the command after '--', e.g. run_shards.py --shards 4 -- scripts/certify.py ...")
    k = argv.index("--")
    if k + 1 == len(argv):
        raise CertifyNetError("no command after '--'")
    return argv[:k], argv[k + 1:]


def _option(cmd, name):
    """Value of `--name X` / `--name=X` in a command line (last one wins), else None."""
    val = None
    for k, a in enumerate(cmd):
        if a == name and k + 1 < len(cmd):
            val = cmd[k + 1]
        elif a.startswith(name + "="):
            val = a.split("=", 1)[1]
    return val


def shard_command(cmd, i, n):
    base = [sys.executable] + cmd if cmd[0].endswith(".py") else list(cmd)
    return base + ["--shard", f"{i}/{n}"]


def log_path(cmd, i, n, logs_dir):
    out = _option(cmd, "--out")
    name = (os.path.basename(shard_path(out, (i, n))) if out
            else f"{os.path.splitext(os.path.basename(cmd[0]))[0]}.shard{i}of{n}")
    folder = logs_dir or (os.path.dirname(out) if out else default_path("logs")) or "."
    return os.path.join(folder, name + ".log")


def check_shard_log(path):
    """A shard log is appended to only when it is ours: absent, empty, or starting with our header line."""
    if not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise CertifyNetError(f"shard log '{path}' is not a file; give another {{logs}} folder", "logs")
    with open(path, "rb") as f:
        head = f.read(len(LOG_HEADER))
    if head and head != LOG_HEADER.encode():
        raise CertifyNetError(f"'{path}' exists and is not a shard log of run_shards.py; it is left untouched: "
                              f"give another {{logs}} folder (or delete the file if it is yours)", "logs")


def claim_shard_log(path) -> WriterLock:
    """Hold a shard log (one run_shards per log, until its shard ends) once it is known to be ours."""
    held = WriterLock(path).acquire(path)
    try:
        check_shard_log(path)
    except BaseException:
        held.release()
        raise
    return held


def _tail(path, lines=5):
    """Last lines of a log, keeping only the final state of tqdm's carriage-return updates."""
    with open(path, errors="replace") as f:
        text = [ln.split("\r")[-1] for ln in f.read().splitlines()]
    return [ln for ln in text if ln.strip()][-lines:]


def shard_output(log, cmd, i, n):
    """The file shard i wrote: the last 'log: X' / 'counts: X' line of its log, else --out with .shardIofN."""
    if os.path.isfile(log):
        with open(log, errors="replace") as f:
            found = [m.group(1) for ln in f for m in [OUTPUT_LINE.match(ln.strip())] if m]
        if found:
            return found[-1]
    out = _option(cmd, "--out")
    if out:
        return shard_path(out, (i, n))
    raise CertifyNetError(f"cannot tell which file shard {i}/{n} wrote (see {log}); pass --out in the command")


def _env(threads, jobs):
    """Child environment: --threads, else the caller's OMP_NUM_THREADS, else cores / jobs."""
    env = dict(os.environ)
    n = str(threads or env.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // jobs))
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    return env


def _report(i, n, rc, log, seconds, say) -> None:
    """One line for a finished shard; a failed one adds the tail of its log."""
    if rc == 0:
        say(f"shard {i}/{n}: done in {seconds:.1f} s")
        return
    say(f"shard {i}/{n}: FAILED with exit code {rc} (log {log}):")
    for ln in _tail(log):
        say(f"    {ln}")


def run_all(cmd, n, jobs, only, logs_dir, threads, say=print):
    """Run the shards, at most `jobs` at a time (a thread pool, one thread waiting on each subprocess);
    returns {shard: exit code}. On KeyboardInterrupt the running shards are terminated and waited for, and
    none is started after it."""
    todo = sorted(set(only)) if only else range(n)  # a range: --shards may be huge (each shard is a process)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))  # by default not more processes than cores
    env = _env(threads, jobs)
    running, lock, stopping = {}, threading.Lock(), threading.Event()

    def run_one(i):
        if stopping.is_set():
            return None
        log = log_path(cmd, i, n, logs_dir)
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
        full = shard_command(cmd, i, n)
        try:
            held = claim_shard_log(log)
        except CertifyNetError as e:
            say(f"shard {i}/{n}: not started: {e.render(cli=True)}")
            return 2
        try:
            with open(log, "a") as f:
                f.write(f"{LOG_HEADER}{datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(full)}\n")
                f.flush()
                with lock:
                    if stopping.is_set():
                        return None
                    running[i] = proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, env=env)
                say(f"shard {i}/{n}: started (log {log})")
                t0 = time.time()
                rc = proc.wait()
                with lock:
                    del running[i]
        finally:
            held.release()
        if not stopping.is_set():  # terminated by us after Ctrl-C: no report
            _report(i, n, rc, log, time.time() - t0, say)
        return rc

    codes, queue = {}, iter(todo)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:  # at most `jobs` shards submitted at a time: memory does not grow with --shards
        pending = {pool.submit(run_one, i): i for i in itertools.islice(queue, jobs)}
        while pending:  # a timed wait, so that Ctrl-C reaches this thread while shards run
            done, _ = concurrent.futures.wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            for fut in done:
                codes[pending.pop(fut)] = fut.result()
                for i in itertools.islice(queue, 1):
                    pending[pool.submit(run_one, i)] = i
    except KeyboardInterrupt:
        with lock:
            stopping.set()
            procs = list(running.values())
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return codes


def check_args(args, cmd) -> None:
    """Refuse bad --shards/--jobs/--only, and a command that picks its own --shard, before anything runs."""
    n = args.shards
    if n < 1:
        raise CertifyNetError(f"{{shards}} must be >= 1, got {n}", "shards")
    if args.jobs is not None and args.jobs < 1:
        raise CertifyNetError(f"{{jobs}} must be >= 1, got {args.jobs}", "jobs")
    if args.jobs is not None and args.jobs > MAX_WORKERS:  # each shard is a Python process that imports torch
        raise CertifyNetError(f"{{jobs}} {args.jobs:,}: that many shard processes at once cannot run "
                              f"(at most {MAX_WORKERS}; the default is one per CPU core)", "jobs")
    bad = [i for i in args.only or [] if not 0 <= i < n]
    if bad:
        raise CertifyNetError(f"{{only}} {bad[0]}: shard numbers run from 0 to {n - 1}", "only")
    if any(a == "--shard" or a.startswith("--shard=") for a in cmd):
        raise CertifyNetError("the command must not have --shard; run_shards.py adds --shard i/N to each shard")
    for i in sorted(set(args.only)) if args.only else range(n):  # every file it appends to is ours
        check_shard_log(log_path(cmd, i, n, args.logs))
    if args.merge:  # refused now, not after every shard has run
        check_output_file(args.merge, "merge")
        check_merge_output(args.merge, None)


@one_line_errors
def main(argv=None):
    ours, cmd = split_argv(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(ours)
    check_args(args, cmd)
    n = args.shards
    codes = run_all(cmd, n, args.jobs, args.only, args.logs, args.threads)
    failed = sorted(i for i, rc in codes.items() if rc != 0)
    if failed:
        print(f"{len(failed)} of {len(codes)} shards failed: "
              + ", ".join(f"{i} (exit {codes[i]})" for i in failed)
              + f"; rerun with --only {' '.join(map(str, failed))} to resume them", file=sys.stderr)
        return 1
    print(f"all {len(codes)} shards done")
    if args.merge:
        outs = [shard_output(log_path(cmd, i, n, args.logs), cmd, i, n) for i in range(n)]
        rep = merge_files(args.merge, outs, allow_missing=args.allow_missing)
        print(f"merged {rep.rows} rows from {len(outs)} shards into {rep.out}")
    return 0
