"""A diffusion denoiser wherever a denoiser goes: `--denoiser <diffusers folder | OpenAI .pt>` in sample.py (each of
the three folder layouts and a converted OpenAI-layout file), certify.py (--counts, --model, --sequential),
predict.py, attack.py, the Python API and the web app's catalogue; the sidecar and the load summary name t*, ᾱ_t*,
the schedule and the chain; K-step noise is per input; the diffusion flags are refused where they do not apply.
Tiny random UNets saved in tmp, an untrained LeNet, on the CPU."""
import json
import os

import pytest
import torch

from certifynet.cli import attack as attack_cli
from certifynet.cli import certify as certify_cli
from certifynet.cli import predict as predict_cli
from certifynet.cli import sample as sample_cli
from certifynet.records import read_meta, read_rows
from test_diffusion import _scheduler, save_layout, tiny_unet
from test_diffusion_openai import CASES, openai_unet

from helpers import ROOT, untrained_lenet

DATA = ["--data-dir", str(ROOT / "data"), "--no-progress"]
SMALL = ["--sigma", "0.5", "--max", "2", "--N0", "10", "--N", "50", "--batch", "50", *DATA]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("lenet") / "lenet.pth")


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return save_layout(tmp_path_factory.mktemp("flat"), "flat", tiny_unet().eval(), _scheduler())


def _source(tmp_path, layout):
    """(path, extra flags): a diffusers folder in `layout`, or an OpenAI improved-diffusion-like .pt (whose heads
    and schedule the file cannot say: given as flags)."""
    if layout != "openai":
        return save_layout(tmp_path / layout, layout, tiny_unet(seed=1).eval(), _scheduler()), []
    sd, _ = openai_unet(**CASES["plain"])
    torch.save(sd, tmp_path / "model.pt")
    return str(tmp_path / "model.pt"), ["--openai-head-channels", "32", "--diffusion-schedule", "cosine:4000"]


def _check_record(meta, t_star, kind):
    d = meta["diffusion"]
    assert meta["denoiser_kind"] == "diffusion" and meta["denoiser_sha256"]
    assert (d["t_star"], d["schedule"]["kind"]) == (t_star, kind) and 0 < d["alpha_bar"] < 1
    assert d["chain"][0].startswith("noise") and d["chain"][-1] == "classifier lenet"
    assert any(s.startswith("UNet at t*") for s in d["chain"])


@pytest.mark.parametrize("layout", ["flat", "pipeline", "hub-cache", "openai"])
def test_sample_certifies_from_each_layout(tmp_path, lenet, layout, capsys):
    path, extra = _source(tmp_path, layout)
    counts, log = str(tmp_path / "c.csv"), str(tmp_path / "c.tsv")
    assert sample_cli.main(["--model", lenet, "--denoiser", path, *extra, *SMALL, "--out", counts]) in (None, 0)
    err = capsys.readouterr().err
    t_star, kind, alpha = (1984, "cosine", "0.49969") if layout == "openai" else (259, "linear", "0.49761")
    for word in (f"t* = {t_star}", f"ᾱ_t* = {alpha}", f"schedule {kind}", "chain: noise", "→ classifier lenet"):
        assert word in err, word       # the load summary
    _check_record(read_meta(counts), t_star, kind)
    assert certify_cli.main(["--counts", counts, "--out", log]) in (None, 0)
    _, rows = read_rows(log)
    assert [int(r["idx"]) for r in rows] == [0, 1] and all(float(r["radius"]) >= 0 for r in rows)
    _check_record(read_meta(log), t_star, kind)      # the certify log's sidecar keeps the record


