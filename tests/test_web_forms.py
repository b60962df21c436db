"""The web app's models page and certify form (Flask test client, no job runs): uploads and their safety, every
bad value refused in one line before any file exists, the commands of every method and of a group, and a form
that keeps what the user typed."""
import io
import json
import os
import re

import numpy as np
import pytest
import torch

from certifynet.cli import certify as certify_cli
from certifynet.data import get_dataset, image_dataset
from certifynet.models import file_sha256
from certifynet.records import read_rows

flask = pytest.importorskip("flask")

from webtools import (  # noqa: E402,F401
    DATA,
    GALLERY,
    TINY,
    Pickled,
    app_root_fixture,
    ckpt_fixture,
    client_fixture,
    digit,
    files_under,
    form_error,
    job_id,
    jobs_of,
    make_app,
    npy_bytes,
    png_bytes,
    submit,
)


# ------------------------------------------------------------------------------------------------ models page
def test_models_page_lists_metadata(client, app_root):
    html = client.get("/models").get_data(as_text=True)
    sha = file_sha256(str(app_root / "models" / "lenet.pth"))
    assert "models/lenet.pth" in html and sha in html and "lenet" in html and "mnist5k" in html
    assert "431,080" in html          # LeNet's parameter count
    assert "certifynet" in html       # the layout it came from


def test_upload_checkpoint_kept_under_secure_hashed_name(client, app_root, ckpt):
    before = files_under(app_root)
    with open(ckpt, "rb") as f:
        r = client.post("/models", data={"checkpoint": (f, "../../outside.pth")}, content_type="multipart/form-data")
    assert r.status_code == 303
    new = sorted(set(files_under(app_root)) - set(before))
    sha = file_sha256(ckpt)
    assert new == [f"results/web/uploads/{sha[:12]}-outside.pth"]
    assert not (app_root.parent / "outside.pth").exists()
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert f'id="message">uploaded results/web/uploads/{sha[:12]}-outside.pth' in page


def test_pickled_payload_upload_runs_no_code_and_leaves_no_file(client, app_root, tmp_path):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Pickled(marker)}, str(evil))
    before = files_under(app_root)
    with open(evil, "rb") as f:
        r = client.post("/models", data={"checkpoint": (f, "evil.pth")}, content_type="multipart/form-data")
    assert r.status_code == 400
    msg = form_error(r)
    assert "pickled object" in msg and "weights_only" in msg and "\n" not in msg
    assert "evil.pth" in msg and ".upload-" not in msg     # names the user's file, not our temp file
    assert not marker.exists()                              # no code ran
    assert files_under(app_root) == before                  # and nothing was kept, in or outside the upload folder


@pytest.mark.parametrize("name, payload, fragment", [
    ("corrupt.pth", b"\x80\x04garbage" * 50, "corrupt or not a torch file"),
    ("empty.pth", b"", "is empty"),
    ("model.pkl", b"whatever", "not a .pth or .pth.tar checkpoint"),
    ("", b"", "choose a checkpoint file"),
])
def test_bad_checkpoint_uploads_one_line(client, app_root, name, payload, fragment):
    before = files_under(app_root)
    r = client.post("/models", data={"checkpoint": (io.BytesIO(payload), name)}, content_type="multipart/form-data")
    msg = form_error(r)
    assert r.status_code == 400 and fragment in msg and "\n" not in msg
    assert files_under(app_root) == before


def test_upload_size_limit(app_root, ckpt):
    app = make_app(app_root, max_upload_mb=0.5)
    before = files_under(app_root)
    with open(ckpt, "rb") as f:   # 1.7 MB
        r = app.test_client().post("/models", data={"checkpoint": (f, "big.pth")}, content_type="multipart/form-data")
    assert r.status_code == 413 and "larger than the limit of 0.5 MB" in form_error(r)
    assert files_under(app_root) == before
    jobs_of(app).shutdown()


