"""Reliability guarantees: tamper-evident counts, one writer per log, resume after any crash damage, outputs
that are never destroyed, absurd values refused, defaults under the project root, plain progress lines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from certifynet.cli import certify, sample
from certifynet.errors import CertifyNetError, CertifyNetWarning
from certifynet.models import get_architecture
from certifynet.paths import project_root, safe_filename
from certifynet.records import RowLog, WriterLock, read_rows, writer_active

from helpers import untrained_lenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "60", "--batch", "30", "--max", "4", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("m") / "lenet.pth")


@pytest.fixture(scope="module")
def counts(model, tmp_path_factory):
    """A genuine NP counts file (4 rows) and its sidecar, as text."""
    out = str(tmp_path_factory.mktemp("c") / "c.csv")
    assert sample.main(["--model", model, *SMALL, "--out", out]) == 0
    return open(out).read(), open(out + ".meta.json").read()


def _write(folder, body, meta):
    path = os.path.join(folder, "t.csv")
    with open(path, "w") as f:
        f.write(body)
    with open(path + ".meta.json", "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def _set(body, row, column, value):
    """Replace one field of data row `row` (0-based, after the header)."""
    lines = body.splitlines()
    header = lines[0].split(",")
    fields = lines[row + 1].split(",")
    fields[header.index(column)] = str(value)
    lines[row + 1] = ",".join(fields)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- tamper evidence
def _tampered(body, meta_text):
    meta = json.loads(meta_text)
    n = meta["N"]
    first = body.splitlines()[1].split(",")
    cols = body.splitlines()[0].split(",")
    count = int(first[cols.index("count")])
    lines = body.splitlines()
    return {
        "n edited to 100,000": (_set(body, 0, "n", 100_000), meta, "n = 100000 is outside [0, 60]"),
        "n edited within range": (_set(body, 0, "n", n - 1), meta, f"n = {n - 1}, but the sidecar's N is {n}"),
        "count > n": (_set(body, 0, "count", n + 1), meta, f"count = {n + 1} is outside [0, {n}]"),
        "count edited": (_set(body, 0, "count", count - 1 if count else 1), meta, "was edited after sampling"),
        "non-integer count": (_set(body, 0, "count", "5.5"), meta, "count '5.5' is not an integer"),
        "duplicate idx": ("\n".join(lines + [lines[1]]) + "\n", meta, "is already on line 2"),
        "truncated last row": (body[:-4], meta, "is incomplete"),
        "sigma edited in sidecar": (body, {**meta, "sigma": 2.5}, "field 'sigma' was changed"),
        "N edited in sidecar": (body, {**meta, "N": 100_000}, "field 'N' was changed"),
        "field added to sidecar": (body, {**meta, "q_mode": None, "extra": 1}, "field 'extra' was added"),
        "digest removed": (body, {k: v for k, v in meta.items() if k != "integrity"}, "lacks the digest"),
        "columns reordered": (body, {**meta, "columns": meta["columns"][::-1]}, "columns"),
    }


@pytest.mark.parametrize("case", list(_tampered("idx,n,count\n0,1,1\n", '{"N": 1, "columns": []}')))
def test_tampered_counts_are_refused_naming_the_field(counts, tmp_path, capsys, case):
    body, meta, fragment = _tampered(*counts)[case]
    path = _write(str(tmp_path), body, meta)
    rc = certify.main(["--counts", path, "--out", str(tmp_path / "log.tsv"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error:") and fragment in err[-1], err
    assert not os.path.exists(tmp_path / "log.tsv")


def test_untampered_counts_certify(counts, tmp_path):
    path = _write(str(tmp_path), *counts)
    assert certify.main(["--counts", path, "--out", str(tmp_path / "log.tsv"), "--no-progress"]) == 0
    assert len(read_rows(str(tmp_path / "log.tsv"))[1]) == 4


def test_counts_flags_select_rows(counts, tmp_path):
    """--max, --start/--end and --shard are honoured on a counts file (not silently ignored)."""
    path = _write(str(tmp_path), *counts)
    idx = [int(r["idx"]) for r in read_rows(path)[1]]
    assert certify.main(["--counts", path, "--max", "2", "--out", str(tmp_path / "a.tsv"), "--no-progress"]) == 0
    assert [int(r["idx"]) for r in read_rows(str(tmp_path / "a.tsv"))[1]] == idx[:2]
    assert certify.main(["--counts", path, "--shard", "1/2", "--out", str(tmp_path / "b.tsv"), "--no-progress"]) == 0
    assert [int(r["idx"]) for r in read_rows(str(tmp_path / "b.shard1of2.tsv"))[1]] == idx[2:]
    assert certify.main(["--counts", path, "--start", str(idx[1]), "--out", str(tmp_path / "c.tsv"),
                         "--no-progress"]) == 0
    assert [int(r["idx"]) for r in read_rows(str(tmp_path / "c.tsv"))[1]] == [i for i in idx if i >= idx[1]]


def test_method_defaults_to_the_counts_kind(model, tmp_path):
    out = str(tmp_path / "d.csv")
    assert sample.main(["--model", model, *SMALL, "--q-dist", "truncated", "--out", out]) == 0
    assert certify.main(["--counts", out, "--no-progress"]) == 0
    assert read_rows(str(tmp_path / "d.dsrs.tsv"))[1][0]["method"] == "dsrs"
    assert certify.main(["--counts", out, "--method", "np", "--no-progress"]) == 0  # NP on the P draws is valid


def test_which_method_reads_which_counts():
    """NP also reads the P draws of DSRS counts (ISS-NP those of ISS-DSRS); DSRS needs Q draws; ISS counts are
    read only by the ISS methods. Refusals name the argument (the CLI shows --method)."""
    from certifynet.certify.from_counts import check_method, readers_of
    assert {k: readers_of(k) for k in ("np", "dsrs", "iss-np", "iss-dsrs")} == {
        "np": ("np",), "dsrs": ("dsrs", "np"), "iss-np": ("iss-np",), "iss-dsrs": ("iss-dsrs", "iss-np")}
    assert check_method(None, "dsrs", "'c'") == "dsrs" and check_method("np", "dsrs", "'c'") == "np"
    with pytest.raises(CertifyNetError) as e:
        check_method("dsrs", "np", "'c'")
    assert e.value.render(cli=True) == ("--method dsrs needs counts sampled with --q-dist truncated|rescaled; 'c' "
                                        "holds np counts: use --method np")
    with pytest.raises(CertifyNetError, match="^unknown method 'sequential'; choose from np, dsrs, iss-np, iss-dsrs$"):
        check_method("sequential", "np", "'c'")


def test_an_image_of_unknown_label_is_never_correct(model, tmp_path):
    """--image without --image-label (label −1): correct = 0 whether the row abstains (N = 2) or not (N = 200);
    the control with the predicted class as --image-label is correct."""
    image = str(tmp_path / "x.npy")
    np.save(image, np.full((28, 28), 0.5, np.float32))

    def certified(name, n, *extra):
        out = str(tmp_path / f"{name}.csv")
        assert sample.main(["--model", model, "--image", image, *extra, "--sigma", "0.25", "--N0", "2", "--N", n,
                            "--batch", "100", "--no-progress", "--out", out]) == 0
        assert certify.main(["--counts", out, "--no-progress"]) == 0
        (row,) = read_rows(str(tmp_path / f"{name}.np.tsv"))[1]
        return row

    few, many = certified("few", "2"), certified("many", "200")
    assert few["predict"] == "-1" and many["predict"] != "-1"   # one abstains, one does not
    assert few["label"] == many["label"] == "-1" and few["correct"] == many["correct"] == "0"
    assert certified("known", "200", "--image-label", many["predict"])["correct"] == "1"


# ---------------------------------------------------------------- one writer; resume after damage
def test_writer_lock_refuses_a_second_writer_and_is_released(tmp_path):
    target = str(tmp_path / "x.tsv")
    first = WriterLock(target).acquire(target)
    assert writer_active(target) and f"pid {os.getpid()}" in writer_active(target)
    with pytest.raises(CertifyNetError, match="is being written by pid"):
        WriterLock(target).acquire(target)
    first.release()
    assert writer_active(target) is None and not os.path.exists(target + ".lock")
    WriterLock(target).acquire(target).release()


@pytest.mark.e2e
def test_lock_of_a_killed_writer_is_free(tmp_path):
    """kill -9 leaves the lock file behind, but the kernel has dropped the flock: the next writer gets it."""
    target = str(tmp_path / "x.tsv")
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'src')!r}); from certifynet.records import WriterLock;"
            f"WriterLock({target!r}).acquire({target!r}); print('locked', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    assert writer_active(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(target + ".lock") and writer_active(target) is None
    WriterLock(target).acquire(target).release()


@pytest.mark.e2e
def test_two_writers_then_resume_every_idx_once(model, tmp_path):
    """Two identical certify.py runs on one --out: the second is refused while the first writes; the first is
    killed mid-run; a rerun resumes it. Every idx ends up exactly once. The first writer stalls after its 3rd
    row (holding the lock) until it is killed, so nothing races with this machine's speed or load."""
    from helpers import start_stalling
    out = str(tmp_path / "log.tsv")
    script = os.path.join(ROOT, "scripts", "certify.py")
    argv = ["--model", model, "--sigma", "0.25", "--N0", "10", "--N", "3000", "--batch", "100", "--max", "40",
            "--out", out, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = start_stalling(script, argv, rows=3, env=env)
    try:
        second = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env,
                                timeout=600)
        assert second.returncode == 2, second.stderr[-500:]
        assert "is being written by pid" in second.stderr.strip().splitlines()[-1]
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    done_before = len(read_rows(out, allow_torn=True)[1])
    assert done_before == 3
    rerun = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    idx = [int(r["idx"]) for r in read_rows(out)[1]]
    assert sorted(idx) == list(range(40)) and len(set(idx)) == 40


