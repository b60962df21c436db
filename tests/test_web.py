"""The web app: form checks and upload safety (Flask test client), jobs that run the CLI stages, and a real
headless-Chromium session against a server on a free loopback port."""
import base64
import html as html_lib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from certifynet.cli import certify as certify_cli
from certifynet.data import get_dataset, image_dataset
from certifynet.models import file_sha256, get_architecture, save_checkpoint
from certifynet.records import read_rows

flask = pytest.importorskip("flask")
from certifynet.web import create_app  # noqa: E402
from certifynet.web.jobs import FINAL  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.abspath(os.path.join(ROOT, "data"))   # mnist5k cache shared with the other tests
TINY = {"sigma": "0.25", "N0": "10", "N": "100", "batch": "100"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A LeNet trained for one pass over 1,500 noisy mnist5k digits (a few seconds): non-trivial radii."""
    torch.manual_seed(0)
    train = get_dataset("mnist5k", "train", DATA)
    x = torch.stack([train[i][0] for i in range(1500)])
    y = torch.tensor([int(train[i][1]) for i in range(1500)])
    model = get_architecture("lenet", "mnist5k")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, len(x), 50):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 50] + 0.25 * torch.randn_like(x[i:i + 50])), y[i:i + 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path_factory.mktemp("ckpt") / "lenet_small.pth")
    save_checkpoint(path, model, arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    return path


def _root(tmp_path, ckpt):
    root = tmp_path / "app"
    (root / "models").mkdir(parents=True)
    shutil.copy(ckpt, root / "models" / "lenet.pth")
    return root


@pytest.fixture
def app_root(tmp_path, ckpt):
    return _root(tmp_path, ckpt)


def _app(root, **kw):
    return create_app(str(root), data_dir=DATA, **{"start_jobs": False, **kw})


@pytest.fixture
def client(app_root):
    app = _app(app_root)
    yield app.test_client()
    app.extensions["certifynet"].jobs.shutdown()


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _form_error(resp) -> str:
    html = resp.get_data(as_text=True)
    assert "Traceback" not in html
    found = re.search(r'<p class="error" id="form-error">(.*?)</p>', html, re.S)
    assert found, html[:2000]
    return html_lib.unescape(found.group(1))


def _png(array) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _digit(idx=0):
    """Test digit idx of mnist5k as the uint8 array it was decoded from."""
    x, _ = get_dataset("mnist5k", "test", DATA)[idx]
    return np.round(x[0].numpy() * 255).astype(np.uint8)


class Pickled:
    """Runs code when unpickled by a plain torch.load / pickle.load: writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


# ------------------------------------------------------------------------------------------------ models page
def test_models_page_lists_metadata(client, app_root):
    html = client.get("/models").get_data(as_text=True)
    sha = file_sha256(str(app_root / "models" / "lenet.pth"))
    assert "models/lenet.pth" in html and sha in html and "lenet" in html and "mnist5k" in html
    assert "431,080" in html          # LeNet's parameter count
    assert "certifynet" in html       # the layout it came from


def test_upload_checkpoint_kept_under_secure_hashed_name(client, app_root, ckpt):
    before = _files(app_root)
    with open(ckpt, "rb") as f:
        r = client.post("/models", data={"checkpoint": (f, "../../outside.pth")}, content_type="multipart/form-data")
    assert r.status_code == 303
    new = sorted(set(_files(app_root)) - set(before))
    sha = file_sha256(ckpt)
    assert new == [f"results/web/uploads/{sha[:12]}-outside.pth"]
    assert not (app_root.parent / "outside.pth").exists()
    assert f"{sha[:12]}-outside.pth" in client.get(r.headers["Location"]).get_data(as_text=True)


def test_pickled_payload_upload_runs_no_code_and_leaves_no_file(client, app_root, tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Pickled(marker)}, str(evil))
    before = _files(app_root)
    with open(evil, "rb") as f:
        r = client.post("/models", data={"checkpoint": (f, "evil.pth")}, content_type="multipart/form-data")
    assert r.status_code == 400
    msg = _form_error(r)
    assert "pickled object" in msg and "weights_only" in msg and "\n" not in msg
    assert "evil.pth" in msg and ".upload-" not in msg     # names the user's file, not our temp file
    assert not marker.exists()                              # no code ran
    assert _files(app_root) == before                      # and nothing was kept, in or outside the upload folder


