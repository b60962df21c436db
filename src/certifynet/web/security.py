"""The app's rules for every request, so that it can listen beyond loopback:

- **Host allowlist** (DNS rebinding): a page of another site whose name resolves to this machine sends its
  own name as Host; only IP literals, `localhost` and the names given with `--allow-host` are answered.
- **Token** (`--token`): when set, every request carries it, as `Authorization: Bearer TOKEN`, as the
  `certifynet_token` cookie, or once as `?token=TOKEN` (which sets the cookie, HttpOnly and SameSite=Strict,
  and redirects to the same page without it, so it leaves the address bar).
- **Cross-site posts** are refused (a page elsewhere cannot start jobs or upload through the browser).
- **No framing** (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`), a CSP that allows only this origin's
  scripts, styles and images, `nosniff`, and no Referer beyond this origin.
"""
from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlencode, urlsplit

from flask import current_app, redirect, request

TOKEN_COOKIE = "certifynet_token"
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'")
HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin", "Cross-Origin-Opener-Policy": "same-origin"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name of a Host header, without its port: 'example.org:8000' → 'example.org', '[::1]:80' → '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str, allowed) -> bool:
    name = host_name(host_header)
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _token_given() -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):].strip()
    return request.cookies.get(TOKEN_COOKIE) or ""


def check_request():
    """before_request: Host, token, cross-site posts (module doc); a refusal is one line on a page."""
    from certifynet.web.views.common import error_page
    cfg = current_app.config
    if not host_allowed(request.host, cfg["CERTIFYNET_ALLOWED_HOSTS"]):
        return error_page(f"refused: this server does not answer to the host name '{host_name(request.host)[:80]}' "
                          f"(a guard against DNS rebinding); start it with --allow-host NAME to allow a name", 400)
    token = cfg.get("CERTIFYNET_TOKEN")
    if token:
        query = request.args.get("token")
        if query is not None and hmac.compare_digest(query.encode(), token.encode()):
            args = {k: v for k, v in request.args.items(multi=True) if k != "token"}
            response = redirect(request.path + ("?" + urlencode(args) if args else ""), 303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return response
        if not hmac.compare_digest(_token_given().encode(), token.encode()):
            return error_page("this server needs its access token: open the address it printed when it started "
                              "(…/?token=…), or send 'Authorization: Bearer TOKEN'", 401)
    origin = request.headers.get("Origin")
    if request.method == "POST" and origin and urlsplit(origin).netloc != request.host:
        return error_page(f"refused a form posted from another site ({origin[:80]})", 403)
    return None


def add_headers(response):
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    return response
