// A sparkline in SVG: values over time, no library. Null values leave a gap.

const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace's name, not a location: nothing is fetched
const WIDTH = 260;
const HEIGHT = 48;

export function sparkline(points, spanMs, now) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("class", "spark");
  const values = points.map((p) => p.value).filter((v) => v != null);
  const top = Math.max(...values, 0) || 1;
  let segment = [];
  const segments = [segment];
  for (const { at, value } of points) {
    if (value == null) {
      if (segment.length) segments.push((segment = []));
      continue;
    }
    const x = WIDTH - ((now - at) / spanMs) * WIDTH;
    const y = HEIGHT - 2 - (value / top) * (HEIGHT - 4);
    segment.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  }
  for (const line of segments) {
    if (!line.length) continue;
    const shape = document.createElementNS(SVG, line.length === 1 ? "circle" : "polyline");
    if (line.length === 1) {
      const [x, y] = line[0].split(",");
      shape.setAttribute("cx", x);
      shape.setAttribute("cy", y);
      shape.setAttribute("r", "1.5");
    } else {
      shape.setAttribute("points", line.join(" "));
    }
    svg.append(shape);
  }
  return svg;
}