@pytest.mark.parametrize("name, payload, fragment", [
    ("corrupt.pth", b"\x80\x04garbage" * 50, "corrupt or not a torch file"),
    ("empty.pth", b"", "is empty"),
    ("model.pkl", b"whatever", "not a .pth or .pth.tar checkpoint"),
    ("", b"", "choose a checkpoint file"),
])
def test_bad_checkpoint_uploads_one_line(client, app_root, name, payload, fragment):
    before = _files(app_root)
    r = client.post("/models", data={"checkpoint": (io.BytesIO(payload), name)}, content_type="multipart/form-data")
    msg = _form_error(r)
    assert r.status_code == 400 and fragment in msg and "\n" not in msg
    assert _files(app_root) == before


def test_upload_size_limit(app_root, ckpt):
    app = _app(app_root, max_upload_mb=0.5)
    before = _files(app_root)
    with open(ckpt, "rb") as f:   # 1.7 MB
        r = app.test_client().post("/models", data={"checkpoint": (f, "big.pth")}, content_type="multipart/form-data")
    assert r.status_code == 413 and "larger than the limit of 0.5 MB" in _form_error(r)
    assert _files(app_root) == before


# ------------------------------------------------------------------------------------------------ certify form
def _gif():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="GIF")
    return buf.getvalue()


def _drawing(stroke=True) -> str:
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (280, 280), "black")
    if stroke:
        ImageDraw.Draw(im).line([(140, 40), (140, 240)], fill="white", width=20)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


BAD_FORMS = [  # (form fields over a valid gallery request, uploaded image or None, message fragment)
    ({"alpha": "1.5"}, None, "--alpha must be in (0, 1), got 1.5"),
    ({"alpha": "abc"}, None, "--alpha must be a number, got 'abc'"),
    ({"N0": "200", "N": "100"}, None, "--N0 must be in [0, N=100], got 200"),
    ({"sigma": "0"}, None, "--sigma must be > 0"),
    ({"sigma": "nan"}, None, "--sigma must be a number"),
    ({"N": "0"}, None, "--N must be > 0"),
    ({"batch": "0"}, None, "--batch must be >= 1"),
    ({"k": "-1"}, None, "--k must be >= 0, got -1"),
    ({"k": "400"}, None, "--k must be in [0, d/2 - 1]"),
    ({"method": "iss-np", "iss_n0": "500"}, None, "--iss-n0 (the ISS pilot) must be in [1, N=100], got 500"),
    ({"seed": "-3"}, None, "--seed must be >= 0"),
    ({"model": "../../etc/passwd"}, None, "unknown model '../../etc/passwd'"),
    ({"idx": "5000"}, None, "gallery image 5000 is not in the mnist5k test set"),
    ({"idx": ""}, None, "pick a test image from the gallery"),
    ({"input_kind": "batch", "count": "0"}, None, "number of test images must be in [1, 1000]"),
    ({"method": "dsrs", "q_percentile": "1.5"}, None, "--q-percentile must be in (0, 1], got 1.5"),
    ({"method": "iss-dsrs", "q_percentile": "x+"}, None, "x+"),
    ({"method": "bogus"}, None, "method must be one of"),
    ({"input_kind": "upload"}, ("wrong.npy", _npy(np.zeros((1, 32, 32), np.float32))),
     "has shape (1, 32, 32); mnist5k inputs are 1×28×28"),
    ({"input_kind": "upload"}, ("nan.npy", _npy(np.full((28, 28), np.nan, np.float32))), "NaN or Inf pixel values"),
    ({"input_kind": "upload"}, ("range.npy", _npy(np.full((28, 28), 255.0, np.float32))), "expected [0, 1]"),
    ({"input_kind": "upload"}, ("obj.npy", _npy(np.array([{"a": 1}], dtype=object))), "not a plain .npy array"),
    ({"input_kind": "upload"}, ("text.png", b"this is not an image"), "cannot be read as a PNG or JPEG image"),
    ({"input_kind": "upload"}, ("anim.png", _gif()), "is a GIF image; upload a PNG or JPEG"),
    ({"input_kind": "upload"}, ("tiny.png", _png(np.zeros((4, 4)))), "at least 8 pixels per side"),
    ({"input_kind": "upload"}, None, "choose an image file to upload"),
    ({"input_kind": "upload", "label": "12"}, ("d.png", _png(np.zeros((28, 28)))),
     "true label must be a class in [0, 9]"),
    ({"input_kind": "upload", "select": "label"}, ("d.png", _png(np.zeros((28, 28)))), "--select label needs"),
    ({"input_kind": "draw", "drawing": _drawing(stroke=False)}, None, "the drawing is empty"),
    ({"input_kind": "draw", "drawing": "javascript:alert(1)"}, None, "did not arrive as a PNG"),
]


