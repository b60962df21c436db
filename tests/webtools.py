"""What the web app's tests share: a small trained LeNet (one per session), an app folder holding it, the app on
the Flask test client, jobs run in the test's own process, and the small readers of pages and files."""
from __future__ import annotations

import html as html_lib
import io
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from certifynet.data import get_dataset
from certifynet.models import get_architecture, save_checkpoint

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.abspath(os.path.join(ROOT, "data"))   # mnist5k cache shared with the other tests
TINY = {"sigma": "0.25", "N0": "10", "N": "100", "batch": "100"}
GALLERY = {"model": "models/lenet.pth", "input_kind": "gallery", "dataset": "mnist5k", "idx": "3"}


# The fixtures are named by `name=`, so that a test module imports them (`from webtools import ckpt_fixture`) without
# its tests' parameters shadowing the imported names.
@pytest.fixture(scope="session", name="ckpt")
def ckpt_fixture(tmp_path_factory):
    """A LeNet trained for one pass over 1,500 noisy mnist5k digits (a few seconds): non-trivial radii."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    train = get_dataset("mnist5k", "train", DATA)
    x = torch.stack([train[i][0] for i in range(1500)])
    y = torch.tensor([int(train[i][1]) for i in range(1500)])
    model = get_architecture("lenet", "mnist5k")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, len(x), 50):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 50] + 0.25 * torch.randn_like(x[i:i + 50])),
                                                 y[i:i + 50])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.random.set_rng_state(state)
    path = str(tmp_path_factory.mktemp("ckpt") / "lenet_small.pth")
    save_checkpoint(path, model, arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    return path


def make_root(tmp_path, ckpt):
    root = tmp_path / "app"
    (root / "models").mkdir(parents=True)
    shutil.copy(ckpt, root / "models" / "lenet.pth")
    return root


@pytest.fixture(name="app_root")
def app_root_fixture(tmp_path, ckpt):
    return make_root(tmp_path, ckpt)


def make_app(root, **kw):
    from certifynet.web import create_app
    return create_app(str(root), data_dir=DATA, **{"start_jobs": False, "threads": 1, **kw})


@pytest.fixture(name="client")
def client_fixture(app_root):
    app = make_app(app_root)
    yield app.test_client()
    app.extensions["certifynet"].jobs.shutdown()


def jobs_of(app_or_client):
    app = getattr(app_or_client, "application", app_or_client)
    return app.extensions["certifynet"].jobs


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def form_error(resp) -> str:
    """The one-line error a page shows (the form's, or the error page's)."""
    html = resp.get_data(as_text=True)
    assert "Traceback" not in html
    found = re.search(r'<p class="error" id="form-error">(.*?)</p>', html, re.S)
    assert found, html[:2000]
    return html_lib.unescape(found.group(1))


def png_bytes(array) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def digit(idx=0):
    """Test digit idx of mnist5k as the uint8 array it was decoded from."""
    x, _ = get_dataset("mnist5k", "test", DATA)[idx]
    return np.round(x[0].numpy() * 255).astype(np.uint8)


def job_id(resp) -> str:
    assert resp.status_code == 303, form_error(resp)
    return resp.headers["Location"].rsplit("/", 1)[1]


def submit(client, **fields) -> str:
    """POST the certify form (a gallery digit, tiny N, unless `fields` say otherwise); the new job's id."""
    return job_id(client.post("/certify", data={**GALLERY, **TINY, **fields}, content_type="multipart/form-data"))


def run(client, jid) -> dict:
    """Run a waiting job in this process, one thread (the worker's arithmetic); the finished job."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return jobs_of(client).run_inline(jid)
    finally:
        torch.set_num_threads(threads)


def wait(app, jid, states=("done", "failed", "cancelled", "interrupted"), timeout=240):
    jobs = jobs_of(app)
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = jobs.get(jid)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {jid} still {jobs.get(jid)['state']} after {timeout}s")


class Pickled:
    """Runs code when unpickled by a plain torch.load / pickle.load: writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)