def test_a_checkpoint_without_its_architecture_gets_one_on_the_page(client, app_root, ckpt, monkeypatch):
    """Defect 7: a file whose keys do not tell its architecture said "pass --arch" on a page without that field.
    Now the page has the field; the file is then read so, and its commands pass --arch."""
    import certifynet.models.checkpoint as checkpoint
    monkeypatch.setattr(checkpoint, "infer_arch", lambda state: None)   # keys that fit no arch, or several
    bare = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.save(bare, str(app_root / "models" / "bare.pth"))
    html = client.get("/models").get_data(as_text=True)
    assert "pass --arch" not in html and "pass arch" not in html
    assert "models/bare.pth" in html and 'action="/models/describe"' in html and 'name="arch"' in html
    r = client.post("/models/describe", data={"path": "models/bare.pth", "arch": "lenet", "dataset": "mnist5k"})
    assert r.status_code == 303
    assert "will be read as models/bare.pth: lenet on mnist5k" in client.get(r.headers["Location"]).get_data(True)
    jid = submit(client, model="models/bare.pth")
    sample = jobs_of(client).get(jid)["stages"][0]["options"]
    assert sample["arch"] == "lenet" and sample["dataset"] == "mnist5k"
    r = client.post("/models/describe", data={"path": "../../etc/passwd", "arch": "lenet", "dataset": "mnist5k"})
    assert r.status_code == 400 and "is not a checkpoint listed here" in form_error(r)


def test_delete_an_uploaded_model_only(client, app_root, ckpt):
    with open(ckpt, "rb") as f:
        r = client.post("/models", data={"checkpoint": (f, "mine.pth")}, content_type="multipart/form-data")
    path = r.headers["Location"].split("uploaded=")[1].replace("%2F", "/")
    r = client.post("/models/delete", data={"path": path})
    assert r.status_code == 200 and f"deleted {path}" in r.get_data(as_text=True)
    assert not (app_root / path).exists()
    r = client.post("/models/delete", data={"path": "models/lenet.pth"})   # the user's own folder: never
    assert r.status_code == 400 and (app_root / "models" / "lenet.pth").exists()


# ------------------------------------------------------------------------------------------------ certify form
def _gif():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="GIF")
    return buf.getvalue()


def drawing(stroke=True) -> str:
    import base64

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
    ({"methods": "sequential", "radii": "0.5 -1"}, None, "--radii must be distinct finite numbers > 0"),
    ({"methods": "sequential", "radii": "half"}, None, "--radii must be numbers separated by spaces"),
    ({"input_kind": "upload"}, ("wrong.npy", npy_bytes(np.zeros((1, 32, 32), np.float32))),
     "has shape (1, 32, 32); mnist5k inputs are 1×28×28"),
    ({"input_kind": "upload"}, ("nan.npy", npy_bytes(np.full((28, 28), np.nan, np.float32))),
     "NaN or Inf pixel values"),
    ({"input_kind": "upload"}, ("range.npy", npy_bytes(np.full((28, 28), 255.0, np.float32))), "expected [0, 1]"),
    ({"input_kind": "upload"}, ("obj.npy", npy_bytes(np.array([{"a": 1}], dtype=object))), "not a plain .npy array"),
    ({"input_kind": "upload"}, ("text.png", b"this is not an image"), "cannot be read as a PNG or JPEG image"),
    ({"input_kind": "upload"}, ("anim.png", _gif()), "is a GIF image; upload a PNG or JPEG"),
    ({"input_kind": "upload"}, ("tiny.png", png_bytes(np.zeros((4, 4)))), "at least 8 pixels per side"),
    ({"input_kind": "upload"}, None, "choose an image file to upload"),
    ({"input_kind": "upload", "label": "12"}, ("d.png", png_bytes(np.zeros((28, 28)))),
     "true label must be a class in [0, 9]"),
    ({"input_kind": "upload", "select": "label"}, ("d.png", png_bytes(np.zeros((28, 28)))), "--select label needs"),
    ({"input_kind": "draw", "drawing": drawing(stroke=False)}, None, "the drawing is empty"),
    ({"input_kind": "draw", "drawing": "javascript:alert(1)"}, None, "did not arrive as a PNG"),
]


@pytest.mark.parametrize("fields, image, fragment", BAD_FORMS, ids=[b[2][:40] for b in BAD_FORMS])
def test_bad_form_values_one_line_message(client, app_root, fields, image, fragment):
    data = {**GALLERY, "method": "np", **TINY, **fields}
    if image:
        data["image"] = (io.BytesIO(image[1]), image[0])
    before = files_under(app_root)
    r = client.post("/certify", data=data, content_type="multipart/form-data")
    msg = form_error(r)
    assert r.status_code == 400 and fragment in msg and "\n" not in msg, msg
    assert files_under(app_root) == before           # checked before any file is created
    assert 'name="alpha"' in r.get_data(as_text=True)   # the form is shown again