def test_every_command_takes_a_diffusion_denoiser(tmp_path, lenet, flat):
    """certify.py --model (one go and --sequential), predict.py and attack.py's audit, each sidecar with t*."""
    den = ["--model", lenet, "--denoiser", flat]
    one_go, seq, pred = (str(tmp_path / n) for n in ("np.tsv", "seq.tsv", "predict.tsv"))
    assert certify_cli.main([*den, *SMALL, "--out", one_go]) in (None, 0)
    assert certify_cli.main([*den, *SMALL, "--sequential", "--radii", "0.25", "0.5", "--out", seq]) in (None, 0)
    assert predict_cli.main([*den, "--sigma", "0.5", "--max", "2", "--N", "50", "--batch", "50", *DATA,
                             "--out", pred]) in (None, 0)
    for path in (one_go, seq, pred):
        _check_record(read_meta(path), 259, "linear")
        assert len(read_rows(path)[1]) == 2, path
    audit = str(tmp_path / "audit.tsv")
    assert attack_cli.main(["--log", one_go, *den, "--m", "2", "--steps", "2", "--N", "50", "--batch", "50", *DATA,
                            "--out", audit]) in (None, 0)
    _check_record(read_meta(audit), 259, "linear")
    assert os.path.isfile(audit + ".summary.json")


