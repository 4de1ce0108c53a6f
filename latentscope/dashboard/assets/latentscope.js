// The image id of a plotly event point. Dash's Graph drops customdata sent as a binary array from its event
// data, so it is read from plotly's decoded traces.
window.latentscopePointId = function (point) {
    const gd = document.querySelector('#map .js-plotly-plot');
    if (!gd || !gd._fullData || !point) { return null; }
    const trace = gd._fullData[point.curveNumber];
    if (!trace || !trace.customdata) { return null; }
    const id = trace.customdata[point.pointNumber];
    return (typeof id === 'number' && isFinite(id)) ? id : null;
};

// Marks over the map (the inspected point, the walk's waypoints, its path and current frame), drawn in an SVG layer
// instead of as plotly traces or shapes: plotly re-computes every trace when any trace or shape moves, which
// freezes the page for most of a second on a map of 100,000 points.
window.latentscopeMarks = {focus: [], waypoints: [], path: [], frame: 0, ranges: null};

function latentscopeMarkLayer(gd) {
    let svg = gd.querySelector('svg.mark-layer');
    if (!svg) {
        svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
        svg.setAttribute('class', 'mark-layer');
        gd.querySelector('.svg-container').appendChild(svg);
        // redrawn after every plotly redraw, and while panning or zooming (with the ranges as they change)
        gd.on('plotly_afterplot', () => { window.latentscopeMarks.ranges = null; window.latentscopeDrawMarks(); });
        gd.on('plotly_relayouting', (event) => { window.latentscopeMarks.ranges = event; window.latentscopeDrawMarks(); });
    }
    return svg;
}

function latentscopeAxisRange(axis, name, event) {
    if (event && event[name + '.range[0]'] !== undefined) { return [event[name + '.range[0]'], event[name + '.range[1]']]; }
    if (event && event[name + '.range']) { return event[name + '.range']; }
    return axis.range;
}

window.latentscopeDrawMarks = function () {
    const gd = document.querySelector('#map .js-plotly-plot');
    if (!gd || !gd._fullLayout || !gd._fullLayout.xaxis || !gd.querySelector('.svg-container')) { return; }
    const svg = latentscopeMarkLayer(gd), marks = window.latentscopeMarks, layout = gd._fullLayout, box = layout._size;
    const [x0, x1] = latentscopeAxisRange(layout.xaxis, 'xaxis', marks.ranges).map(Number);
    const [y0, y1] = latentscopeAxisRange(layout.yaxis, 'yaxis', marks.ranges).map(Number);
    const at = (p) => [box.l + (p[0] - x0) / (x1 - x0) * box.w, box.t + (y1 - p[1]) / (y1 - y0) * box.h]
        .map((v) => v.toFixed(1));
    const path = marks.path.map(at), frame = path[marks.frame];
    const circle = (p, cls, r, id) => `<circle class="${cls}" cx="${p[0]}" cy="${p[1]}" r="${r}"` +
        (id === undefined ? '' : ` data-id="${id}"`) + '/>';
    let body = '';
    if (path.length) {
        body += `<polyline class="walk-path" points="${path.map((p) => p.join(',')).join(' ')}"/>`;
        body += path.map((p) => circle(p, 'walk-step', 2.5)).join('');
    }
    marks.waypoints.forEach((w, i) => {
        const p = at(w);
        body += circle(p, 'waypoint', 7.5, w[2]) + `<text class="waypoint-label" x="${p[0]}" y="${p[1] - 12}">${i + 1}</text>`;
    });
    marks.focus.forEach((f) => { body += circle(at(f), 'focus', 9, f[2]); });
    if (frame) { body += circle(frame, 'walk-frame', 6.5); }
    svg.setAttribute('width', layout.width);
    svg.setAttribute('height', layout.height);
    svg.innerHTML = `<defs><clipPath id="mark-clip"><rect x="${box.l}" y="${box.t}" width="${box.w}" height="${box.h}"/>` +
        `</clipPath></defs><g clip-path="url(#mark-clip)">${body}</g>`;
};

// Update some of the marks (focus and waypoints: [[x, y, id], ...]; path: [[x, y], ...]; frame: index) and redraw.
window.latentscopeShowMarks = function (update) {
    Object.assign(window.latentscopeMarks, update);
    window.latentscopeDrawMarks();
    return window.latentscopeMarks.frame;
};

// WebGL points at the screen's own resolution. Plotly draws them at twice the page's pixels by default
// (plotGlPixelRatio 2): four times the work of every redraw, for nothing on a screen of devicePixelRatio 1
// (100,000 points with software WebGL on 2 cores: 0.4 s to plot and 0.6 s to raster instead of 0.8 + 1.2 s).
(function () {
    const configure = () => {
        if (!window.Plotly || !window.Plotly.setPlotConfig) { return false; }
        window.Plotly.setPlotConfig({plotGlPixelRatio: Math.min(4, Math.max(1, window.devicePixelRatio || 1))});
        return true;
    };
    if (configure()) { return; }
    // The page loads plotly.js as a deferred script, and the map draws once that script's load handler has let
    // dcc.Graph go on; a capturing listener on the document runs before that handler.
    const onLoad = (event) => {
        if (event.target.tagName === 'SCRIPT' && configure()) { document.removeEventListener('load', onLoad, true); }
    };
    document.addEventListener('load', onLoad, true);
})();