def test_ten_bad_inputs_counted(client, app_root):
    """The app tells at least ten kinds of bad input apart: every form of BAD_FORMS, posted in turn to one
    server, is refused (400) with its own one-line message, and none queues a job or writes a file. Control:
    the same request made valid is accepted (a redirect to its job), so the refusals are the app's doing."""
    jobs = jobs_of(client)
    base = {**GALLERY, "method": "np", **TINY}
    before, messages = files_under(app_root), []
    for fields, image, _ in BAD_FORMS:
        data = {**base, **fields, **({"image": (io.BytesIO(image[1]), image[0])} if image else {})}
        r = client.post("/certify", data=data, content_type="multipart/form-data")
        assert r.status_code == 400, fields
        messages.append(form_error(r))
    assert all("\n" not in m for m in messages)
    assert len(set(messages)) == len(messages) >= 10, [m for m in messages if messages.count(m) > 1]
    assert jobs.list() == [] and files_under(app_root) == before
    r = client.post("/certify", data=base, content_type="multipart/form-data")
    assert r.status_code == 303 and len(jobs.list()) == 1


@pytest.mark.parametrize("method, extra, expect", [
    ("np", {}, {"q_dist": "none", "iss": None}),
    ("dsrs", {"q_dist": "truncated", "q_percentile": "0.9"}, {"q_dist": "truncated", "q_percentile": "0.9"}),
    ("dsrs", {"q_dist": "rescaled", "q_sigma": "0.2"}, {"q_dist": "rescaled", "q_sigma": 0.2}),
    ("iss-np", {"iss": "relative", "iss_decline": "0.1", "iss_n0": "50"},
     {"iss": "relative", "iss_decline": 0.1, "iss_n0": 50}),
    ("iss-dsrs", {"q_dist": "truncated"}, {"iss": "absolute", "q_dist": "truncated", "q_percentile": "x"}),
])
def test_job_commands_are_valid_cli_for_every_method(client, app_root, method, extra, expect):
    from certifynet.cli import analyze as analyze_cli
    from certifynet.cli import sample as sample_cli
    from certifynet.web.plan import commands
    jid = submit(client, method=method, input_kind="batch", count="4", seed="7", **extra)
    job = jobs_of(client).get(jid)
    (sample, *s_args), (certify, *c_args), (analyze, *a_args) = commands(job["stages"])
    assert (sample, certify, analyze) == ("certifynet-sample", "certifynet-certify", "certifynet-analyze")
    args = sample_cli.build_parser().parse_args(s_args)
    assert (args.model, args.sigma, args.N, args.batch, args.seed, args.max) == \
        ("models/lenet.pth", 0.25, 100, 100, 7, 4)
    # under ISS the pilot picks the class, and sample.py refuses --N0
    assert ("--N0" in s_args) == (not method.startswith("iss")) and (args.N0 == 10 or "iss" in method)
    assert {k: getattr(args, k) for k in expect} == expect
    c = certify_cli.build_parser().parse_args(c_args)
    assert c.method == method and c.counts == args.out and c.alpha == args.alpha == 0.001
    assert analyze_cli.build_parser().parse_args(a_args).logs == [c.out]
    assert job["passes_per_input"] == {"np": 110, "dsrs": 210, "iss-np": 150, "iss-dsrs": 2 * 200}[method]


def test_a_group_shares_counts_where_the_methods_allow(client):
    """NP + DSRS: one counts file sampled with Q, certified twice; ISS-NP + ISS-DSRS: one ISS counts file;
    sequential samples on its own; a batch adds one analyze.py over every log (curves overlaid)."""
    from certifynet.cli import certify as c_cli
    from certifynet.cli import sample as s_cli
    from certifynet.web.plan import commands
    jid = submit(client, methods=["np", "dsrs", "iss-np", "iss-dsrs", "sequential"], input_kind="batch", count="3",
                 radii="0.25 0.5", iss_n0="50")
    job = jobs_of(client).get(jid)
    argv = commands(job["stages"])
    assert [a[0][len("certifynet-"):] for a in argv] == ["sample", "certify", "certify", "sample", "certify", "certify",
                                                         "certify", "analyze"]
    fixed, iss = s_cli.build_parser().parse_args(argv[0][1:]), s_cli.build_parser().parse_args(argv[3][1:])
    assert fixed.q_dist == "truncated" and fixed.iss is None and iss.iss == "absolute" and iss.q_dist == "truncated"
    certs = [c_cli.build_parser().parse_args(a[1:]) for a in (argv[1], argv[2], argv[4], argv[5], argv[6])]
    assert [(c.counts, c.method) for c in certs[:4]] == [(fixed.out, "np"), (fixed.out, "dsrs"), (iss.out, "iss-np"),
                                                          (iss.out, "iss-dsrs")]
    assert certs[4].sequential and certs[4].radii == [0.25, 0.5] and certs[4].model == "models/lenet.pth"
    assert argv[7][1:6] == [c.out for c in certs]
    assert [r["method"] for r in job["runs"]] == ["np", "dsrs", "iss-np", "iss-dsrs", "sequential"]
    assert job["passes_per_input"] == (10 + 2 * 100) + 2 * (50 + 100) + (10 + 100) and not job["passes_exact"]


