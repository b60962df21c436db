"""sample.py / certify.py / predict.py: the counts contract, one-line errors, Python-level input checks."""
import json
import os

import numpy as np
import pytest
import torch

from certifynet.cli import certify as certify_cli
from certifynet.cli import predict as predict_cli
from certifynet.cli import sample as sample_cli
from certifynet.errors import CertifyNetError
from certifynet.models import get_architecture
from certifynet.records import read_rows
from certifynet.sampling import SamplingConfig, Smooth

from helpers import untrained_lenet

SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "60", "--batch", "30", "--max", "3"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("m") / "lenet.pth")


def _one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("error:") and fragment in err[-1], err


def test_sample_then_certify_equals_one_go(ckpt, tmp_path, capsys):
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    meta = json.load(open(counts + ".meta.json"))
    for key in ("model", "model_sha256", "dataset", "split", "sigma", "dist", "d", "num_classes", "N0", "N",
                "seed", "version", "k", "alpha"):
        assert key in meta, key
    assert certify_cli.main(["--counts", counts, "--alpha", "0.001", "--out", str(tmp_path / "a.tsv")]) == 0
    assert certify_cli.main(["--model", ckpt, *SMALL, "--out", str(tmp_path / "b.tsv")]) == 0
    _, a = read_rows(str(tmp_path / "a.tsv"))
    _, b = read_rows(str(tmp_path / "b.tsv"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b) and len(a) == 3
    assert list(a[0])[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    # rerunning the same command skips rows already done
    assert certify_cli.main(["--counts", counts, "--alpha", "0.001", "--out", str(tmp_path / "a.tsv")]) == 0
    assert len(read_rows(str(tmp_path / "a.tsv"))[1]) == 3


@pytest.mark.e2e
def test_certify_from_counts_never_loads_torch(ckpt, tmp_path):
    """certify.py --counts is pure numpy/scipy: the process never imports torch (fast on CPU-only nodes)."""
    import subprocess
    import sys
    counts, out = str(tmp_path / "c.csv"), str(tmp_path / "a.tsv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    code = ("import runpy, sys\n"
            f"sys.argv = ['certify.py', '--counts', {counts!r}, '--out', {out!r}]\n"
            "try:\n    runpy.run_path('scripts/certify.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'certify --counts imported torch'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    assert len(read_rows(out)[1]) == 3


def test_predict_log(ckpt, tmp_path):
    out = str(tmp_path / "p.tsv")
    assert predict_cli.main(["--model", ckpt, "--sigma", "0.25", "--N", "50", "--max", "2", "--out", out]) == 0
    header, rows = read_rows(out)
    assert header[:5] == ["idx", "label", "predict", "correct", "time"] and len(rows) == 2


@pytest.mark.parametrize("args, fragment", [
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "0"], "--alpha"),
    (["--N0", "100", "--N", "50"], "--N0"),
    (["--N", "0"], "--N must be > 0"),
    (["--sigma", "-0.1"], "--sigma"),
])
def test_bad_numbers(ckpt, tmp_path, capsys, args, fragment):
    argv = ["--model", ckpt, *SMALL, "--out", str(tmp_path / "x.tsv")]
    for i in range(0, len(args), 2):  # override
        j = argv.index(args[i]) if args[i] in argv else None
        if j is None:
            argv += args[i:i + 2]
        else:
            argv[j + 1] = args[i + 1]
    _one_line_error(capsys, certify_cli.main(argv), fragment)


def test_missing_and_mismatched_counts(ckpt, tmp_path, capsys):
    _one_line_error(capsys, certify_cli.main(["--counts", str(tmp_path / "none.csv")]), "not found")
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    capsys.readouterr()
    os.rename(counts + ".meta.json", counts + ".bak")
    _one_line_error(capsys, certify_cli.main(["--counts", counts]), "sidecar")
    meta = json.load(open(counts + ".bak"))
    meta["columns"] = meta["columns"][::-1]
    json.dump(meta, open(counts + ".meta.json", "w"))
    _one_line_error(capsys, certify_cli.main(["--counts", counts]), "does not match its sidecar")


def test_missing_or_corrupt_model(tmp_path, capsys):
    _one_line_error(capsys, sample_cli.main(["--model", str(tmp_path / "no.pth"), *SMALL]), "not found")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    _one_line_error(capsys, sample_cli.main(["--model", str(bad), *SMALL]), "corrupt")


def test_resume_with_other_settings_is_refused(ckpt, tmp_path, capsys):
    out = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", out]) == 0
    capsys.readouterr()
    _one_line_error(capsys, sample_cli.main(["--model", ckpt, *SMALL, "--seed", "7", "--out", out]), "seed")


def test_nan_input_is_refused():
    sm = Smooth(get_architecture("lenet", "mnist5k"), 10, 0.25)
    x = torch.rand(1, 28, 28)
    x[0, 3, 3] = float("nan")
    with pytest.raises(CertifyNetError, match="NaN"):
        sm.certify(x, 10, 20, 0.001, batch=10)


# ---------------------------------------------------------------- SamplingConfig: one set of options and defaults

# A value other than the default for every option (a new option must be added here: the round trip covers it).
OTHER = {"counts": "c.csv", "method": "dsrs", "model": "m.pth", "arch": "lenet", "dataset": "mnist5k",
         "normalization": "identity", "denoiser": "d.pth", "split": "train", "data_dir": "/x/data", "start": 3,
         "end": 9, "skip": 2, "max": 4, "shard": "1/2", "image": "i.png", "image_label": 3, "sigma": 0.5,
         "dist": "general_gaussian", "k": 5, "N": 123, "alpha": 0.01, "batch": 7, "seed": 11, "select": "label",
         "N0": 13, "q_dist": "rescaled", "q_percentile": "0.9", "q_sigma": 0.2, "iss": "relative",
         "iss_decline": 0.1, "iss_n0": 17, "device": "cpu", "amp": True, "optimize": False, "channels_last": False,
         "progress": False, "inputs_per_batch": 3, "cuda_graph": True, "label": "my run", "sequential": True,
         "radii": [0.25, 0.5], "sequential_rule": "cs", "futility": "upper", "futility_level": 0.05, "estimate": True,
         "time_limit": "04:00:00", "out": "o.tsv",
         "diffusion_input_range": "0,1", "diffusion_prediction": "sample", "diffusion_schedule": "cosine:4000",
         "diffusion_t_rule": "nearest", "diffusion_timestep_rescale": 0.25, "diffusion_continuous": True,
         "diffusion_resolution": 32, "diffusion_steps": 3, "diffusion_no_clip": True, "openai_heads": 4,
         "openai_head_channels": 64, "qkv_order": "new"}


def _parsed(argv):
    from certifynet.cli import parse
    return SamplingConfig.from_namespace(parse(certify_cli.build_parser(), argv))


def test_config_argv_parse_round_trip_for_every_option():
    """config → to_argv → certify.py's parser → config is the identity, option by option and all at once (the
    given set included), and the defaults alone spell as no option at all."""
    assert sorted(OTHER) == sorted(SamplingConfig.names())
    assert SamplingConfig().to_argv() == [] and _parsed([]) == SamplingConfig()
    for name, value in OTHER.items():
        config = SamplingConfig.from_explicit({name: value})
        assert _parsed(config.to_argv()) == config, name
    everything = SamplingConfig.from_explicit(OTHER)
    assert _parsed(everything.to_argv()) == everything
    assert SamplingConfig.from_explicit(everything.explicit()) == everything


def test_parser_and_web_defaults_are_the_configs():
    from certifynet.cli import attack as attack_cli
    from certifynet.sampling.config import ATTACK_DEFAULTS
    from certifynet.web import forms
    d = SamplingConfig()
    for cli in (sample_cli, certify_cli, predict_cli, attack_cli):
        p = cli.build_parser()
        for name in SamplingConfig.names():
            want = ATTACK_DEFAULTS.get(name, getattr(d, name)) if cli is attack_cli else getattr(d, name)
            if name in {a.dest for a in p._actions} and not (cli is attack_cli and name == "method"):
                assert p.get_default(name) == want, (cli.__name__, name)
    web = forms.cli_defaults()
    for name in ("N0", "N", "alpha", "batch", "seed", "k", "q_percentile", "iss_decline", "iss_n0", "select", "method"):
        assert web[name] == getattr(d, name), name


def test_validate_names_arguments_as_fields():
    bad = SamplingConfig(model="m.pth", sigma=0.25, q_sigma=0.2, given=("q_sigma",))
    with pytest.raises(CertifyNetError) as e:
        bad.validate("sample")
    assert str(e.value) == "q_sigma does not apply without q_dist rescaled"
    assert e.value.render(cli=True) == "--q-sigma does not apply without --q-dist rescaled"
    with pytest.raises(CertifyNetError, match="^N0 does not apply to predict.py"):
        SamplingConfig(model="m.pth", sigma=0.25, N0=5, given=("N0",)).validate("predict")
    with pytest.raises(CertifyNetError, match="^q_dist must be one of none, truncated, rescaled, got 'gauss'"):
        SamplingConfig(model="m.pth", sigma=0.25, q_dist="gauss").validate("sample")
    with pytest.raises(CertifyNetError, match="^q_percentile does not apply without q_dist truncated"):
        SamplingConfig(model="m.pth", sigma=0.25, q_percentile="0.5").validate("sample")   # set from Python
    SamplingConfig(model="m.pth", sigma=0.25, N0=100, given=()).validate("predict")   # the default, not given
    SamplingConfig(model="m.pth", sigma=0.25, q_dist="truncated", q_percentile="0.5").validate("sample")


# The web job's commands: those before the configuration existed (web.forms at 3c110dd), but for the file names
# (one log per method: a job may certify several) and analyze.py's --label.
WEB_CASES = [
    ({"method": "np", "sigma": "0.25", "N0": "10", "N": "100", "batch": "100"}, ("gallery", {"idx": 2}), "data",
     {"sample": ["--model", "models/lenet.pth", "--dataset", "mnist5k", "--start", "2", "--max", "1", "--sigma",
                 "0.25", "--N", "100", "--alpha", "0.001", "--batch", "100", "--seed", "0", "--N0", "10", "--out",
                 "results/web/J/counts.csv"],
      "certify": ["--counts", "results/web/J/counts.csv", "--method", "np", "--alpha", "0.001", "--out",
                  "results/web/J/np.tsv"]}),
    ({"method": "dsrs", "sigma": "0.5", "k": "380", "N": "200", "alpha": "0.01", "q_dist": "rescaled",
      "q_sigma": "0.4", "seed": "3"}, ("batch", {"count": 4}), "/abs/data",
     {"sample": ["--model", "models/lenet.pth", "--dataset", "mnist5k", "--denoiser", "models/den.pth",
                 "--data-dir", "/abs/data", "--max", "4", "--sigma", "0.5", "--k", "380", "--N", "200", "--alpha",
                 "0.01", "--batch", "1000", "--seed", "3", "--N0", "100", "--q-dist", "rescaled", "--q-sigma", "0.4",
                 "--out", "results/web/J/counts.csv"],
      "certify": ["--counts", "results/web/J/counts.csv", "--method", "dsrs", "--alpha", "0.01", "--out",
                  "results/web/J/dsrs.tsv"],
      "analyze": ["results/web/J/dsrs.tsv", "--label", "DSRS", "--out", "results/web/J/analysis"]}),
    ({"method": "iss-dsrs", "sigma": "0.25", "N0": "10", "N": "100", "q_dist": "truncated", "q_percentile": "0.9",
      "select": "label"}, ("upload", {"label": 3, "suffix": ".png"}), "data",
     {"sample": ["--model", "models/lenet.pth", "--dataset", "mnist5k", "--image", "results/web/J/input.png",
                 "--image-label", "3", "--sigma", "0.25", "--N", "100", "--alpha", "0.001", "--batch", "1000",
                 "--seed", "0", "--select", "label", "--q-dist", "truncated", "--q-percentile", "0.9", "--iss",
                 "absolute", "--iss-decline", "0.05", "--iss-n0", "100", "--out", "results/web/J/counts-iss.csv"],
      "certify": ["--counts", "results/web/J/counts-iss.csv", "--method", "iss-dsrs", "--alpha", "0.001", "--out",
                  "results/web/J/iss-dsrs.tsv"]}),
]


@pytest.mark.parametrize("form, choice, data_dir, want", WEB_CASES, ids=["np-gallery", "dsrs-batch", "iss-dsrs-upload"])
def test_web_job_stages_and_commands(form, choice, data_dir, want):
    """The web form → one configuration per stage: its commands are today's, and the stored stage options are
    the configuration the CLI parses from those commands (what the worker runs is what the page shows)."""
    from types import SimpleNamespace

    from certifynet.cli import analyze as analyze_cli
    from certifynet.cli import parse
    from certifynet.web import forms, plan
    settings = forms.parse_settings(form, 784)
    pick = forms.InputChoice(choice[0], "mnist5k", **choice[1])
    denoiser = SimpleNamespace(path="models/den.pth") if choice[0] == "batch" else None
    model = SimpleNamespace(path="models/lenet.pth", arch="lenet", arch_given=False)
    source = forms.input_source(model, denoiser, pick, "results/web/J", data_dir)
    stages, _ = plan.build_stages(source, settings, "results/web/J", pick.kind == "batch")
    argv = {s["stage"]: plan.stage_argv(s) for s in stages}
    assert argv == want and [s["stage"] for s in stages] == list(want)
    assert [a[0] for a in plan.commands(stages)] == [f"certifynet-{s}" for s in want]
    for stage, cli in zip(stages, (sample_cli, certify_cli)):
        stored = SamplingConfig.from_explicit(stage["options"])
        assert stored == SamplingConfig.from_namespace(parse(cli.build_parser(), argv[stage["stage"]])), stage
    if "analyze" in want:
        parsed = analyze_cli.build_parser().parse_args(argv["analyze"])
        assert (parsed.logs, parsed.label, parsed.out) == (stages[-1]["logs"], stages[-1]["labels"], stages[-1]["out"])
    assert json.loads(json.dumps(stages)) == stages


# ---------------------------------------------------------------- one definition of "correct"

@pytest.fixture(scope="module")
def unlabelled_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x.npy"
    np.save(path, np.random.default_rng(0).random((1, 28, 28), dtype=np.float32))
    return str(path)


def test_unknown_label_is_never_correct(ckpt, unlabelled_image, tmp_path):
    """--image without --image-label (label −1): PREDICT's abstain (N = 10 cannot reach α = 0.001) and sequential
    certification write correct = 0, as certify.outcome.is_correct says."""
    out = str(tmp_path / "p.tsv")
    assert predict_cli.main(["--model", ckpt, "--sigma", "0.25", "--N", "10", "--image", unlabelled_image,
                             "--out", out]) == 0
    (row,) = read_rows(out)[1]
    assert (row["label"], row["predict"], row["correct"]) == ("-1", "-1", "0")
    out = str(tmp_path / "s.tsv")
    assert certify_cli.main(["--model", ckpt, "--sigma", "0.25", "--N0", "10", "--N", "200", "--batch", "64",
                             "--sequential", "--radii", "0.1", "--image", unlabelled_image, "--out", out]) == 0
    (row,) = read_rows(out)[1]
    assert row["label"] == "-1" and row["correct"] == "0"
