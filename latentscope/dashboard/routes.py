"""Plain HTTP routes beside the Dash callbacks: thumbnails, images, decodes, job files, and plotly.js
(Dash's own copy, served with a compile hint for a faster first visit).

Every image route takes an integer id and serves it only when the id is on the
map (Flask's ``int`` converter already refuses anything else, so there is no
path to traverse); job files are looked up by job id and a fixed set of names.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from flask import Response, abort, jsonify, request

from .data import ExplorerData
from .jobs import JobManager

IMAGE_CACHE = "private, max-age=3600"
PLOTLY_JS = "_dash-component-suites/plotly/package_data/plotly.min.js"  # where dash-renderer loads plotly.js from
# V8's explicit compile hint: compile every function of the file on a background thread while it downloads,
# rather than each one on the page's main thread at its first call; plotly.js runs much of itself as it loads,
# and its first evaluation took 1.7 s of main-thread time on a 2-core machine (0.9 s with the hint).
COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"


def _image(data: bytes | None, mimetype: str, cache: str = IMAGE_CACHE) -> Response:
    if data is None:
        abort(404)
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = cache
    return response


@cache
def plotly_js_with_compile_hint() -> tuple[bytes, str]:
    """The script and its ETag, computed once: hashing 4.8 MB for every page load would be waste."""
    import plotly
    from werkzeug.http import generate_etag

    script = COMPILE_HINT + (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    return script, generate_etag(script)


def hover_text(data: ExplorerData, image_id: int, colour: str | None = None) -> str:
    """'id 12 · label cat · score 1.234', and the value of the column the map is coloured by."""
    point = data.point(image_id)
    parts = [f"id {image_id}"]
    if point.get("label"):
        parts.append(f"label {point['label']}")
    score = data.default_score_column
    if score and point.get(score) is not None and math.isfinite(point[score]):
        parts.append(f"score {point[score]:.3f}")
    if colour and colour not in ("none", "label", score) and colour in data.colour_values():
        value = data.column(colour).iloc[int(data.ids_to_rows([image_id])[0])]
        if not (isinstance(value, float) and math.isnan(value)):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"{colour.replace('score:', 'score ')} {shown[:60]}")
    return " · ".join(parts)


def register_routes(server, data: ExplorerData, jobs: JobManager, prefix: str = "/", heatmaps=lambda: None) -> None:
    """Add the routes under ``prefix`` (the Dash app's routes_pathname_prefix). ``heatmaps()`` gives the current
    ``image id -> PNG bytes`` of the anomaly heatmaps, or None."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"

    def thumb(image_id: int):
        return _image(data.thumbnail(image_id), "image/jpeg")

    def original(image_id: int):
        return _image(data.original_png(image_id), "image/png")

    def reconstruction(image_id: int):
        if not data.knows(image_id):
            abort(404)
        return _image(data.reconstruction_png(image_id), "image/png")

    def heatmap(image_id: int):
        render = heatmaps()
        if not data.knows(image_id) or render is None:
            abort(404)
        return _image(render(image_id), "image/png")

    def info(image_id: int):
        if not data.knows(image_id):
            abort(404)
        return jsonify({"id": image_id, "text": hover_text(data, image_id, request.args.get("colour"))})

    def job_file(job_id: str, name: str):
        job = jobs.get(job_id)
        if job is None or job.state != "done" or not hasattr(job.result, "file"):
            abort(404)
        found = job.result.file(name)
        if found is None:
            abort(404)
        payload, mimetype = found
        response = _image(payload, mimetype, cache="private, max-age=600")
        if name.startswith("download"):
            response.headers["Content-Disposition"] = f'attachment; filename="{job.result.download_name(name)}"'
        return response

    def plotly_js():
        """Dash's own copy of plotly.js, with the compile hint; revalidated by ETag like Dash's unversioned files."""
        script, etag = plotly_js_with_compile_hint()
        response = Response(script, mimetype="text/javascript")
        response.set_etag(etag)
        return response.make_conditional(request)

    owned = tuple(prefix + p for p in ("thumb/", "image/", "recon/", "heatmap/", "info/", "jobs/"))

    def refuse_unmatched():
        """Dash answers any unknown path with its page; the explorer is one page, so any other path is a 404."""
        rule = request.url_rule
        if request.path.startswith(owned) and (rule is None or not rule.endpoint.startswith("latentscope_")):
            abort(404)
        if rule is not None and rule.rule == prefix + "<path:path>":  # Dash's catch-all for multi-page apps
            abort(404)
        if any(part in ("..", ".") or "\\" in part or "\x00" in part for part in request.path.split("/")):
            abort(404)

    def missing_dependency(error):
        """Dash answers a request for a script it does not have with an exception (a 500); it is a 404."""
        return Response("not found\n", status=404, mimetype="text/plain")

    from dash.exceptions import DependencyException

    server.register_error_handler(DependencyException, missing_dependency)

    server.before_request(refuse_unmatched)
    for rule, view in (
        ("thumb/<int:image_id>.jpg", thumb),
        ("image/<int:image_id>.png", original),
        ("recon/<int:image_id>.png", reconstruction),
        ("heatmap/<int:image_id>.png", heatmap),
        ("info/<int:image_id>", info),
        ("jobs/<string(length=12):job_id>/<string(maxlength=40):name>", job_file),
        (PLOTLY_JS, plotly_js),  # a fixed path, so it takes precedence over Dash's component-suite rule
    ):
        server.add_url_rule(prefix + rule, endpoint=f"latentscope_{view.__name__}", view_func=view)
