/* Usage page: uPlot charts drawn from the page's JSON data block (the tables hold the same numbers). */
"use strict";
(function () {
  var block = document.getElementById("usage-data");
  if (!block || typeof uPlot === "undefined") return;
  var data = JSON.parse(block.textContent);
  if (!data.days) return;
  var css = getComputedStyle(document.documentElement);
  var color = function (name) { return css.getPropertyValue(name).trim() || "#888"; };
  var fg = color("--fg"), line = color("--line");
  var palette = ["#3b82f6", "#f59e0b", "#10b981", "#a855f7", "#ef4444"];
  var charts = [];

  function axis(extra) {
    var base = { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    return Object.assign(base, extra || {});
  }
  function width(el) { return Math.max(el.clientWidth, 280); }
  function compact(v) {
    if (v == null) return "";
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return String(Math.round(v * 100) / 100);
  }
  function usd(v) { return v == null ? "" : "$" + (v < 0.01 && v > 0 ? v.toPrecision(2) : v.toFixed(2)); }

  function draw(id, opts, rows) {
    var el = document.getElementById(id);
    if (!el) return;
    opts.width = width(el);
    opts.scales = opts.scales || {};
    opts.scales.y = { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } };
    opts.height = 240;
    charts.push([new uPlot(opts, rows, el), el]);
  }

  function lines(series) {
    return series.map(function (s, i) {
      return { label: s[0], stroke: palette[i], width: 2, points: { show: data.days.length < 60 }, value: s[1] };
    });
  }

  draw("chart-day-tokens", {
    series: [{ label: "day" }].concat(lines([
      ["input", function (u, v) { return compact(v); }],
      ["output", function (u, v) { return compact(v); }],
      ["cache reads", function (u, v) { return compact(v); }],
      ["cache writes", function (u, v) { return compact(v); }],
    ])),
    axes: [axis(), axis({ values: function (u, vals) { return vals.map(compact); }, size: 60 })],
  }, [data.days, data.input, data.output, data.cache_read, data.cache_write]);

  draw("chart-day-cost", {
    series: [{ label: "day" }, { label: "cost", stroke: palette[4], width: 2, fill: palette[4] + "22", value: function (u, v) { return usd(v); } }],
    axes: [axis(), axis({ values: function (u, vals) { return vals.map(usd); }, size: 70 })],
  }, [data.days, data.cost]);

  function bars(id, group, what) {
    var names = group.names;
    if (!names.length) {
      var el = document.getElementById(id);
      if (el) el.textContent = "Nothing billed in this range.";
      return;
    }
    var xs = names.map(function (_, i) { return i; });
    var barPath = function (align) { return uPlot.paths.bars({ size: [0.35, 60], align: align }); };
    draw(id, {
      scales: {
        x: { time: false, range: [-0.6, names.length - 0.4] },
        usd: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } },
      },
      series: [
        { label: what, value: function (u, i) { return i == null ? "" : names[i]; } },
        { label: "input tokens", stroke: palette[0], fill: palette[0], paths: barPath(-1), points: { show: false }, value: function (u, v) { return compact(v); } },
        { label: "output tokens", stroke: palette[1], fill: palette[1], paths: barPath(1), points: { show: false }, value: function (u, v) { return compact(v); } },
        // cost as a marker on its own (right-hand) axis
        { label: "cost", scale: "usd", stroke: palette[4], fill: palette[4], width: 0, paths: function () { return null; }, points: { show: true, size: 10 }, value: function (u, v) { return usd(v); } },
      ],
      axes: [
        axis({ splits: function () { return xs; }, values: function (u, vals) { return vals.map(function (v) { var n = names[v]; return n && n.length > 18 ? n.slice(0, 17) + "…" : n || ""; }); } }),
        axis({ values: function (u, vals) { return vals.map(compact); }, size: 60 }),
        axis({ scale: "usd", side: 1, grid: { show: false }, values: function (u, vals) { return vals.map(usd); }, size: 70 }),
      ],
    }, [xs, group.input, group.output, group.cost]);
  }
  bars("chart-models", data.models, "model");
  bars("chart-keys", data.keys, "key");

  var timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      charts.forEach(function (pair) { pair[0].setSize({ width: width(pair[1]), height: 240 }); });
    }, 150);
  });
})();
