// polymodal web page: a random Shapes World scene drawn in the browser (same shapes, colours and sizes as
// polymodal.data.shapes), for trying the page without an image at hand. Loaded before app.js, whose `el`
// and `setImage` it calls.
"use strict";

const COLOURS = { red: "#e61e1e", green: "#1ebe32", blue: "#285aff", yellow: "#fae61e", purple: "#a032dc",
                  orange: "#ff8c00", white: "#f5f5f5", cyan: "#1edce6" };
const SHAPES = ["circle", "square", "triangle", "diamond", "star", "hexagon"];
const POLYGONS = {
  square: [[-0.72, -0.72], [0.72, -0.72], [0.72, 0.72], [-0.72, 0.72]],
  diamond: [[0, -1], [0.75, 0], [0, 1], [-0.75, 0]],
  triangle: [[0, -0.72], [0.84, 0.72], [-0.84, 0.72]],
  star: [...Array(10).keys()].map((k) => { const r = k % 2 ? 0.45 : 1, a = (-90 + 36 * k) * Math.PI / 180;
    return [r * Math.cos(a), r * Math.sin(a)]; }),
  hexagon: [...Array(6).keys()].map((k) => [0.92 * Math.cos(k * Math.PI / 3), 0.92 * Math.sin(k * Math.PI / 3)]),
};

function randomScene(side = 256) {
  const canvas = el("canvas", { width: side, height: side });
  const g = canvas.getContext("2d");
  const grey = 28 + Math.floor(Math.random() * 33);
  g.fillStyle = `rgb(${grey},${grey},${grey + 3})`;
  g.fillRect(0, 0, side, side);
  const placed = [];
  const count = 1 + Math.floor(Math.random() * 4);
  for (let i = 0; i < count; i++) {
    let r = Math.random() < 0.5 ? 0.10 : 0.17;
    for (let attempt = 0; attempt < 60; attempt++) {
      if (attempt === 30) r = 0.10;  // crowded: a small one may still fit
      const x = r + Math.random() * (1 - 2 * r), y = r + Math.random() * (1 - 2 * r);
      if (placed.every((o) => Math.hypot(x - o.x, y - o.y) >= r + o.r + 0.02)) { placed.push({ x, y, r }); break; }
    }
  }
  for (const o of placed) {
    const shape = SHAPES[Math.floor(Math.random() * SHAPES.length)];
    const colours = Object.values(COLOURS);
    g.fillStyle = colours[Math.floor(Math.random() * colours.length)];
    const cx = o.x * side, cy = o.y * side, r = o.r * side;
    g.beginPath();
    if (shape === "circle") g.arc(cx, cy, r * 0.85, 0, 2 * Math.PI);
    else POLYGONS[shape].forEach(([dx, dy], k) => (k ? g.lineTo : g.moveTo).call(g, cx + r * dx, cy + r * dy));
    g.closePath();
    g.fill();
  }
  canvas.toBlob((blob) => setImage(blob, "scene.png"), "image/png");
}
