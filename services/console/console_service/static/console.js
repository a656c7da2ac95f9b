// The overview's lag chart: uPlot (vendored) fed from the JSON the live part carries
// (<script id="lag-data">), redrawn each time htmx swaps that part in.
(function () {
  "use strict";
  var chart = null;
  var shape = "";
  var colours = ["#2f6fde", "#d9582b", "#2c9c5a", "#9b3fc6", "#c7a21c", "#1f9cb0", "#c2417a", "#6b7a8c"];

  function data() {
    var node = document.getElementById("lag-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function draw() {
    var target = document.getElementById("lag-chart");
    var found = data();
    if (!target || !found || typeof uPlot === "undefined") { return; }
    var rows = [found.times].concat(found.lags);
    var key = found.partitions.join(",");
    if (chart && key === shape) { chart.setData(rows); return; }
    if (chart) { chart.destroy(); }
    shape = key;
    var series = [{}].concat(found.partitions.map(function (p, i) {
      return { label: "partition " + p, stroke: colours[i % colours.length], width: 2 };
    }));
    chart = new uPlot({ width: Math.max(320, target.clientWidth - 10), height: 240, series: series,
                        axes: [{}, { label: "lag (jobs)" }], scales: { x: { time: true } } }, rows, target);
  }

  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