COLS = ["idx", "value", "time"]


def _log(path, rows=(), meta=None, sep="\t"):
    with RowLog(path, COLS, meta or {"kind": "toy", "sigma": 0.25}, sep=sep) as log:
        for i in rows:
            log.write({"idx": i, "value": i * i, "time": 0.1})
    return log


@pytest.mark.parametrize("damage, message", [
    (lambda text: text + "3\t9", "half-written"),          # torn last row
    (lambda text: text + "3\t9\t0.1", "half-written"),     # a full row without its newline
    (lambda text: text + "\x00" * 64, "half-written"),     # zero-filled tail after a power loss
])
def test_resume_cuts_crash_damage(tmp_path, damage, message):
    path = str(tmp_path / "x.tsv")
    _log(path, [0, 1, 2])
    with open(path, "r+") as f:
        text = f.read()
        f.seek(0)
        f.write(damage(text))
    with pytest.warns(CertifyNetWarning, match=message):
        log = _log(path, [3, 4])
    assert [r["idx"] for r in read_rows(path)[1]] == ["0", "1", "2", "3", "4"] and log.done == {0, 1, 2, 3, 4}


def test_damaged_middle_row_is_an_error_and_untouched(tmp_path):
    path = str(tmp_path / "x.tsv")
    _log(path, [0, 1, 2])
    text = open(path).read().replace("1\t1\t", "1\t")
    open(path, "w").write(text)
    with pytest.raises(CertifyNetError, match="line 3 is damaged"):
        _log(path, [3])
    assert open(path).read() == text and not os.path.exists(path + ".lock")


