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