def test_iss_defaults_fit_n_and_the_cost_is_the_plan(client):
    """Defect 8: the form pre-filled an ISS pilot of 2,000, so any N < 2,000 was refused. Now the pilot field is
    empty with min(2000, N) as its placeholder, the server fills in the same, and N0 is only shown for the
    methods that use it; the estimate is the job's own plan (ISS: at most pilot + N)."""
    html = client.get("/certify").get_data(as_text=True)
    pilot = re.search(r'<input name="iss_n0"[^>]*>', html).group(0)
    assert 'value=""' in pilot and 'placeholder="2000"' in pilot
    assert re.search(r'<label class="for-n0">N0', html)
    fields = {m.group(1): m.group(2) for m in re.finditer(r'<input name="(\w+)" id="\w+"[^>]*value="([^"]*)"', html)}
    jid = submit(client, **{**fields, "methods": "iss-np", "N": "500", "N0": fields["N0"], "input_kind": "gallery"})
    job = jobs_of(client).get(jid)
    assert job["stages"][0]["options"]["iss_n0"] == 500 and "N0" not in job["stages"][0]["options"]
    r = client.post("/api/estimate", data={**GALLERY, "methods": "iss-np", "sigma": "0.25", "N": "500"})
    assert r.get_json() == {"passes_per_input": 1000, "exact": False, "inputs": 1, "total": 1000,
                            "methods": ["iss-np"]}
    r = client.post("/api/estimate", data={**GALLERY, "methods": ["np", "dsrs"], "sigma": "0.25", "N": "1000",
                                           "input_kind": "batch", "count": "20"})
    assert r.get_json()["passes_per_input"] == 100 + 2 * 1000 and r.get_json()["total"] == 20 * 2100


def test_gallery_pages_and_errors_keep_what_was_typed(client):
    """Defect 9 (the server's part; the browser test does the file, the drawing and the model switch): the
    gallery's page links carry every setting, and a refused form comes back with every value, the drawing too."""
    html = client.get("/certify?model=models/lenet.pth&N=777&alpha=0.01&methods=np&methods=dsrs&seed=5").get_data(True)
    nxt = re.search(r'id="next-page" class="pager-link"|href="([^"]+)" id="next-page"', html)
    link = re.search(r'<a href="([^"]+)" id="next-page"', html).group(1).replace("&amp;", "&")
    assert nxt and "N=777" in link and "alpha=0.01" in link and "methods=np" in link and "methods=dsrs" in link
    page2 = client.get("/certify" + link).get_data(as_text=True)
    assert 'value="777"' in page2 and 'value="0.01"' in page2 and 'id="method-dsrs" checked' in page2
    assert "page 2 of" in page2
    r = client.post("/certify", data={**GALLERY, "input_kind": "draw", "drawing": drawing(), "sigma": "0.25",
                                      "N": "321", "alpha": "2"}, content_type="multipart/form-data")
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and 'value="321"' in page and drawing()[:60] in page
    assert 'id="kind-draw" checked' in page


def test_denoiser_listed_and_passed_to_the_cli(client, app_root):
    from certifynet.denoise import get_denoiser, save_denoiser
    save_denoiser(str(app_root / "models" / "drunet.pth"), get_denoiser("drunet_small", 1),
                  sigma={"mode": "fixed", "values": [0.5]}, objective="mse")
    html = client.get("/models").get_data(as_text=True)
    assert "Denoisers" in html and "models/drunet.pth" in html and "drunet" in html
    jid = submit(client, denoiser="models/drunet.pth", method="np")
    assert jobs_of(client).get(jid)["stages"][0]["options"]["denoiser"] == "models/drunet.pth"
    r = client.post("/certify", data={**GALLERY, "model": "models/drunet.pth", **TINY})
    assert "unknown model 'models/drunet.pth'" in form_error(r)     # a denoiser is no classifier