def test_foreign_file_is_refused_untouched(tmp_path, model):
    blob = open(model, "rb").read()
    with pytest.raises(CertifyNetError, match="has no sidecar"):
        _log(model, [0])
    assert open(model, "rb").read() == blob and not os.path.exists(model + ".lock")


def test_header_only_file_resumes_and_failed_run_leaves_nothing(tmp_path):
    path = str(tmp_path / "x.tsv")
    with pytest.raises(RuntimeError):
        with RowLog(path, COLS, {"kind": "toy"}):
            raise RuntimeError("model crashed")
    assert os.listdir(tmp_path) == []
    _log(path)  # header only, a clean close: kept, and resumable
    assert _log(path, [0]).done == {0}


# ---------------------------------------------------------------- absurd values
def test_non_finite_outputs_are_refused():
    from certifynet.sampling import Smooth

    class Exploding(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10] * float("inf")

    with pytest.raises(CertifyNetError, match="not finite"):
        Smooth(Exploding(), 10, 0.25).certify(torch.rand(1, 28, 28), 10, 20, 0.01, batch=10)


def test_wrong_shapes_name_the_expected_shape():
    from certifynet.sampling import Smooth
    sm = Smooth(get_architecture("lenet", "mnist5k"), 10, 0.25)
    with pytest.raises(CertifyNetError, match=r"shape \(1, 1, 28, 28\)"):
        sm.certify(torch.rand(1, 1, 28, 28), 10, 20, 0.01, batch=10)
    with pytest.raises(CertifyNetError, match="floating-point image tensor"):
        sm.predict([[0.5]], 20, 0.01, batch=10)
    with pytest.raises(CertifyNetError, match="^n0 must be >= 1"):
        sm.certify(torch.rand(1, 28, 28), 0, 20, 0.01, batch=10)


