"""The explorer: ``create_app(scope)`` builds the Dash app; ``serve(scope)`` runs it.

Layout (:mod:`.layout`), callbacks (:mod:`.callbacks`), HTTP routes
(:mod:`.routes`), background jobs (:mod:`.jobs`) and access control
(:mod:`.security`) live in separate modules; :class:`.data.ExplorerData` reads
the scope.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

from ..errors import InputError, LatentscopeError
from ..scope import Scope

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("assets")
DEFAULT_PORT = 8050
PORTS_TRIED = 20  # without a port given, the first free one from DEFAULT_PORT on (a second explorer, a rerun demo)


def create_app(
    scope: Scope | str | Path,
    map_name: str | None = None,
    model: str | None = None,
    device: str = "auto",
    token: str | None = None,
    prefix: str = "/",
    density_threshold: int | None = None,
):
    """Build the Dash app for a scope (which must have a map). ``token`` protects every route.

    Maps of more than ``density_threshold`` points (default a million) are drawn as a density image,
    with the points themselves appearing once the view is zoomed in to at most 100,000 of them.
    """
    from dash import Dash

    from .callbacks import Callbacks, register
    from .data import ExplorerData
    from .jobs import JobManager
    from .layout import build_layout
    from .routes import PLOTLY_JS, register_routes
    from .security import install_security

    from .data import DENSITY_THRESHOLD

    data = ExplorerData(scope, map_name=map_name, model=model, device=device,
                        density_threshold=DENSITY_THRESHOLD if density_threshold is None else density_threshold)
    app = Dash(
        __name__,
        assets_folder=str(ASSETS),
        title=f"latentscope · {data.scope.path.name}",
        update_title=None,
        requests_pathname_prefix=prefix,
        routes_pathname_prefix=prefix,
        serve_locally=True,
    )
    app.index_string = _load_plotly_early(app.index_string, prefix + PLOTLY_JS)
    jobs = JobManager()
    callbacks = Callbacks(data, jobs, heatmaps=_heatmaps(data))
    page = SimpleNamespace(layout=build_layout(data), lock=threading.Lock())

    def layout():
        """The page, built again when another process wrote to the scope since (a new score, map, metadata or
        images), so reloading the browser shows what is on disk."""
        with page.lock:
            if data.changed():
                log.info("%s changed on disk; reading it again", data.scope.path)
                try:
                    data.reload()
                except LatentscopeError as exc:  # e.g. its last map was removed: keep showing what was read before
                    log.warning("%s: %s; showing the scope as it was", data.scope.path, exc)
                    return page.layout
                callbacks.reload(_heatmaps(data))
                page.layout = build_layout(data)
            return page.layout

    app.layout = layout
    register(app, callbacks)
    register_routes(app.server, data, jobs, prefix=prefix, heatmaps=lambda: callbacks.heatmaps)
    install_security(app.server, token)
    app.latentscope = SimpleNamespace(data=data, jobs=jobs, callbacks=callbacks, layout=layout)
    return app


def _load_plotly_early(index_string: str, script_url: str) -> str:
    """Load plotly.js from the page's first moment, as a deferred script. dcc.Graph asks for it only once the
    layout has arrived and the map mounts; on a first visit its 4.8 MB download, compile and evaluation then lay
    on the critical path. Deferred, it downloads and compiles on a background thread while Dash's scripts run,
    and evaluates while the layout is fetched. Until it has run, ``window.Plotly`` is a thenable that settles
    with the script, so a Graph that mounts first waits for it instead of loading a second copy."""
    tags = f"""<script id="plotly-js" src="{script_url}" defer></script>
        <script>{PLOTLY_PENDING_JS}</script>"""
    return index_string.replace("{%css%}", "{%css%}\n        " + tags, 1)


# dcc.Graph loads plotly with ``Promise.resolve(window.Plotly || <its own script tag>)``; plotly.js replaces
# window.Plotly with itself when it runs.
PLOTLY_PENDING_JS = """(function () {
            const script = document.getElementById('plotly-js'), waiting = [];
            let outcome = null;
            const settle = (ok, value) => {
                outcome = [ok, value];
                waiting.splice(0).forEach(([resolve, reject]) => (ok ? resolve : reject)(value));
            };
            script.addEventListener('load', () => settle(true));
            script.addEventListener('error', () => settle(false, new Error('plotly.js did not load from ' + script.src)));
            window.Plotly = window.Plotly || {then(resolve, reject) {
                if (outcome) { (outcome[0] ? resolve : reject)(outcome[1]); } else { waiting.push([resolve, reject]); }
            }};
        })();"""


def _heatmaps(data):
    """``image id -> PNG bytes`` of the default score's heatmap overlays, or None when it has none."""
    column = data.default_score_column
    if column is None:
        return None
    from ..anomaly.heatmaps import heatmap_renderer

    return heatmap_renderer(data.scope, column[len("score:"):], model=data.model_reference, device=data.device)