def _scaled_lenet(path):
    """An untrained LeNet with weights ×3, whose predictions under noise vary (counts that can tell runs apart)."""
    from certifynet.models import get_architecture, save_checkpoint
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    save_checkpoint(str(path), model, arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    return str(path)


def test_k_step_rows_are_per_input(tmp_path, flat):
    """--diffusion-steps 2: an input's row does not depend on which inputs ran before it (ξ from its own stream);
    and ξ matters (the rows differ from one shot's), so the comparison could fail."""
    model = _scaled_lenet(tmp_path / "lenet3.pth")
    argv = ["--model", model, "--denoiser", flat, "--sigma", "0.5", "--N0", "10", "--N", "100", "--batch", "50", *DATA]

    def rows(steps, start):
        out = str(tmp_path / f"k{steps}_{start}.csv")
        assert sample_cli.main([*argv, "--diffusion-steps", str(steps), "--start", str(start), "--max",
                                str(4 - start), "--out", out]) in (None, 0)
        return {r["idx"]: (r["pred"], r["count"]) for r in read_rows(out, sep=",")[1]}, read_meta(out)

    (all_k2, meta), (late_k2, _), (all_k1, _) = rows(2, 0), rows(2, 2), rows(1, 0)
    assert meta["diffusion"]["steps"] == 2 and "more reverse steps" in " ".join(meta["diffusion"]["chain"])
    assert late_k2 == {k: v for k, v in all_k2.items() if k in late_k2}
    assert all_k2 != all_k1


def _refused(main, argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_diffusion_flags_are_refused_where_they_do_not_apply(tmp_path, lenet, flat, capsys):
    from certifynet.denoise import get_denoiser, save_denoiser
    drunet = str(tmp_path / "drunet.pth")
    save_denoiser(drunet, get_denoiser("drunet_small", 1), sigma={"values": [0.5]})
    out = str(tmp_path / "never.csv")
    base = ["--model", lenet, *SMALL, "--out", out]
    _refused(sample_cli.main, [*base, "--diffusion-steps", "2"], capsys,
             "--diffusion-steps does not apply without a diffusion --denoiser")
    _refused(sample_cli.main, [*base, "--denoiser", drunet, "--qkv-order", "new"], capsys,
             f"--qkv-order does not apply to --denoiser '{drunet}', which is not a diffusion model")
    _refused(sample_cli.main, [*base, "--denoiser", flat, "--diffusion-steps", "2", "--inputs-per-batch", "2"], capsys,
             "--diffusion-steps > 1 does not combine with --inputs-per-batch > 1")
    _refused(sample_cli.main, [*base, "--denoiser", flat, "--diffusion-steps", "3", "--cuda-graph"], capsys,
             "--diffusion-steps > 1 does not combine with --cuda-graph")
    _refused(sample_cli.main, [*base, "--denoiser", flat, "--diffusion-schedule", "cosine:x"], capsys,
             "--diffusion-schedule")
    assert not os.path.exists(out)
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", lenet, *SMALL, "--out", counts]) in (None, 0)
    capsys.readouterr()
    _refused(certify_cli.main, ["--counts", counts, "--diffusion-t-rule", "nearest", "--out", str(tmp_path / "x.tsv")],
             capsys, "--diffusion-t-rule does not apply with --counts")


def test_python_api(tmp_path, lenet, flat):
    """load_smoothing_model with a diffusers folder → Smooth; a DRUNet path refuses diffusion options."""
    from certifynet.denoise import get_denoiser, save_denoiser
    from certifynet.denoise.diffusion import DiffusionOptions
    from certifynet.errors import CertifyNetError
    from certifynet.sampling import Smooth, load_smoothing_model
    model, _, meta = load_smoothing_model(lenet, denoiser_path=flat, sigma=0.5,
                                          diffusion_options=DiffusionOptions(diffusion_steps=2))
    assert meta["diffusion"]["steps"] == 2 and meta["diffusion"]["chain"][-1] == "classifier lenet"
    pred, radius = Smooth(model, 10, 0.5).certify(torch.rand(1, 28, 28), 10, 50, 0.01, batch=50)
    assert -1 <= pred < 10 and radius >= 0
    json.dumps(meta)
    drunet = str(tmp_path / "drunet.pth")
    save_denoiser(drunet, get_denoiser("drunet_small", 1), sigma={"values": [0.5]})
    with pytest.raises(CertifyNetError, match="not a diffusion model"):
        load_smoothing_model(lenet, denoiser_path=drunet, sigma=0.5,
                             diffusion_options=DiffusionOptions(diffusion_steps=2))
    with pytest.raises(CertifyNetError, match="needs sigma"):
        load_smoothing_model(lenet, denoiser_path=flat)


def test_web_catalog_lists_diffusion_models(tmp_path, lenet):
    """A diffusers folder (each layout) under models/ is a denoiser the form can choose, and an OpenAI .pt is listed;
    a folder that is no diffusers model is not listed, nor are the files inside a listed folder."""
    import shutil

    from certifynet.web.catalog import Catalog
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(lenet, models / "lenet.pth")
    for layout in ("flat", "pipeline", "hub-cache"):
        save_layout(models / layout, layout, tiny_unet().eval(), _scheduler())
    torch.save(openai_unet(**CASES["plain"])[0], models / "openai.pt")
    (models / "other").mkdir()
    (models / "other" / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, models / "other" / "plain.pt")
    entries = {e.path: e for e in Catalog(str(tmp_path), ["models"], "uploads").entries()}
    want = {"models/lenet.pth": "classifier", "models/flat": "denoiser", "models/pipeline": "denoiser",
            "models/hub-cache/models--org--tiny": "denoiser", "models/openai.pt": "refused"}
    assert {p: e.kind for p, e in entries.items()} == want
    # an OpenAI file of no published shape needs --openai-heads, which the web form does not set: refused, saying so
    assert "openai_heads" in entries["models/openai.pt"].error
    assert entries["models/flat"].arch == "diffusion" and entries["models/flat"].params > 0
    assert Catalog(str(tmp_path), ["models"], "uploads").find("models/flat", "denoiser") is not None


def test_web_warm_worker_keeps_diffusion_options(lenet, flat, monkeypatch):
    """The web's warm worker memoizes load_smoothing_model: it passes the diffusion options on, and keys on them
    (and on the files inside a diffusers folder), so K-step and one-shot runs never share a model."""
    import certifynet.sampling.run as run_module
    from certifynet.denoise.diffusion import DiffusionOptions
    from certifynet.sampling.engine import Sampler
    from certifynet.web import warm
    monkeypatch.setattr(run_module, "load_smoothing_model", run_module.load_smoothing_model)
    monkeypatch.setattr(Sampler, "_traced_model", Sampler._traced_model)
    warm.install_memos()
    load = run_module.load_smoothing_model
    two = DiffusionOptions(diffusion_steps=2)
    first, _, meta = load(lenet, denoiser_path=flat, sigma=0.5, quiet=True, diffusion_options=two)
    assert meta["diffusion"]["steps"] == 2
    assert load(lenet, denoiser_path=flat, sigma=0.5, quiet=True, diffusion_options=two)[0] is first
    one, _, meta = load(lenet, denoiser_path=flat, sigma=0.5, quiet=True, diffusion_options=DiffusionOptions())
    assert one is not first and meta["diffusion"]["steps"] == 1
    weights = os.path.join(flat, "scheduler_config.json")
    os.utime(weights, ns=(os.stat(weights).st_atime_ns, os.stat(weights).st_mtime_ns + 10**9))
    assert load(lenet, denoiser_path=flat, sigma=0.5, quiet=True, diffusion_options=two)[0] is not first
