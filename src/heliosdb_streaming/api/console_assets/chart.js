// A small time-series line chart on <canvas>: no library, just the 2D context.
//
//   const chart = new LineChart(canvas, { title: "Throughput", unit: "ev/s" });
//   chart.draw([{ t: Date.now(), v: 1200 }, ...], fromMs, toMs);
//
// The canvas's data-points attribute tells how many points the last draw plotted (tests read it).

const PAD = { left: 56, right: 12, top: 24, bottom: 22 };

export class LineChart {
  constructor(canvas, { title, unit = "", color = "#2563eb", format = (v) => v.toFixed(1) }) {
    this.canvas = canvas;
    this.title = title;
    this.unit = unit;
    this.color = color;
    this.format = format;
  }

  draw(points, from, to) {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 360, height = canvas.clientHeight || 160;
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue("--chart-ink").trim() || "#334155";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#e2e8f0";
    ctx.font = "11px system-ui, sans-serif";

    const shown = points.filter((p) => p.t >= from && p.t <= to && Number.isFinite(p.v));
    const last = shown.length ? shown[shown.length - 1].v : null;
    ctx.fillStyle = ink;
    ctx.textBaseline = "top";
    ctx.fillText(`${this.title}${last === null ? "" : ": " + this.format(last) + " " + this.unit}`, PAD.left, 4);

    const max = niceMax(Math.max(0, ...shown.map((p) => p.v)));
    const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
    const x = (t) => PAD.left + ((t - from) / Math.max(1, to - from)) * plotW;
    const y = (v) => PAD.top + plotH - (v / max) * plotH;

    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i <= 5; i++) {
      const v = (max * i) / 5; // fifths of 1, 2, 2.5, 5 or 10 are round numbers
      ctx.beginPath();
      ctx.moveTo(PAD.left, Math.round(y(v)) + 0.5);
      ctx.lineTo(width - PAD.right, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(this.format(v), PAD.left - 6, y(v));
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText(clock(from), PAD.left, height - 2);
    ctx.textAlign = "right";
    ctx.fillText(clock(to), width - PAD.right, height - 2);
    ctx.textAlign = "left";

    canvas.dataset.points = String(shown.length);
    if (!shown.length) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no data in this window yet", PAD.left + plotW / 2, PAD.top + plotH / 2);
      ctx.textAlign = "left";
      return;
    }
    ctx.strokeStyle = this.color;
    ctx.fillStyle = this.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    shown.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
    if (shown.length === 1) {
      ctx.beginPath();
      ctx.arc(x(shown[0].t), y(shown[0].v), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
}

// The smallest of 1, 2, 2.5, 5 times a power of ten at or above value (the y axis' top).
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
}
