"""A deployable WSGI entry point for the explorer, e.g. behind gunicorn:

    LATENTSCOPE_SCOPE=/data/photos.scope LATENTSCOPE_TOKEN=... gunicorn -w 1 --threads 8 -b 0.0.0.0:8050 apps.wsgi:server

Settings come from the environment: LATENTSCOPE_SCOPE (required), LATENTSCOPE_MAP, LATENTSCOPE_MODEL,
LATENTSCOPE_DEVICE, LATENTSCOPE_TOKEN (required unless LATENTSCOPE_NO_AUTH=1: a server reachable from a network
should not show your images to everyone), LATENTSCOPE_PREFIX (URL path prefix, default /). Use one worker
process with threads: the models and background jobs live in the process.
"""

from __future__ import annotations

import os
import sys

from latentscope.dashboard import create_app


def _settings() -> dict:
    scope = os.environ.get("LATENTSCOPE_SCOPE")
    if not scope:
        sys.exit("apps.wsgi: set LATENTSCOPE_SCOPE to the scope folder to serve")
    token = os.environ.get("LATENTSCOPE_TOKEN") or None
    if token is None and os.environ.get("LATENTSCOPE_NO_AUTH") != "1":
        sys.exit("apps.wsgi: set LATENTSCOPE_TOKEN (or LATENTSCOPE_NO_AUTH=1 to serve without authentication)")
    return {
        "scope": scope,
        "map_name": os.environ.get("LATENTSCOPE_MAP") or None,
        "model": os.environ.get("LATENTSCOPE_MODEL") or None,
        "device": os.environ.get("LATENTSCOPE_DEVICE", "auto"),
        "token": token,
        "prefix": os.environ.get("LATENTSCOPE_PREFIX", "/"),
    }


app = create_app(**_settings())
server = app.server
