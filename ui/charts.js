// A small time-series line chart on <canvas>, for the dashboard. No library: a few lines
// per series over a fixed time window that ends now.

// Rounds up to 1, 2 or 5 × 10^n, so the axis reads in round numbers.
function niceCeil(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

// series: [{label, color, dashed, points: [[timeMs, value], …]}]; a gap longer than maxGapMs
// breaks a line (the dashboard missed polls) rather than drawing a straight line over the hole.
export function drawChart(canvas, series, { windowMs, now = Date.now(), format = String,
                                             maxGapMs = 5000 } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (width === 0 || height === 0) return;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);

  const style = getComputedStyle(canvas);
  const muted = style.getPropertyValue("--muted").trim() || "#666";
  const grid = style.getPropertyValue("--border").trim() || "#ddd";
  const font = `12px ${style.getPropertyValue("--sans") || "sans-serif"}`;

  const start = now - windowMs;
  let max = 0;
  for (const s of series) {
    for (const [t, v] of s.points) if (t >= start && v > max) max = v;
  }
  const top = niceCeil(max);
  const left = 52;
  const right = 8;
  const upper = 8;
  const bottom = 22;
  const plotWidth = width - left - right;
  const plotHeight = height - upper - bottom;
  const x = (t) => left + ((t - start) / windowMs) * plotWidth;
  const y = (v) => upper + plotHeight - (v / top) * plotHeight;

  // Grid: 0, half and top, labelled on the left; time labels below.
  g.font = font;
  g.lineWidth = 1;
  g.fillStyle = muted;
  g.strokeStyle = grid;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (const v of [0, top / 2, top]) {
    const py = Math.round(y(v)) + 0.5;
    g.beginPath();
    g.moveTo(left, py);
    g.lineTo(width - right, py);
    g.stroke();
    g.fillText(format(v), left - 6, py);
  }
  g.textBaseline = "alphabetic";
  const minutes = Math.round(windowMs / 60000);
  g.textAlign = "left";
  g.fillText(`${minutes} min ago`, left, height - 4);
  g.textAlign = "right";
  g.fillText("now", width - right, height - 4);

  g.lineWidth = 2;
  g.lineJoin = "round";
  for (const s of series) {
    g.strokeStyle = s.color;
    g.fillStyle = s.color;
    g.setLineDash(s.dashed ? [6, 4] : []);  // tells the lines apart without colour
    g.beginPath();
    let previous = null;
    for (const [t, v] of s.points) {
      if (t < start || !Number.isFinite(v)) continue;
      if (previous === null || t - previous > maxGapMs) g.moveTo(x(t), y(v));
      else g.lineTo(x(t), y(v));
      previous = t;
    }
    g.stroke();
    g.setLineDash([]);
    const last = s.points[s.points.length - 1];
    if (last && last[0] >= start && Number.isFinite(last[1])) {
      g.beginPath();
      g.arc(x(last[0]), y(last[1]), 3, 0, 2 * Math.PI);
      g.fill();
    }
  }
}
