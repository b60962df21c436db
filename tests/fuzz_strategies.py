"""Hypothesis strategies for the CLI fuzzer: argument vectors built from each script's own argparse parser.

Scripts are discovered (setup.py's SCRIPTS, scripts/*.py, the `certifynet.cli` modules with `build_parser` and
`main`), so a new script is fuzzed without touching this file. Each parser is walked (`parser_options`): option
strings, nargs, type, choices. A vector is one of the script's known-good tiny vectors (`BASES`, in `{W}`
workspace / `{S}` scratch placeholders) with one to three mutations, or a vector drawn from the parser alone, or a
good vector with stray tokens. Mutated values are extreme for the option's type (0, −0, negative, NaN, ±inf,
1e±300, 10^30, empty, unicode, newlines, tabs, undecodable bytes) or paths of every kind (a folder for a file, a
file for a folder, /dev/null, a symlink loop, a dangling link, a path below a file, a read-only file system, the
damaged files of `fuzz_workspace`).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "scripts"


# ---------------------------------------------------------------- discovery
def setup_scripts() -> list[str]:
    """SCRIPTS in setup.py (read with ast: setup.py is not imported)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SCRIPTS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no SCRIPTS list")


def script_files() -> list[str]:
    return sorted(p.stem for p in SCRIPTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def cli_modules() -> list[str]:
    """The `certifynet.cli` modules that are commands (they define both build_parser and main)."""
    import certifynet.cli as cli
    names = []
    for info in pkgutil.iter_modules(cli.__path__):
        mod = importlib.import_module(f"certifynet.cli.{info.name}")
        if callable(getattr(mod, "build_parser", None)) and callable(getattr(mod, "main", None)):
            names.append(info.name)
    return sorted(names)


def all_scripts() -> list[str]:
    return sorted(set(setup_scripts()) | set(script_files()) | set(cli_modules()))


# ---------------------------------------------------------------- the parser, walked
PATH_DESTS = {"out", "outdir", "model", "counts", "log", "data_dir", "denoiser", "image", "opt", "logs", "merge",
              "root",
              "results", "models", "empirical", "pretrained_model", "pretrained_denoiser", "resume", "classifier",
              "inputs", "arch_file"}
# Where a strategy looks first for a path of the right kind (globs under the workspace).
PATH_KINDS = {"counts": ["c*.csv", "sh*.csv", "bad/counts_*.csv"], "log": ["*.tsv", "bad/log_*.tsv"],
              "logs": ["*.tsv", "bad/log_*.tsv", "bad/curve_*.tsv"],
              "inputs": ["*.tsv", "*.csv", "bad/*.tsv", "bad/*.csv"],
              "empirical": ["curve.tsv", "bad/curve_*.tsv"], "opt": ["opt.json", "bad/opt_*.json"],
              "image": ["image.*", "bad/img_*"], "data_dir": ["data", "bad/data_*"]}
for _d in ("model", "denoiser", "classifier", "pretrained_model", "pretrained_denoiser", "resume"):
    PATH_KINDS[_d] = ["*.pth", "run/*.pth", "den/*.pth", "bad/ckpt_*.pth"]
# Options whose large values are legitimately long runs (the fuzzer's time cap does not apply to them).
COST_DESTS = {"epochs", "N", "N0", "iss_n0", "steps", "restarts", "num_steps", "attack_steps", "digits", "eval_subset",
              "train_subset", "test_subset", "m", "num_noise_vec", "max", "end", "diffusion_steps", "max_minutes",
              "eval_batch", "batch", "shards"}
LONG_OK = 10 ** 4
# Lower thresholds: each of run_shards' shards is a process of its own (a second or more).
LONG_OK_BY_DEST = {"shards": 4}


@dataclass(frozen=True)
class Option:
    flags: tuple          # option strings; () for a positional
    dest: str
    nargs: object         # None, '?', '*', '+', or an int; 0 for a flag without a value
    kind: str             # 'int', 'float', 'str', 'path', 'choice', 'flag'
    choices: tuple = ()
    required: bool = False

    @property
    def flag(self) -> str | None:
        return max(self.flags, key=len) if self.flags else None


def parser_options(parser: argparse.ArgumentParser) -> list[Option]:
    """Every action of the parser but --help, as an Option."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if a.nargs == 0:
            kind, nargs = "flag", 0
        elif a.choices:
            kind, nargs = "choice", a.nargs
        elif a.type is int:
            kind, nargs = "int", a.nargs
        elif a.type is float:
            kind, nargs = "float", a.nargs
        else:
            kind, nargs = ("path" if a.dest in PATH_DESTS else "str"), a.nargs
        required = a.required or (not a.option_strings and a.nargs not in ("?", "*"))
        out.append(Option(tuple(a.option_strings), a.dest, nargs, kind, tuple(a.choices or ()), required))
    return out


# ---------------------------------------------------------------- values
# Extreme values each type's parser accepts (the ones that reach the command), and a few it refuses.
INTS = ["0", "-0", "-1", "1", "2", "3", "-2147483649", "2147483648", "9223372036854775808", "18446744073709551616",
        str(10 ** 30), "-" + str(10 ** 30), "\u0663", "1_000", "+1", " 7 "]
INT_JUNK = ["", " ", "1.5", "1e3", "nan", "inf", "0x10", "abc"]
FLOATS = ["0", "-0", "0.0", "-0.0", "-1", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e300", "-1e300",
          "1e-300", "5e-324", "1e309", str(10 ** 30), "0.25", "1e-7", "0.999999999", "1", "0.5", "1e-16", "2"]
FLOAT_JUNK = ["", "abc", "1,5", "0x1p-2", "\u0663.5"]
STRINGS = ["", " ", "\n", "\t", "a\nb", "tab\there", "\u00e9", "\u03c3=0.25", "\u65e5\u672c", "x\udcff", "-", "--",
           "-x", "a" * 300, "\u202e", "{}", "{alpha}", "%s", "'", '"', "nan", "0", "-1", str(10 ** 30), "..", "/",
           "a\rb", "\u2028", "\x1b[31mred"]
SPECIAL_PATHS = ["/dev/null", "{W}/loop", "{W}/dangling", "{W}/plain.txt/x", "{W}/plain.txt", "{W}/folder", "{W}/empty",
                 "{W}/nonexistent.csv", "{W}/link_model.pth", "{W}/c.csv.meta.json", "{W}/c.csv.lock", "{W}/run",
                 "/proc/self/fuzz/x.tsv", "{S}/new.tsv", "{S}/new/dir/x.csv", "{S}/x.pth", "rel.tsv",
                 "{S}/\u00e9 \t.tsv",
                 "{S}/with space.csv", "{S}/x\udcff.csv", "", ".", "..", "{W}", "{S}"]


def workspace_paths(w: Path) -> list[str]:
    """Every entry under the workspace as '{W}/...' (files, folders, links)."""
    out = []
    for root, dirs, files in os.walk(w):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(root, name), w)
            out.append("{W}/" + rel)
    return sorted(out)


# Values of free-text options that mean something to their command (valid ones and near misses).
HINTS = {"shard": ["0/2", "1/2", "2/2", "-1/2", "0/0", "1/1", str(10 ** 30) + "/2", "0/" + str(10 ** 30), "a/b", "1"],
         "normalization": ["dataset", "identity", "center", "0.5/0.5", "nan/1", "0/0", "0.1,0.2/0.3", "1/inf", "/"],
         "device": ["cpu", "auto", "cuda", "cuda:0", "cuda:-1", "mps", "cpu:0"],
         "q_percentile": ["x", "x+", "0.5", "1", "0", "nan", "1e-300", "-0.5", "x++"],
         "dataset": ["mnist5k", "mnist", "cifar10", "imagenet", "mars"],
         "arch": ["lenet", "mnist_43", "cifar_resnet20", "cifar_resnet110", "resnet50", "drunet_small", "dncnn", "x"],
         "host": ["127.0.0.1", "::1", "localhost", "0.0.0.0", "256.1.1.1", "127.0.0.1:80", "[::1]"],
         "diffusion_schedule": ["linear", "linear:1000", "cosine:10", "scaled_linear:0", "linear:1:0.5:0.1", "x"],
         "objective": ["mse", "l1", "stability", "classification"], "sigmas": ["0.25,0.5", "nan,1", "", "-1"],
         "sigma_range": ["0.1,0.5", "0.5,0.1", "0,inf", "1"], "lr_milestones": ["1,2", "-1", "1e30", "a"]}


def path_values(opt: Option, w: Path, pool: list[str]) -> st.SearchStrategy:
    """Paths for a path option: the right kind first (valid and damaged), then anything."""
    kinds = sorted({"{W}/" + str(p.relative_to(w)) for g in PATH_KINDS.get(opt.dest, []) for p in w.glob(g)})
    return st.integers(0, 3).flatmap(lambda i: st.sampled_from(kinds) if kinds and i < 2 else
                                     st.sampled_from(SPECIAL_PATHS) if i == 2 else st.sampled_from(pool))


@st.composite
def scalar_values(draw, opt: Option, w: Path, pool: list[str]) -> str:
    """One value for an option: mostly one its parser accepts, extreme for its kind (9 in 10); else junk."""
    if opt.kind == "int":
        main = st.one_of(st.sampled_from(INTS), st.integers(-3, 3).map(str), st.integers(-2 ** 70, 2 ** 70).map(str))
        junk = st.sampled_from(INT_JUNK)
    elif opt.kind == "float":
        main = st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True).map(repr))
        junk = st.sampled_from(FLOAT_JUNK)
    elif opt.kind == "choice":
        main = st.sampled_from([str(c) for c in opt.choices])
        junk = st.sampled_from(["", "X", str(opt.choices[0]).upper(), str(opt.choices[0]) + " "])
    elif opt.kind == "path":
        main, junk = path_values(opt, w, pool), st.sampled_from(STRINGS)
    else:
        main, junk = st.sampled_from(STRINGS + FLOATS), st.sampled_from(INTS + SPECIAL_PATHS)
    if opt.dest in HINTS and draw(st.booleans()):
        main = st.sampled_from(HINTS[opt.dest])
    roll = draw(st.integers(0, 19))
    if roll == 0:   # anything at all (argv can never hold a NUL)
        return draw(st.text(max_size=12).filter(lambda s: "\x00" not in s))
    return draw(junk if roll == 1 else main)


@st.composite
def option_tokens(draw, opt: Option, w: Path, pool: list[str]) -> list[str]:
    """The tokens that give `opt` a value (its flag and value(s)), in one of argparse's spellings."""
    if opt.nargs == 0:
        return [opt.flag] if opt.flags else []
    n = {None: 1, "?": draw(st.integers(0, 1)), "*": draw(st.integers(0, 3)),
         "+": draw(st.sampled_from([1, 1, 2, 3, 0]))}.get(opt.nargs, opt.nargs if isinstance(opt.nargs, int) else 1)
    values = [draw(scalar_values(opt, w, pool)) for _ in range(n)]
    if not opt.flags:
        return values
    flag = draw(st.sampled_from(opt.flags))
    if n == 1 and draw(st.integers(0, 5)) == 0:
        return [f"{flag}={values[0]}"]
    return [flag, *values]


# ---------------------------------------------------------------- vectors
def _spans(argv: list[str], options: list[Option]) -> dict:
    """{dest: (start, end)} of the last occurrence of each optional in argv (positionals are not located)."""
    by_flag = {f: o for o in options for f in o.flags}
    spans, i = {}, 0
    while i < len(argv):
        tok = argv[i]
        opt = by_flag.get(tok.split("=", 1)[0] if tok.startswith("--") else tok)
        if opt is None:
            i += 1
            continue
        j = i + 1
        if "=" not in tok and opt.nargs != 0:
            while j < len(argv) and not (argv[j].startswith("-") and argv[j] in by_flag):
                j += 1
                if opt.nargs in (None, "?") or (isinstance(opt.nargs, int) and j - i > opt.nargs):
                    break
        spans[opt.dest] = (i, j)
        i = j
    return spans


@st.composite
def mutate(draw, argv: list[str], options: list[Option], w: Path, pool: list[str]) -> list[str]:
    """One mutation of a vector: an optional set to an extreme value, removed, repeated, or a stray token."""
    argv = list(argv)
    optionals = [o for o in options if o.flags]
    what = draw(st.sampled_from(["set"] * 6 + ["drop", "repeat", "stray"]))
    spans = _spans(argv, options)
    at = argv.index("--") if "--" in argv else len(argv)   # run_shards: the command after '--' is not ours
    if what == "stray" or not optionals:
        stray = draw(st.sampled_from(["--bogus", "-", "--", "x", "--=1", "--no-such-flag=1", "-Z", "\u2014sigma",
                                      "--sigma\n", "--sig"]))
        argv.insert(draw(st.integers(0, at)), stray)
        return argv
    opt = draw(st.sampled_from(optionals))
    tokens = draw(option_tokens(opt, w, pool))
    if what == "drop" and opt.dest in spans:
        a, b = spans[opt.dest]
        return argv[:a] + argv[b:]
    if what == "set" and opt.dest in spans:
        a, b = spans[opt.dest]
        return argv[:a] + tokens + argv[b:]
    return argv[:at] + tokens + argv[at:]


@st.composite
def from_parser(draw, options: list[Option], w: Path, pool: list[str]) -> list[str]:
    """A vector drawn from the parser alone: its positionals, then a few optionals."""
    argv = []
    for opt in options:
        if not opt.flags and (opt.required or draw(st.booleans())):
            argv += draw(option_tokens(opt, w, pool))
    optionals = [o for o in options if o.flags]
    for opt in draw(st.lists(st.sampled_from(optionals), max_size=5)) if optionals else []:
        argv += draw(option_tokens(opt, w, pool))
    return argv


@st.composite
def argument_vectors(draw, script: str, parser, w: Path, pool: list[str], bases: list[list[str]]) -> list[str]:
    """Mostly a good vector with one mutation (what finds the most), sometimes two or three, or the parser's."""
    options = parser_options(parser)
    mode = draw(st.sampled_from(["one"] * 6 + ["few"] * 2 + ["parser"]) if bases else st.just("parser"))
    if mode == "parser":
        return draw(from_parser(options, w, pool))
    argv = list(draw(st.sampled_from(bases)))
    for _ in range(1 if mode == "one" else draw(st.integers(2, 3))):
        argv = draw(mutate(argv, options, w, pool))
    return argv


def expand(argv: list[str], w: Path, s: Path) -> list[str]:
    return [a.replace("{W}", str(w)).replace("{S}", str(s)).replace("{ROOT}", str(ROOT)) for a in argv]


def long_request(argv: list[str], options: list[Option]) -> bool:
    """Whether the vector asks for a run that may legitimately take long (a cost option above LONG_OK)."""
    spans = _spans(argv, options)
    for dest, (a, b) in spans.items():
        if dest not in COST_DESTS:
            continue
        for tok in argv[a:b]:
            value = tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else tok
            try:
                if abs(float(value)) > LONG_OK_BY_DEST.get(dest, LONG_OK):
                    return True
            except ValueError:
                pass
    return False
