"""The web app beyond loopback: the Host allowlist (DNS rebinding), the optional token, no framing, no text of
the query string in a banner, no cross-site posts, one-line errors; and the command that starts it."""
import signal
import socket

import pytest
import torch

flask = pytest.importorskip("flask")

from webtools import (  # noqa: E402,F401
    DATA,
    GALLERY,
    TINY,
    app_root_fixture,
    ckpt_fixture,
    client_fixture,
    form_error,
    jobs_of,
    make_app,
    submit,
)

PAGES = ("/models", "/certify", "/jobs", "/api/jobs", "/nowhere")


def test_only_known_host_names_are_answered(app_root):
    """Defect 10: the Host header was not checked, so a page of another site whose name resolves to 127.0.0.1
    (DNS rebinding) could drive the app. Now only IP addresses, localhost and --allow-host names are answered."""
    app = make_app(app_root, allowed_hosts=["lab-box.local"])
    c = app.test_client()
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "10.0.0.7", "lab-box.local:80"):
        assert c.get("/models", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "lab-box.local.evil.example"):
        r = c.get("/models", headers={"Host": host})
        assert r.status_code == 400 and "does not answer to the host name" in form_error(r), host
    r = c.post("/api/jobs", json={**GALLERY, **TINY}, headers={"Host": "evil.example"})
    assert r.status_code == 400 and "DNS rebinding" in r.get_json()["error"] and jobs_of(app).list() == []
    jobs_of(app).shutdown()


def test_pages_cannot_be_framed(client):
    """Defect 10: pages could be framed (clickjacking). Every answer now says DENY, in both headers."""
    for path in PAGES:
        r = client.get(path)
        assert r.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_no_query_text_in_a_banner(client):
    """Defect 10: `?message=` and `?uploaded=` put any text into the app's banners. Now a banner names only what
    the server knows (a listed checkpoint), and a refusal is rendered, never carried in the URL."""
    evil = "the server was moved: log in at evil.example"
    for url in (f"/models?uploaded={evil}", f"/models?described={evil}", f"/models?message={evil}"):
        assert evil not in client.get(url).get_data(as_text=True), url
    jid = submit(client, method="np")
    assert evil not in client.get(f"/jobs/{jid}?message={evil}").get_data(as_text=True)
    assert "uploaded models/lenet.pth" in client.get("/models?uploaded=models/lenet.pth").get_data(as_text=True)


def test_token_is_needed_for_every_request(app_root):
    """--token: without it every request is refused (401); `?token=` once sets an HttpOnly, SameSite=Strict cookie
    and sends the browser to the same page without it; API clients send `Authorization: Bearer`."""
    token = "correct-horse-battery"
    app = make_app(app_root, token=token)
    c = app.test_client()
    for path in PAGES + ("/static/app.js", "/thumb/mnist5k/0.png"):
        r = c.get(path)
        assert r.status_code == 401 and "needs its access token" in r.get_data(as_text=True), path
    assert c.get(f"/models?token={token}x").status_code == 401
    r = c.get(f"/certify?model=models/lenet.pth&token={token}")
    assert r.status_code == 303 and r.headers["Location"] == "/certify?model=models%2Flenet.pth"
    cookie = r.headers["Set-Cookie"]
    assert f"certifynet_token={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert c.get("/models").status_code == 200                                   # the cookie from now on
    api = app.test_client()
    assert api.get("/api/jobs").status_code == 401
    assert api.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).get_json() == {"jobs": []}
    with pytest.raises(Exception, match="at least 8 characters"):
        make_app(app_root.parent, token="short")
    jobs_of(app).shutdown()


def test_a_banner_warns_beyond_loopback(app_root):
    app = make_app(app_root, listen="0.0.0.0")
    html = app.test_client().get("/models").get_data(as_text=True)
    assert 'id="public-warning"' in html and "anyone who reaches this port" in html
    jobs_of(app).shutdown()
    app = make_app(app_root, listen="0.0.0.0", token="a-long-enough-token")
    html = app.test_client().get("/models?token=a-long-enough-token", follow_redirects=True).get_data(as_text=True)
    assert 'id="public-warning"' in html and "every request needs its access token" in html
    jobs_of(app).shutdown()
    assert 'id="public-warning"' not in make_app(app_root.parent / "x").test_client().get("/models").get_data(True)


def test_cross_site_posts_and_internal_errors_show_one_line(client, monkeypatch):
    r = client.post("/certify", data={"model": "models/lenet.pth"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "refused a form posted from another site" in form_error(r)
    r = client.post("/api/jobs", data={**GALLERY, **TINY}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and jobs_of(client).list() == []
    st = client.application.extensions["certifynet"]
    monkeypatch.setattr(st.catalog, "entries", lambda: 1 / 0)
    r = client.get("/models")
    assert r.status_code == 500
    assert form_error(r) == "internal error (ZeroDivisionError); the server's log has the details"


# ------------------------------------------------------------------------------------------------ the command
class _Server:   # stands in for werkzeug's: "Ctrl+C" at once
    server_port = 4321

    def serve_forever(self):
        raise KeyboardInterrupt

    def server_close(self):
        pass


def _main(web_cli, argv):
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    try:
        return web_cli.main(argv)
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, handler)


def test_web_command_addresses_warnings_and_refusals(app_root, monkeypatch, capsys):
    """Defect 11: an IPv6 address was printed as http://::1:8767/ and a busy port ended in `error: … : 1`."""
    import werkzeug.serving

    from certifynet.cli import web as web_cli
    from certifynet.web.security import is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    defaults = web_cli.build_parser().parse_args([])
    assert defaults.host == "127.0.0.1" and defaults.port == 8000
    made = []
    monkeypatch.setattr(werkzeug.serving, "make_server",
                        lambda host, port, app, threaded: made.append(app) or _Server())
    monkeypatch.delenv(web_cli.TOKEN_ENV, raising=False)
    root = ["--root", str(app_root), "--data-dir", DATA, "--port", "0"]
    assert _main(web_cli, ["--host", "0.0.0.0", *root]) == 0
    out = capsys.readouterr()
    assert "warning: listening on 0.0.0.0, beyond loopback" in out.err and "http://0.0.0.0:4321/" in out.out
    assert made[-1].debug is False
    assert _main(web_cli, ["--host", "::1", *root, "--token", "auto"]) == 0
    out = capsys.readouterr().out
    assert "http://[::1]:4321/?token=" in out and len(out.split("?token=")[1].split()[0]) >= 16
    assert _main(web_cli, ["--port", "70000"]) == 2
    assert "error: --port must be in [0, 65535], got 70000" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.undo()
        assert _main(web_cli, ["--root", str(app_root), "--data-dir", DATA, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot listen on 127.0.0.1:{port}: the port is in use (another server?)"]
