#!/usr/bin/env python3
"""Draws the cost curves (server CPU per request against workers and against
connections, handoff beside nginx) as one SVG from a CSV that bench/vs-nginx.sh runs
filled in. Standard library only, so it runs wherever the scripts run.

    bench/curves.py bench/results/cost-curves/cost-curves.csv > bench/results/cost-curves/cost-curves.svg

CSV rows: axis (workers|connections), x, then one column per server; `#` lines are
comments, and the last comment line names the columns.
"""
import csv
import math
import sys

COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
W, H, PAD, GAP = 420, 300, 50, 40


def read(path):
    header, rows = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                header = [c.strip() for c in line[1:].split(",")]
            elif line.strip():
                rows.append(next(csv.reader([line])))
    if not header or not rows:
        sys.exit(f"{path}: no '# axis,x,...' header line or no rows")
    return header[2:], rows


def panel(out, x0, title, xlabel, points, names, logx):
    ys = [v for _, vals in points for v in vals]
    ymax = math.ceil(max(ys) / 10) * 10 + 10
    xs = [x for x, _ in points]
    fx = (lambda v: math.log10(v)) if logx else (lambda v: math.log2(v))
    lo, hi = fx(min(xs)), fx(max(xs))

    def px(v):
        return x0 + PAD + (fx(v) - lo) / ((hi - lo) or 1) * (W - 2 * PAD)

    def py(v):
        return H - PAD - v / ymax * (H - 2 * PAD)

    out.append(f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<line x1="{x0 + PAD}" y1="{H - PAD}" x2="{x0 + W - PAD}" y2="{H - PAD}" stroke="black"/>')
    out.append(f'<line x1="{x0 + PAD}" y1="{PAD}" x2="{x0 + PAD}" y2="{H - PAD}" stroke="black"/>')
    for y in range(0, ymax + 1, 10):
        out.append(f'<text x="{x0 + PAD - 6}" y="{py(y) + 4}" text-anchor="end">{y}</text>')
        out.append(f'<line x1="{x0 + PAD}" y1="{py(y)}" x2="{x0 + W - PAD}" y2="{py(y)}" stroke="#ddd"/>')
    for x in xs:
        out.append(f'<text x="{px(x)}" y="{H - PAD + 16}" text-anchor="middle">{x:,}</text>')
    out.append(f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="{x0 + 14}" y="{H / 2}" transform="rotate(-90 {x0 + 14} {H / 2})" text-anchor="middle">server CPU µs per request</text>')
    for i, name in enumerate(names):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{px(x):.1f},{py(vals[i]):.1f}" for x, vals in points)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, vals in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(vals[i]):.1f}" r="3" fill="{c}"/>')


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    names, rows = read(sys.argv[1])
    by_axis = {}
    for r in rows:
        by_axis.setdefault(r[0], []).append((int(r[1]), [float(v) for v in r[2:]]))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W + GAP}" height="{H + 40}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    panel(out, 0, "against workers (wrk -c50)", "workers (one server core)", by_axis["workers"], names, False)
    panel(out, W + GAP, "against connections (2 workers)", "concurrent connections", by_axis["connections"], names, True)
    for i, name in enumerate(names):
        c = COLOURS[i % len(COLOURS)]
        x = 60 + i * 220
        out.append(f'<rect x="{x}" y="{H + 18}" width="12" height="12" fill="{c}"/>')
        out.append(f'<text x="{x + 18}" y="{H + 28}">{name}</text>')
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
