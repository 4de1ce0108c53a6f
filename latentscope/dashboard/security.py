"""Access control for the explorer server.

On loopback no token is needed. Listening on another interface requires a token
(generated when none is given) unless the user passes ``--no-auth``, which
prints a warning. The token may come as ``?token=`` (then kept in an HttpOnly
cookie), a ``Bearer`` header, or HTTP basic auth with any user name.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets

from flask import Response, request

COOKIE = "latentscope_token"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """Refuse an interface name that does not resolve (before the app is built, not at bind time)."""
    import socket

    from ..errors import InputError

    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise InputError(f"--host {host}: not an address or a name this machine can resolve ({exc})") from None


def choose_token(host: str, token: str | None, no_auth: bool, announce=print) -> str | None:
    from ..errors import InputError

    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
            raise InputError(f"--token: use at least {MIN_TOKEN_LENGTH} printable characters without spaces "
                             "(or leave it out and one is generated)")
        return token
    if is_loopback(host):
        return None
    if no_auth:
        announce(f"WARNING: serving on {host} with no authentication: anyone who can reach this port can see your images")
        return None
    return secrets.token_urlsafe(24)


def _presented_token() -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    if header.startswith("Basic "):
        try:
            return base64.b64decode(header[6:]).decode("utf-8", "replace").split(":", 1)[-1]
        except ValueError:
            return ""
    return request.args.get("token") or request.cookies.get(COOKIE, "")


def install_security(server, token: str | None) -> None:
    """Bound request sizes, set safe headers, and (with a token) refuse unauthenticated requests."""
    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    @server.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if token and request.args.get("token") and hmac.compare_digest(request.args["token"], token):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    if not token:
        return

    @server.before_request
    def _require_token():
        if not hmac.compare_digest(_presented_token().encode(), token.encode()):
            return Response("latentscope: a valid token is required (open the URL printed by 'latentscope serve')\n",
                            status=401, mimetype="text/plain", headers={"WWW-Authenticate": 'Basic realm="latentscope"'})
        return None