def test_predict_refuses_nan_pixels(model):
    from certifynet.sampling import InputSampler, SamplingConfig
    args = SamplingConfig(batch=10, optimize=False, sigma=0.25, N=20, N0=0, alpha=0.01, progress=False)
    s = InputSampler(get_architecture("lenet", "mnist5k"), 10, 784, args, torch.device("cpu"))
    x = torch.rand(1, 28, 28)
    x[0, 0, 0] = float("nan")
    with pytest.raises(CertifyNetError, match="NaN or Inf pixel"):
        s.predict_counts(0, x)


def test_kair_drunet_with_one_block_per_level_loads(tmp_path):
    """KAIR's B.sequential returns a lone ResBlock unwrapped, so nb=1 stores m_body.res.* (no index)."""
    from certifynet.denoise import get_denoiser
    from certifynet.denoise.checkpoint import load_denoiser
    torch.manual_seed(0)
    ours = get_denoiser("drunet_small", 1).eval()
    kair = {k.replace("m_body.0.res.", "m_body.res."): v for k, v in ours.state_dict().items()}
    assert any(k.startswith("m_body.res.") for k in kair)
    torch.save(kair, tmp_path / "drunet_nb1.pth")
    loaded = load_denoiser(str(tmp_path / "drunet_nb1.pth"))
    x = torch.rand(2, 1, 28, 28)
    assert loaded.source == "kair" and loaded.config["nb"] == 1
    assert torch.equal(loaded.model(x, 0.25), ours(x, 0.25))


def test_dsrs_imagenet_file_names_warn_without_center(capsys):
    from certifynet.cli import console_diagnostics
    from certifynet.models.layouts import warn_dsrs_imagenet
    dsrs = "models/new_cohen/cohen-imagenet-75260-0.50.pth.tar"
    with pytest.warns(CertifyNetWarning, match="pass normalization center"):
        warn_dsrs_imagenet(dsrs, "resnet50", "dataset")
    with console_diagnostics():  # the CLI names the flag
        warn_dsrs_imagenet(dsrs, "resnet50", "dataset")
    err = capsys.readouterr().err
    assert err.startswith(f"warning: '{dsrs}' looks like a DSRS ImageNet model")
    assert err.endswith("pass --normalization center (now: dataset)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_dsrs_imagenet(dsrs, "resnet50", "center")
        warn_dsrs_imagenet("models/imagenet/resnet50/noise_0.50/checkpoint.pth.tar", "resnet50", "dataset")


def test_load_summary_names_the_normalisation(model, tmp_path, capsys):
    assert sample.main(["--model", model, *SMALL, "--max", "1", "--out", str(tmp_path / "c.csv")]) == 0
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("model:"))
    assert "lenet on mnist5k" in line and "normalization checkpoint" in line and "431,080 parameters" in line
    assert json.load(open(tmp_path / "c.csv.meta.json"))["normalization"]["mean"] == [0.0]


