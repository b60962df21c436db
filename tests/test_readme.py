"""Every shell and Python block of README.md and docs/*.md runs as written (issue 15).

The blocks run in order (README.md first, then docs/*.md by name) in ONE fresh copy of the repository (the files
git tracks plus the untracked ones it does not ignore), from the copy's root, in the activated environment:
`.venv` there is the virtual environment running this test (a small stand-in when there is none), PATH starts
with .venv/bin, and PYTHONPATH is the copy's src/, so the copy's code runs. A block may use what an earlier block
wrote: the README's pipeline trains the checkpoint the later blocks certify.

A block that cannot run on the bundled data and a CPU is marked on the line just above its fence (blank lines
between are allowed), with items from NEEDS:

    <!-- needs: cifar10 data, gpu -->

It is then only syntax-checked. Every unmarked block that fails fails its test, which names the file, the line and
the block. Blocks tagged bash/sh/shell run under `bash -e -o pipefail`, python/py blocks under .venv/bin/python;
other fences (text, output, trees) are not run.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = {
    "cifar10 data": "CIFAR-10 in --data-dir (not bundled; --download fetches it)",
    "imagenet data": "ImageNet in --data-dir",
    "mnist download": "torchvision's MNIST, downloaded (network)",
    "published checkpoints": "checkpoint files of the reference repositories",
    "published logs": "certification logs of the reference repositories",
    "gpu": "a CUDA GPU (or several)",
    "server": "a server that runs until stopped: the test starts it, waits for the page it names, then stops it",
    "slurm": "a SLURM cluster (sbatch)",
    "long run": "minutes to hours of compute: a full-scale recipe, with a small runnable twin next to it",
    "venv install": "creates or installs into .venv (make)",
}
LANGS = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}
BLOCK_TIMEOUT_S = 600
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_MARKER = re.compile(r"^\s*<!--\s*needs:\s*(?P<items>.*?)\s*-->\s*$")
# never run unmarked: it would install into the virtual environment this test runs in
_TOUCHES_VENV = re.compile(r"^\s*(?:make\b|(?:\S*/)?pip3?\s+install\b|(?:\S*/)?python3?\s+-m\s+pip\b)", re.M)


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str  # "shell", "python" or the fence's info string
    text: str
    needs: tuple  # items of its marker, () when unmarked
    marker_line: int = 0

    @property
    def where(self):
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def parse_blocks(path: Path):
    """(fenced blocks, problems): problems are unclosed fences and markers not directly above a fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, problems, k = [], [], 0
    pending = None  # (line, items) of a marker waiting for its fence
    while k < len(lines):
        m = _FENCE.match(lines[k])
        marker = _MARKER.match(lines[k])
        if marker:
            if pending:
                problems.append(f"{path.name}:{pending[0]}: marker not followed by a code block")
            pending = (k + 1, tuple(i.strip() for i in marker["items"].split(",") if i.strip()))
        elif m:
            indent, fence = len(m["indent"]), m["fence"]
            end = next((j for j in range(k + 1, len(lines))
                        if lines[j].strip().startswith(fence[0] * len(fence)) and not lines[j].strip().strip(fence[0])),
                       None)
            if end is None:
                problems.append(f"{path.name}:{k + 1}: unclosed code fence")
                break
            body = "\n".join(ln[indent:] if not ln[:indent].strip() else ln for ln in lines[k + 1:end])
            needs, at = pending[1] if pending else (), pending[0] if pending else 0
            blocks.append(Block(path, k + 1, LANGS.get(m["info"].lower(), m["info"]), body + "\n", needs, at))
            pending, k = None, end
        elif lines[k].strip() and pending:
            problems.append(f"{path.name}:{pending[0]}: marker not followed by a code block")
            pending = None
        k += 1
    if pending:
        problems.append(f"{path.name}:{pending[0]}: marker not followed by a code block")
    return blocks, problems


ALL_BLOCKS = [b for doc in DOCS for b in parse_blocks(doc)[0]]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in ("shell", "python") and not b.needs]
MARKED = [b for b in ALL_BLOCKS if b.lang in ("shell", "python") and b.needs]
SERVERS = [b for b in MARKED if b.needs == ("server",)]
_URL = re.compile(r"https?://127\.0\.0\.1:\d+/\S*")


