// A small line chart of the last hour on a canvas: no library needed for a sparkline.
import {live} from "./live.js";

const WINDOW_S = 3600;

export function sparkline(canvas, points, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 160, height = canvas.clientHeight || 36;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#d9dee4";
  ctx.beginPath(); ctx.moveTo(0, height - .5); ctx.lineTo(width, height - .5); ctx.stroke();
  if (!points.length) return;
  const now = Date.now() / 1000, top = Math.max(1, ...points.map((p) => p[1]));
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let last = null;
  for (const [t, value] of points) {
    const x = width - ((now - t) / WINDOW_S) * width, y = height - 2 - (value / top) * (height - 4);
    if (last === null || t - last > live.gapS) ctx.moveTo(x, y); else ctx.lineTo(x, y);  // a gap: no reading
    last = t;
  }
  ctx.stroke();
}