@pytest.mark.parametrize("fields, image, fragment", BAD_FORMS, ids=[b[2][:40] for b in BAD_FORMS])
def test_bad_form_values_one_line_message(client, app_root, fields, image, fragment):
    data = {"model": "models/lenet.pth", "method": "np", "input_kind": "gallery", "dataset": "mnist5k", "idx": "3",
            **TINY, **fields}
    if image:
        data["image"] = (io.BytesIO(image[1]), image[0])
    before = _files(app_root)
    r = client.post("/certify", data=data, content_type="multipart/form-data")
    msg = _form_error(r)
    assert r.status_code == 400 and fragment in msg and "\n" not in msg, msg
    assert _files(app_root) == before           # checked before any file is created
    assert 'name="alpha"' in r.get_data(as_text=True)   # the form is shown again


def test_ten_bad_inputs_counted(client, app_root):
    """The app tells at least ten kinds of bad input apart: every form of BAD_FORMS, posted in turn to one
    server, is refused (400) with its own one-line message, and none queues a job or writes a file. Control:
    the same request made valid is accepted (a redirect to its job), so the refusals are the app's doing."""
    jobs = client.application.extensions["certifynet"].jobs
    base = {"model": "models/lenet.pth", "method": "np", "input_kind": "gallery", "dataset": "mnist5k", "idx": "3",
            **TINY}
    before, messages = _files(app_root), []
    for fields, image, _ in BAD_FORMS:
        data = {**base, **fields, **({"image": (io.BytesIO(image[1]), image[0])} if image else {})}
        r = client.post("/certify", data=data, content_type="multipart/form-data")
        assert r.status_code == 400, fields
        messages.append(_form_error(r))
    assert all("\n" not in m for m in messages)
    assert len(set(messages)) == len(messages) >= 10, [m for m in messages if messages.count(m) > 1]
    assert jobs.list() == [] and _files(app_root) == before
    r = client.post("/certify", data=base, content_type="multipart/form-data")
    assert r.status_code == 303 and len(jobs.list()) == 1


