"""``latentscope serve SCOPE``: open the explorer."""

from __future__ import annotations

import argparse

from .common import add_device_options, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="explore a scope in the browser",
        description="Serve the explorer for a scope (it needs a map: run 'latentscope project' first). It listens on "
        "127.0.0.1 unless --host says otherwise; on other interfaces a token is required unless --no-auth.",
    )
    parser.add_argument("scope", help="scope folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=positive_int,
                        help="port to listen on (default: the first free one from 8050 on)")
    parser.add_argument("--map", dest="map_name", help="map to show (default: the first)")
    parser.add_argument("--model", help="decode with this model instead of the one recorded in the scope")
    parser.add_argument("--token", help="access token required from browsers (default: generated when --host is not loopback)")
    parser.add_argument("--no-auth", action="store_true", help="serve on a non-loopback --host without a token (not recommended)")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (development only; never on a network)")
    add_device_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..dashboard import serve
    from ..errors import InputError

    if args.port is not None and args.port > 65535:
        raise InputError(f"--port {args.port}: must be at most 65535")
    serve(args.scope, host=args.host, port=args.port, token=args.token, no_auth=args.no_auth, debug=args.debug,
          map_name=args.map_name, model=args.model, device=args.device)
    return 0