# ---------------------------------------------------------------- outputs, names, progress
def test_default_outputs_go_under_the_project_root(model, tmp_path, monkeypatch):
    assert project_root() == ROOT  # this checkout (an editable install)
    monkeypatch.setenv("CERTIFYNET_ROOT", str(tmp_path / "proj"))
    monkeypatch.chdir(tmp_path)
    os.makedirs("elsewhere")
    monkeypatch.chdir("elsewhere")
    argv = ["--model", model, *SMALL, "--max", "1", "--data-dir", os.path.join(ROOT, "data")]
    assert sample.main(argv) == 0
    assert os.path.isfile(tmp_path / "proj" / "results" / "counts.csv") and os.listdir(".") == []


@pytest.mark.parametrize("label, name", [
    ("NP σ=0.25 N=2000", "np_sigma0.25_N2000"),
    ("ISS-NP σ=0.25 ε=0.05", "iss-np_sigma0.25_eps0.05"),
    ("clean LeNet + DRUNet σ=1.0 N=200", "clean_LeNet+DRUNet_sigma1.0_N200"),
])
def test_safe_file_names(label, name):
    assert safe_filename(label) == name and name.isascii() and " " not in name


@pytest.mark.e2e
def test_plain_progress_lines_without_a_terminal(model, tmp_path, monkeypatch):
    monkeypatch.setenv("CERTIFYNET_PROGRESS_SECONDS", "0")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sample.py"), "--model", model, *SMALL[:-1],
                        "--out", str(tmp_path / "c.csv")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-500:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sampling:")]
    assert "\r" not in r.stderr and len(lines) >= 4 and "4/4 inputs (100%)" in lines[-1], r.stderr


def test_training_recipes_get_distinct_default_folders():
    """The seed's DSRS recipes (Gaussian, consistency, SmoothMix at k=380) must not share a folder."""
    from certifynet.training.loop import TrainConfig, prepare_config
    base = dict(dataset="mnist", arch="mnist_43", sigma=0.25, k=380, k_warmup=100, dry_run=True)
    folders = {prepare_config(TrainConfig(**base, **extra)).outdir for extra in (
        {}, {"num_noise_vec": 2, "lbd": 5.0}, {"num_noise_vec": 2, "lbd": 5.0, "eta": 0.5},
        {"method": "smoothmix", "num_noise_vec": 2, "eta": 5.0, "num_steps": 4, "mix_step": 1})}
    assert len(folders) == 4
    assert all(f.startswith(os.path.join(ROOT, "models", "mnist", "mnist_43")) for f in folders)
    assert os.path.join("consistency", "num_2", "lbd_5", "eta_5_dsrs", "noise_0.25_k380_kw100") in " ".join(folders)


def test_merged_counts_shards_keep_their_integrity(model, tmp_path, capsys):
    """Shards of one sampling run merge into a counts file that certify.py verifies (the settings digest
    leaves out the shard bookkeeping), and an edit of the merged file is still caught."""
    from certifynet.records.merge import merge_files
    out = str(tmp_path / "c.csv")
    for i in range(2):
        assert sample.main(["--model", model, *SMALL, "--shard", f"{i}/2", "--out", out]) == 0
    merge_files(out, [str(tmp_path / f"c.shard{i}of2.csv") for i in range(2)])
    assert certify.main(["--counts", out, "--no-progress"]) == 0
    assert len(read_rows(str(tmp_path / "c.np.tsv"))[1]) == 4
    meta = json.load(open(out + ".meta.json"))
    json.dump({**meta, "alpha": 0.5}, open(out + ".meta.json", "w"))
    capsys.readouterr()
    assert certify.main(["--counts", out, "--out", str(tmp_path / "x.tsv"), "--no-progress"]) == 2
    assert "field 'alpha' was changed" in capsys.readouterr().err


def test_a_command_run_by_another_prints_each_log_line_once(capsys):
    """The quickstart runs each stage's main() inside its own console_diagnostics: a load summary printed twice
    was seen in every stage."""
    import logging

    from certifynet.cli import console_diagnostics
    with console_diagnostics():
        with console_diagnostics():
            logging.getLogger("certifynet.sampling.model").info("model: x")
        logging.getLogger("certifynet.sampling.model").info("after the inner command")
    assert capsys.readouterr().err == "model: x\nafter the inner command\n"
    logging.getLogger("certifynet.sampling.model").info("not shown outside a command")
    assert capsys.readouterr().err == ""