def _one_thread_per_request_on_cpu() -> None:
    """The server already runs requests and jobs in parallel threads; letting every torch call also spread over
    all cores oversubscribes the CPU (OpenMP threads spin-waiting on each other), which made concurrent requests
    up to 20x slower in the load test. One intra-op thread per request is the faster choice for a server."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)


def _warm_up_in_background(data) -> None:
    """Prepare for the first walk while the page loads, at a lower priority than the requests."""
    from ..loader import lower_thread_priority

    def warm() -> None:
        lower_thread_priority()
        try:
            data.warm_up()
        except Exception as exc:  # the first walk then does the work itself, and reports any real error
            log.warning("warming up for walks failed: %s", exc)

    threading.Thread(target=warm, name="latentscope-warm-up", daemon=True).start()


def serve(scope, host: str = "127.0.0.1", port: int | None = None, token: str | None = None, no_auth: bool = False,
          debug: bool = False, threads: int = 8, announce=print, **app_options) -> None:
    """Serve the explorer. Off loopback a token is required unless ``no_auth`` (then a warning is printed).
    Without ``port``, the first free port from :data:`DEFAULT_PORT` on; the URL is announced once it listens."""
    from .security import check_host, choose_token, is_loopback

    check_host(host)
    token = choose_token(host, token, no_auth, announce)
    _one_thread_per_request_on_cpu()
    app = create_app(scope, token=token, **app_options)
    if debug:  # Flask's development server binds only when it runs: check that it can
        server = None
        _, port = _first_free_port(host, port, lambda p: socket.create_server(
            (host, p), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close())
    else:
        from waitress import create_server

        server, port = _first_free_port(host, port, lambda p: create_server(app.server, host=host, port=p, threads=threads))
    _warm_up_in_background(app.latentscope.data)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if token and not is_loopback(host):
        url += f"?token={token}"
    try:
        announce(f"latentscope explorer running at {url}  (Ctrl-C to stop)")
        if server is None:
            app.run(host=host, port=port, debug=True)
        else:
            server.run()
    finally:
        if server is not None:
            server.close()


def _first_free_port(host: str, port: int | None, listen):
    """``(listen(p), p)`` for ``port``, or without one for the first port from :data:`DEFAULT_PORT` on that is not
    in use; a one-line :class:`InputError` when it cannot listen."""
    candidates = [port] if port is not None else range(DEFAULT_PORT, DEFAULT_PORT + PORTS_TRIED)
    for candidate in candidates:
        try:
            return listen(candidate), candidate
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and candidate != candidates[-1]:
                continue
            if exc.errno == errno.EADDRINUSE:
                where = (f"port {port} is" if port is not None
                         else f"ports {DEFAULT_PORT}-{candidates[-1]} are")
                raise InputError(f"{host}: {where} in use (another explorer or program); choose a free one with "
                                 "--port") from None
            raise InputError(f"{host}:{candidate}: cannot listen ({exc.strerror or exc})") from None