def _copy_repository(dst: Path):
    """The files git tracks plus untracked, not ignored ones (a clone with the working tree's edits)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but outputs and caches
        skip = {".git", ".venv", "results", "models", "data", "__pycache__", ".pytest_cache", "build"}
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    for rel in files:
        src = ROOT / rel
        if src.is_file() or src.is_symlink():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel, follow_symlinks=False)


def _link_venv(dst: Path):
    """dst/.venv: the virtual environment running this test, else a stand-in with bin/python, bin/activate and
    the certifynet-* commands of setup.py."""
    venv = dst / ".venv"
    if sys.prefix != sys.base_prefix:
        venv.symlink_to(sys.prefix, target_is_directory=True)
        return
    bin_dir = venv / "bin"
    bin_dir.mkdir(parents=True)
    wrappers = {"python": f'exec "{sys.executable}" "$@"', "python3": f'exec "{sys.executable}" "$@"'}
    scripts = re.search(r"SCRIPTS = \[(.*?)\]", (ROOT / "setup.py").read_text(), re.S)[1]
    for stage in re.findall(r'"(\w+)"', scripts):
        wrappers[f"certifynet-{stage.replace('_', '-')}"] = (
            f'exec "{sys.executable}" -c "import sys; from certifynet.cli.{stage} import main; sys.exit(main())" "$@"')
    for name, body in wrappers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "activate").write_text(f'export VIRTUAL_ENV="{venv}"\nexport PATH="{bin_dir}:$PATH"\n')


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    dst = tmp_path_factory.mktemp("readme") / "certifynet"
    dst.mkdir()
    _copy_repository(dst)
    _link_venv(dst)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{dst / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(dst / ".venv"),
               PYTHONPATH=str(dst / "src"), MPLBACKEND="Agg", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return dst, env


def block_failure(block: Block, cwd: Path, env: dict):
    """None when the block runs (exit status 0) in cwd, else the message naming its file, line and output."""
    if block.lang == "shell" and _TOUCHES_VENV.search(block.text):
        return (f"{block.where}: this block runs make or pip, which would install into the test's virtual "
                f"environment; mark it <!-- needs: venv install -->:\n{block.text}")
    cmd = (["bash", "-e", "-o", "pipefail", "-c", block.text] if block.lang == "shell"
           else [str(cwd / ".venv" / "bin" / "python"), "-c", block.text])
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return (f"{block.where}: {block.lang} block ran past {BLOCK_TIMEOUT_S} s; make it smaller or mark it "
                f"<!-- needs: long run -->:\n{block.text}")
    if r.returncode == 0:
        return None
    return (f"{block.where}: {block.lang} block failed with exit status {r.returncode}. Fix it, or mark it on the "
            f"line above its fence with <!-- needs: ... --> ({', '.join(NEEDS)}).\n"
            f"--- block ---\n{block.text}--- output (end) ---\n{(r.stdout + r.stderr)[-3000:]}")


def marker_problems(paths):
    """Unclosed fences, markers without a block, unknown needs items."""
    problems = []
    for path in paths:
        blocks, found = parse_blocks(path)
        problems += found
        problems += [f"{path.name}:{b.marker_line}: unknown needs {[i for i in b.needs if i not in NEEDS]}; "
                     f"known: {', '.join(NEEDS)}" for b in blocks if any(i not in NEEDS for i in b.needs)]
    return problems


def test_docs_have_runnable_blocks_and_valid_markers():
    problems = marker_problems(DOCS)
    assert not problems, "\n".join(problems)
    assert len(RUNNABLE) >= 5, [b.where for b in ALL_BLOCKS]


@pytest.mark.e2e
def test_harness_catches_bad_blocks_and_markers(tmp_path, clone):
    """Control: a failing block, a make call, a dangling marker and an unknown item are all reported."""
    doc = tmp_path / "bad.md"
    doc.write_text("<!-- needs: gpu -->\n\n```bash\nnvidia-smi\n```\n\n```bash\necho ok\n```\n\n"
                   "```python\nimport certifynet\nraise SystemExit(3)\n```\n\n  ```sh\n  make demo\n  ```\n\n"
                   "<!-- needs: gpu -->\ntext\n\n<!-- needs: a tpu -->\n```bash\ntrue\n```\n")
    blocks, _ = parse_blocks(doc)
    assert [(b.line, b.lang, b.needs) for b in blocks] == [(3, "shell", ("gpu",)), (7, "shell", ()),
                                                          (11, "python", ()), (16, "shell", ()),
                                                          (24, "shell", ("a tpu",))]
    assert marker_problems([doc]) == ["bad.md:20: marker not followed by a code block",
                                      "bad.md:23: unknown needs ['a tpu']; known: " + ", ".join(NEEDS)]
    cwd, env = clone
    assert block_failure(blocks[1], cwd, env) is None
    failed = block_failure(blocks[2], cwd, env)
    assert failed.startswith(f"{doc}:11: python block failed with exit status 3") and "raise SystemExit(3)" in failed
    assert "mark it <!-- needs: venv install -->" in block_failure(blocks[3], cwd, env)


def test_readme_says_how_to_use_the_installed_environment():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in text and ".venv/bin/certifynet-" in text
    assert "<!-- needs:" in text  # the marker convention is shown where it is used


@pytest.mark.parametrize("block", MARKED, ids=[b.where for b in MARKED])
def test_marked_block_is_valid_syntax(block):
    if block.lang == "shell":
        r = subprocess.run(["bash", "-n", "-c", block.text], capture_output=True, text=True)
        assert r.returncode == 0, f"{block.where}: shell syntax error:\n{r.stderr}\n{block.text}"
    else:
        compile(block.text, block.where, "exec")


@pytest.mark.e2e
@pytest.mark.parametrize("block", SERVERS, ids=[b.where for b in SERVERS])
def test_server_block_serves_its_page(block, clone):
    """A block marked <!-- needs: server --> runs as pasted until the loopback URL it names answers 200."""
    import signal
    import time
    import urllib.request
    url = _URL.search(block.text)
    assert url, f"{block.where}: a server block must name the http://127.0.0.1:PORT/ page it serves"
    cwd, env = clone
    proc = subprocess.Popen(["bash", "-c", block.text], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None and status != 200:
            time.sleep(0.5)
            try:
                status = urllib.request.urlopen(url[0].rstrip(").,`"), timeout=5).status
            except OSError:
                pass
        assert status == 200, f"{block.where}: {url[0]} did not answer 200 (exit {proc.poll()}):\n{block.text}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_block_runs(block, clone):
    failure = block_failure(block, *clone)
    if failure:
        pytest.fail(failure, pytrace=False)