def test_unknown_routes_and_names_are_404(client):
    assert client.get("/jobs/../../etc/passwd").status_code == 404
    assert client.get("/jobs/20260101-000000-abcdef").status_code == 404
    r = client.get("/thumb/mnist5k/99999.png")
    assert r.status_code == 404 and "Traceback" not in r.get_data(as_text=True)


def test_preview_is_what_the_model_sees_and_f_predicts(client):
    """The drop zone's preview: the upload converted as the job converts it, and argmax f(x) without noise."""
    light = 255 - np.kron(digit(1), np.ones((2, 2), np.uint8))          # 56×56, dark digit on white
    r = client.post("/certify/preview", data={**GALLERY, "input_kind": "upload", "sigma": "0.25",
                                              "image": (io.BytesIO(png_bytes(light)), "digit.png")},
                    content_type="multipart/form-data")
    out = r.get_json()
    assert r.status_code == 200 and out["image"].startswith("data:image/png;base64,") and "inverted" in out["note"]
    label = int(get_dataset("mnist5k", "test", DATA)[1][1])
    assert out["prediction"] == out["top"][0][0] and len(out["top"]) == 3 and out["prediction"] == label
    r = client.post("/certify/preview", data={**GALLERY, "idx": "3", "sigma": "0.25"})
    assert r.get_json()["label"] == int(get_dataset("mnist5k", "test", DATA)[3][1])
    r = client.post("/certify/preview", data={**GALLERY, "input_kind": "draw", "drawing": "nope"})
    assert r.status_code == 400 and "did not arrive as a PNG" in r.get_json()["error"]


# ------------------------------------------------------------------------------------------------ inputs → CLI
def test_upload_and_drawing_are_stored_as_cli_inputs(client, app_root):
    light = 255 - np.kron(digit(1), np.ones((2, 2), np.uint8))          # 56×56, dark digit on white
    rgb = np.stack([light] * 3, axis=-1)
    jid = submit(client, method="np", input_kind="upload", image=(io.BytesIO(png_bytes(rgb)), "digit.png"), label="2")
    job = json.loads(open(app_root / "results" / "web" / jid / "job.json").read())
    sample = job["stages"][0]["options"]
    assert sample["image"].endswith("input.png") and sample["image_label"] == 2
    assert "inverted" in job["input"]["note"] and "resized to 28×28" in job["input"]["note"]
    data, _ = image_dataset(str(app_root / sample["image"]), "mnist5k", 2)      # what sample.py --image reads
    x = data[0][0]
    assert x.shape == (1, 28, 28) and x.mean() < 0.3                   # light digit on black, like MNIST

    jid = submit(client, method="np", input_kind="draw", drawing=drawing())
    x = image_dataset(str(app_root / "results" / "web" / jid / "input.png"), "mnist5k")[0][0][0]
    rows, cols = torch.nonzero(x[0] > 0.5, as_tuple=True)
    assert 3 <= rows.min() and rows.max() <= 24                         # fitted into the central 20×20 box


def test_cli_image_flag_equals_the_dataset_input(ckpt, tmp_path, capsys):
    """sample/certify --image with a PNG of test digit 7 gives the row of --start 7 --max 1, bit for bit."""
    png = tmp_path / "seven.png"
    png.write_bytes(png_bytes(digit(7)))
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
    assert os.path.exists(tmp_path / "a.tsv")


def test_the_gallery_and_the_jobs_list_work_without_a_mouse_or_a_reload(client):
    """Defect 11 (the browser test drives both): the gallery's radios were `display: none`, so the keyboard could
    not reach them; the jobs list never refreshed. Now the radios stay focusable (drawn by their image) in a
    labelled radio group, and the list polls the API."""
    import pathlib
    static = pathlib.Path(__file__).resolve().parents[1] / "src" / "certifynet" / "web" / "static"
    css = (static / "style.css").read_text()
    rule = re.search(r"\.thumb input \{([^}]*)\}", css).group(1)
    assert "display: none" not in rule and "opacity: 0" in rule and ".thumb input:focus-visible + img" in css
    html = client.get("/certify").get_data(as_text=True)
    assert 'role="radiogroup"' in html and 'aria-label="test image 0, label' in html
    submit(client, method="np")
    assert 'data-api="/api/jobs"' in client.get("/jobs").get_data(as_text=True)
    assert "setTimeout(refresh" in (static / "app.js").read_text()