def test_cross_site_posts_and_internal_errors_show_one_line(client, app_root, monkeypatch):
    r = client.post("/certify", data={"model": "models/lenet.pth"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "refused a form posted from another site" in _form_error(r)
    st = client.application.extensions["certifynet"]
    monkeypatch.setattr(st.catalog, "entries", lambda: 1 / 0)
    r = client.get("/models")
    assert r.status_code == 500
    assert _form_error(r) == "internal error (ZeroDivisionError); the server's log has the details"


def test_web_command_warns_beyond_loopback(app_root, monkeypatch, capsys):
    import signal

    import werkzeug.serving

    from certifynet.cli import web as web_cli
    assert web_cli.is_loopback("127.0.0.1") and web_cli.is_loopback("::1") and web_cli.is_loopback("localhost")
    assert not web_cli.is_loopback("0.0.0.0") and not web_cli.is_loopback("192.168.1.5")
    assert web_cli.build_parser().parse_args([]).host == "127.0.0.1" and web_cli.build_parser().parse_args([]).port == 8000

    class Server:   # stands in for werkzeug's: "Ctrl+C" at once
        server_port = 4321

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    made = []
    monkeypatch.setattr(werkzeug.serving, "make_server", lambda host, port, app, threaded: made.append(app) or Server())
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        assert web_cli.main(["--host", "0.0.0.0", "--port", "0", "--root", str(app_root), "--data-dir", DATA]) == 0
        assert web_cli.main(["--port", "70000"]) == 2
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, handler)
    out = capsys.readouterr()
    assert "warning: listening on 0.0.0.0, beyond loopback" in out.err and "http://0.0.0.0:4321/" in out.out
    assert "error: --port must be in [0, 65535], got 70000" in out.err
    assert made and made[0].debug is False


@pytest.mark.parametrize("method, extra, expect", [
    ("np", {}, {"q_dist": "none", "iss": None}),
    ("dsrs", {"q_dist": "truncated", "q_percentile": "0.9"}, {"q_dist": "truncated", "q_percentile": "0.9"}),
    ("dsrs", {"q_dist": "rescaled", "q_sigma": "0.2"}, {"q_dist": "rescaled", "q_sigma": 0.2}),
    ("iss-np", {"iss": "relative", "iss_decline": "0.1", "iss_n0": "50"},
     {"iss": "relative", "iss_decline": 0.1, "iss_n0": 50}),
    ("iss-dsrs", {"q_dist": "truncated"}, {"iss": "absolute", "q_dist": "truncated", "q_percentile": "x"}),
])
def test_job_commands_are_valid_cli_for_every_method(client, app_root, method, extra, expect):
    from certifynet.cli import analyze as analyze_cli, sample as sample_cli
    r = client.post("/certify", data={"model": "models/lenet.pth", "method": method, "input_kind": "batch",
                                      "dataset": "mnist5k", "count": "4", **TINY, "seed": "7", **extra})
    job = client.application.extensions["certifynet"].jobs.get(_job_id(r))
    args = sample_cli.build_parser().parse_args(job["argv"]["sample"])
    assert (args.model, args.sigma, args.N, args.batch, args.seed, args.max) == \
        ("models/lenet.pth", 0.25, 100, 100, 7, 4)
    # under ISS the pilot picks the class, and sample.py refuses --N0
    assert ("--N0" in job["argv"]["sample"]) == (not method.startswith("iss")) and (args.N0 == 10 or "iss" in method)
    assert {k: getattr(args, k) for k in expect} == expect
    c = certify_cli.build_parser().parse_args(job["argv"]["certify"])
    assert c.method == method and c.counts == args.out and c.alpha == args.alpha == 0.001
    assert analyze_cli.build_parser().parse_args(job["argv"]["analyze"]).logs == [c.out]
    assert job["passes_per_input"] == {"np": 110, "dsrs": 210, "iss-np": 150, "iss-dsrs": 2 * 200}[method]


def test_denoiser_listed_and_passed_to_the_cli(client, app_root):
    from certifynet.denoise import get_denoiser, save_denoiser
    save_denoiser(str(app_root / "models" / "drunet.pth"), get_denoiser("drunet_small", 1),
                  sigma={"mode": "fixed", "values": [0.5]}, objective="mse")
    html = client.get("/models").get_data(as_text=True)
    assert "Denoisers" in html and "models/drunet.pth" in html and "drunet" in html
    r = client.post("/certify", data={"model": "models/lenet.pth", "denoiser": "models/drunet.pth", "method": "np",
                                      "input_kind": "gallery", "dataset": "mnist5k", "idx": "0", **TINY})
    argv = client.application.extensions["certifynet"].jobs.get(_job_id(r))["argv"]["sample"]
    assert argv[argv.index("--denoiser") + 1] == "models/drunet.pth"
    r = client.post("/certify", data={"model": "models/drunet.pth", "input_kind": "gallery", "idx": "0", **TINY})
    assert "unknown model 'models/drunet.pth'" in _form_error(r)     # a denoiser is no classifier


def test_unknown_routes_and_names_are_404(client):
    assert client.get("/jobs/../../etc/passwd").status_code == 404
    assert client.get("/jobs/20260101-000000-abcdef").status_code == 404
    r = client.get("/thumb/mnist5k/99999.png")
    assert r.status_code == 404 and "Traceback" not in r.get_data(as_text=True)


# ------------------------------------------------------------------------------------------------ inputs → CLI
def test_upload_and_drawing_are_stored_as_cli_inputs(client, app_root):
    light = 255 - np.kron(_digit(1), np.ones((2, 2), np.uint8))          # 56×56, dark digit on white
    rgb = np.stack([light] * 3, axis=-1)
    r = client.post("/certify", data={"model": "models/lenet.pth", "method": "np", "input_kind": "upload", **TINY,
                                      "image": (io.BytesIO(_png(rgb)), "digit.png"), "label": "2"},
                    content_type="multipart/form-data")
    assert r.status_code == 303, _form_error(r)
    job = json.loads(open(app_root / (r.headers["Location"].replace("/jobs/", "results/web/") + "/job.json")).read())
    sample = job["argv"]["sample"]
    stored = sample[sample.index("--image") + 1]
    assert stored.endswith("input.png") and sample[sample.index("--image-label") + 1] == "2"
    assert "inverted" in job["input"]["note"] and "resized to 28×28" in job["input"]["note"]
    data, _ = image_dataset(str(app_root / stored), "mnist5k", 2)      # what sample.py --image reads
    x = data[0][0]
    assert x.shape == (1, 28, 28) and x.mean() < 0.3                   # light digit on black, like MNIST

    r = client.post("/certify", data={"model": "models/lenet.pth", "method": "np", "input_kind": "draw", **TINY,
                                      "drawing": _drawing()}, content_type="multipart/form-data")
    assert r.status_code == 303, _form_error(r)
    job_dir = app_root / r.headers["Location"].replace("/jobs/", "results/web/")
    x = image_dataset(str(job_dir / "input.png"), "mnist5k")[0][0][0]
    rows, cols = torch.nonzero(x[0] > 0.5, as_tuple=True)
    assert 3 <= rows.min() and rows.max() <= 24                         # fitted into the central 20×20 box


def test_cli_image_flag_equals_the_dataset_input(ckpt, tmp_path, capsys):
    """sample/certify --image with a PNG of test digit 7 gives the row of --start 7 --max 1, bit for bit."""
    png = tmp_path / "seven.png"
    png.write_bytes(_png(_digit(7)))
    label = int(get_dataset("mnist5k", "test", DATA)[7][1])
    common = ["--model", ckpt, "--sigma", "0.25", "--N0", "20", "--N", "300", "--batch", "150"]
    assert certify_cli.main([*common, "--data-dir", DATA, "--start", "7", "--max", "1",
                             "--out", str(tmp_path / "a.tsv")]) == 0
    assert certify_cli.main([*common, "--image", str(png), "--image-label", str(label),
                             "--out", str(tmp_path / "b.tsv")]) == 0
    (a,), (b,) = read_rows(str(tmp_path / "a.tsv"))[1], read_rows(str(tmp_path / "b.tsv"))[1]
    same = lambda row: {k: v for k, v in row.items() if k not in ("idx", "time")}  # noqa: E731
    assert same(a) == same(b)
    meta = json.load(open(tmp_path / "b.tsv.meta.json"))
    assert meta["image_sha256"] == file_sha256(str(png))
    np.save(tmp_path / "bad.npy", np.zeros((3, 28, 28), np.float32))
    capsys.readouterr()
    assert certify_cli.main([*common, "--image", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "c.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "shape (3, 28, 28)" in err[-1] and not (tmp_path / "c.tsv").exists()


# ------------------------------------------------------------------------------------------------ jobs
def _wait(app, job_id, states=FINAL, timeout=240):
    jobs = app.extensions["certifynet"].jobs
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = jobs.get(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {jobs.get(job_id)['state']} after {timeout}s")


def _job_id(resp):
    assert resp.status_code == 303, _form_error(resp)
    return resp.headers["Location"].rsplit("/", 1)[1]


@pytest.mark.e2e
def test_batch_job_writes_the_cli_files_and_survives_a_restart(app_root, monkeypatch, tmp_path, one_thread):
    app = _app(app_root, start_jobs=True, threads=1, workers=2)
    c = app.test_client()
    job_id = _job_id(c.post("/certify", data={"model": "models/lenet.pth", "method": "np", "input_kind": "batch",
                                              "dataset": "mnist5k", "count": "3", **TINY}))
    dsrs_id = _job_id(c.post("/certify", data={"model": "models/lenet.pth", "method": "dsrs", "q_dist": "truncated",
                                               "input_kind": "gallery", "dataset": "mnist5k", "idx": "2", **TINY}))
    shutil.copy(app_root / "models" / "lenet.pth", app_root / "models" / "gone.pth")
    gone_id = _job_id(c.post("/certify", data={"model": "models/gone.pth", "method": "np", "input_kind": "gallery",
                                               "dataset": "mnist5k", "idx": "0", **TINY}))
    os.unlink(app_root / "models" / "gone.pth")     # the CLI stage fails: its one-line error is the job's
    job = _wait(app, job_id)
    assert job["state"] == "done", job
    assert _wait(app, dsrs_id)["state"] == "done"
    failed = _wait(app, gone_id)
    assert failed["state"] == "failed" and failed["error"] == "checkpoint 'models/gone.pth' not found", failed
    html = c.get(f"/jobs/{gone_id}").get_data(as_text=True)
    assert "checkpoint &#39;models/gone.pth&#39; not found" in html and "Traceback" not in html
    folder = app_root / "results" / "web" / job_id
    for name in ("counts.csv", "counts.csv.meta.json", "certify.tsv", "certify.tsv.meta.json",
                 "analysis/certified_accuracy.png", "analysis/table.csv"):
        assert (folder / name).is_file(), name
    meta = json.load(open(folder / "counts.csv.meta.json"))
    assert meta["command"].startswith("scripts/sample.py --model models/lenet.pth") and meta["N"] == 100
    html = c.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'id="summary-table"' in html and 'id="accuracy-plot"' in html and "python scripts/analyze.py" in html
    assert c.get(f"/jobs/{job_id}/files/certify.tsv").get_data(as_text=True).startswith("idx\tlabel\tpredict\tradius")
    assert c.get(f"/jobs/{job_id}/files/job.json").status_code == 404
    status = c.get(f"/jobs/{job_id}/status").get_json()
    assert status["passes"] == status["total"] == 3 * 110 and status["inputs_done"] == 3
    # the log is what the CLI gives for the same settings in one go
    monkeypatch.chdir(app_root)   # one thread (fixture), as the job's worker: the same arithmetic
    assert certify_cli.main(["--model", "models/lenet.pth", "--data-dir", DATA, "--max", "3", "--sigma", "0.25",
                             "--N0", "10", "--N", "100", "--batch", "100", "--out", str(tmp_path / "cli.tsv")]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_rows(str(folder / "certify.tsv"))[1]) == strip(read_rows(str(tmp_path / "cli.tsv"))[1])
    # DSRS on one test digit: q̲_A shown, the radius is certify.py's
    html = c.get(f"/jobs/{dsrs_id}").get_data(as_text=True)
    shown = re.search(r'id="radius" data-value="([^"]+)"', html).group(1)
    assert 'id="qA_lower"' in html and 'id="pA_lower"' in html and "noisy/3.png" in html
    assert shown == _cli_radius(["--model", "models/lenet.pth", "--data-dir", DATA, "--start", "2", "--max", "1",
                                 "--sigma", "0.25", "--N0", "10", "--N", "100", "--batch", "100", "--method", "dsrs",
                                 "--q-dist", "truncated"], tmp_path / "dsrs.tsv")
    assert c.get(f"/jobs/{dsrs_id}/noisy/0.png").mimetype == "image/png"
    app.extensions["certifynet"].jobs.shutdown()
    # a new server on the same folder lists the finished jobs again
    again = _app(app_root)
    assert [j["id"] for j in again.extensions["certifynet"].jobs.list()] == sorted([job_id, dsrs_id, gone_id], reverse=True)
    assert 'id="summary-table"' in again.test_client().get(f"/jobs/{job_id}").get_data(as_text=True)


@pytest.mark.e2e
def test_queue_bound_cancel_and_interrupted_resume(app_root):
    app = _app(app_root, start_jobs=True, queue_size=1, threads=1)
    c = app.test_client()
    long = {"model": "models/lenet.pth", "method": "np", "input_kind": "gallery", "dataset": "mnist5k", "idx": "0",
            "sigma": "0.25", "N": "100000000"}
    first = _job_id(c.post("/certify", data=long))
    _wait(app, first, states=("running",))
    second = _job_id(c.post("/certify", data=long))
    r = c.post("/certify", data=long)
    assert r.status_code == 400 and "the job queue is full (1 jobs waiting)" in _form_error(r)
    c.post(f"/jobs/{second}/cancel")
    assert app.extensions["certifynet"].jobs.get(second)["state"] == "cancelled"
    pid = app.extensions["certifynet"].jobs.get(first)["pid"]
    c.post(f"/jobs/{first}/cancel")
    assert _wait(app, first, timeout=120)["state"] == "cancelled"
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # a job running when the server stops is 'interrupted' on the next start, and can be resumed
    third = _job_id(c.post("/certify", data=long))
    _wait(app, third, states=("running",))
    app.extensions["certifynet"].jobs.shutdown()
    again = _app(app_root)
    assert _wait(again, third, timeout=120)["state"] == "interrupted"
    html = again.test_client().get(f"/jobs/{third}").get_data(as_text=True)
    assert 'id="resume"' in html
    again.test_client().post(f"/jobs/{third}/resume")
    assert again.extensions["certifynet"].jobs.get(third)["state"] == "queued"


# ------------------------------------------------------------------------------------------------ real browser
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")   # as .ci/run finds them
BROWSER_MISSING = ("the browser test needs Debian's 'chromium' and 'chromium-driver' packages "
                   "(apt-get install chromium chromium-driver) and the 'selenium' package (pip install selenium)")


def _driver():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(BROWSER_MISSING)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(BROWSER_MISSING)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture
def server(app_root):
    """scripts/web.py on a free loopback port (--port 0), run from the app folder; yields its base URL."""
    paths = (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    log = open(app_root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "web.py"), "--port", "0", "--data-dir", DATA,
                             "--threads", "1", "--workers", "2"], cwd=app_root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = None, time.time() + 120
    while url is None and proc.poll() is None and time.time() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", (app_root / "server.log").read_text())
        url = found and found.group(1)
        time.sleep(0.2)
    assert url, (app_root / "server.log").read_text()[-2000:]
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    log.close()


def _wait_result(driver, timeout=240):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: d.find_elements(By.ID, "result") or d.find_elements(By.ID, "job-error"))
    assert not driver.find_elements(By.ID, "job-error"), driver.find_element(By.ID, "job-error").text
    return _wait_id(driver, "radius", 5).get_attribute("data-value")


def _cli_radius(argv, out):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the job's worker (--threads 1): the same arithmetic
    try:
        assert certify_cli.main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return read_rows(str(out))[1][0]["radius"]


def _full_page_screenshot(driver, path):
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _wait_id(driver, element_id, timeout=60):
    """The element with this id, once the (next) page has it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.ID, element_id)))


def _submit_job(driver) -> str:
    """Press Certify and return the job page's URL, once the browser is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.find_element(By.ID, "certify-submit").click()
    WebDriverWait(driver, 60).until(lambda d: "/jobs/" in d.current_url)
    return driver.current_url


def _fill(driver, values):
    from selenium.webdriver.common.by import By
    for name, value in values.items():
        el = driver.find_element(By.ID, name)
        el.clear()
        el.send_keys(value)


@pytest.mark.e2e
def test_browser_upload_certify_and_compare_with_cli(server, ckpt, app_root, tmp_path, monkeypatch, one_thread):
    from selenium.webdriver.common.by import By
    driver = _driver()
    try:
        # upload the checkpoint; it is listed with its SHA-256
        driver.get(server + "models")
        driver.find_element(By.ID, "checkpoint-file").send_keys(ckpt)
        driver.find_element(By.ID, "upload-submit").click()
        sha = file_sha256(ckpt)
        assert _wait_id(driver, "message").text.startswith("uploaded results/web/uploads/")
        assert driver.find_elements(By.CSS_SELECTOR, f"tr[data-sha256='{sha}']")
        uploaded = f"results/web/uploads/{sha[:12]}-lenet_small.pth"

        # a pickled payload is refused with the loader's message; it ran nothing and nothing is kept
        marker, evil = tmp_path / "marker.txt", tmp_path / "evil.pth"
        torch.save({"state_dict": {}, "x": Pickled(marker)}, str(evil))
        before = _files(app_root)
        driver.find_element(By.ID, "checkpoint-file").send_keys(str(evil))
        driver.find_element(By.ID, "upload-submit").click()
        assert "pickled object" in _wait_id(driver, "form-error").text
        assert not marker.exists() and _files(app_root) == before

        # certify gallery digit 5 and an uploaded PNG (test digit 9); both jobs run at once (--workers 2)
        settings = {"sigma": "0.25", "N0": "20", "N": "400", "batch": "200", "seed": "3"}
        driver.get(server + f"certify?model={uploaded}")
        _fill(driver, settings)
        driver.find_element(By.CSS_SELECTOR, "label.thumb[title^='#5,']").click()
        gallery_job = _submit_job(driver)
        png = tmp_path / "digit9.png"
        png.write_bytes(_png(_digit(9)))
        driver.get(server + f"certify?model={uploaded}")
        _fill(driver, settings)
        driver.find_element(By.ID, "kind-upload").click()
        driver.find_element(By.ID, "image-file").send_keys(str(png))
        upload_job = _submit_job(driver)
        # meanwhile: what certify.py gives for the same model, seed and settings (sample and certify in one go)
        args = [x for k, v in settings.items() for x in (f"--{k}", v)]
        expected_gallery = _cli_radius(["--model", ckpt, "--data-dir", DATA, "--start", "5", "--max", "1", *args],
                                       tmp_path / "gallery.tsv")
        expected_upload = _cli_radius(["--model", ckpt, "--image", str(png), *args], tmp_path / "upload.tsv")
        driver.get(gallery_job)
        radius = _wait_result(driver)
        assert radius == expected_gallery and float(radius) > 0
        driver.get(upload_job)
        radius = _wait_result(driver)
        assert radius == expected_upload
        _full_page_screenshot(driver, tmp_path / "result.png")
        assert (tmp_path / "result.png").stat().st_size > 10_000
        monkeypatch.chdir(app_root)
        for line in driver.find_element(By.ID, "cli-command").text.splitlines():
            _, script, *argv = shlex.split(line)    # python scripts/<stage>.py ARGS, outputs redirected to tmp
            argv = [str(tmp_path / f"replay_{os.path.basename(a)}") if i and argv[i - 1] in ("--out", "--counts")
                    else a for i, a in enumerate(argv)]
            stage = os.path.basename(script)[:-len(".py")]
            assert importlib.import_module(f"certifynet.cli.{stage}").main(argv) == 0
        assert read_rows(str(tmp_path / "replay_certify.tsv"))[1][0]["radius"] == radius

        # a bad α comes back as its one-line message on the form
        driver.get(server + f"certify?model={uploaded}")
        _fill(driver, {**settings, "alpha": "1.5"})
        driver.find_element(By.CSS_SELECTOR, "label.thumb[title^='#1,']").click()
        driver.find_element(By.ID, "certify-submit").click()
        assert _wait_id(driver, "form-error").text == "--alpha must be in (0, 1), got 1.5"

        # while a 100-digit batch job runs, the models page keeps answering (20 requests, each within the 60 s
        # timeout) and the job keeps running; the latencies are printed, not asserted (they measure the load)
        driver.get(server + f"certify?model={uploaded}")
        driver.find_element(By.ID, "kind-batch").click()
        _fill(driver, {"count": "100"})   # the CLI's defaults: N0 = 100, N = 100,000 per digit
        status_url = _submit_job(driver) + "/status"
        status = lambda: json.load(urllib.request.urlopen(status_url, timeout=60))  # noqa: E731
        deadline = time.time() + 180
        while status()["passes"] < 100 + 2 * 1000 and time.time() < deadline:   # N0, then two batches of N
            time.sleep(0.25)
        start = status()
        assert start["state"] == "running" and start["passes"] >= 2100, start
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            with urllib.request.urlopen(server + "models", timeout=60) as r:
                assert r.status == 200 and b"lenet_small.pth" in r.read()
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
        end = status()
        while end["passes"] == start["passes"] and time.time() < deadline:   # progress.json: at most every 0.5 s
            time.sleep(0.25)
            end = status()
        assert end["state"] == "running" and end["passes"] > start["passes"], (start, end)   # it ran all along
        print(f"models page during a 100-digit batch job: median {statistics.median(latencies) * 1e3:.1f} ms, "
              f"max {max(latencies) * 1e3:.1f} ms (job at {start['passes']:,} → {end['passes']:,} forward passes)")
        driver.find_element(By.ID, "cancel").click()
        deadline = time.time() + 30
        while status()["state"] != "cancelled" and time.time() < deadline:
            time.sleep(0.25)
        assert status()["state"] == "cancelled"
    finally:
        driver.quit()

