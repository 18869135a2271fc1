#!/usr/bin/env python3
"""Curves from `userrl train` event logs (events.jsonl): one metric per run, drawn as an SVG line chart (raw
points plus a moving average) and summarised on stdout (first, last, mean of the first and last k steps).
Standard library only, so it runs on a fresh machine.

    scripts/curves.py --metric reward --out docs/curve.svg name=runs/a/events.jsonl name2=runs/b/events.jsonl

A run directory may be given instead of its events.jsonl. Several runs under one name (`name=a,b`) are averaged
step by step and drawn with their min-max band (seeds).
"""

import argparse
import json
import math
import os
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def load(path, metric):
    """step -> value of `metric` in one run (the last value wins when a resumed run logged a step twice)."""
    if os.path.isdir(path):
        path = os.path.join(path, "events.jsonl")
    points = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if event.get("event") != "metrics":
                continue
            for name, value in event.get("values", []):
                if name == metric and value is not None and math.isfinite(value):
                    points[event["step"]] = value
    return points


def moving(values, k):
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out


def summary(name, steps, values, k):
    first, last = values[:k], values[-k:]
    mean = lambda v: sum(v) / len(v)
    return (
        f"{name}: {len(values)} steps, first {values[0]:.3f}, last {values[-1]:.3f}, "
        f"mean of first {len(first)} {mean(first):.3f}, mean of last {len(last)} {mean(last):.3f}, "
        f"mean {mean(values):.3f}"
    )


def svg(series, metric, title, k, width=720, height=360):
    left, right, top, bottom = 56, 160, 34, 40
    all_steps = [s for _, steps, _, _, _ in series for s in steps]
    all_values = [v for _, _, _, lo, hi in series for v in lo + hi]
    x0, x1 = min(all_steps), max(all_steps)
    y0, y1 = min(0.0, min(all_values)), max(all_values)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw
    sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
    ]
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">step</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">{metric}</text>'
    )
    for i, (name, steps, values, lo, hi) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if lo != hi:
            band = [f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, hi)]
            band += [f"{sx(s):.1f},{sy(v):.1f}" for s, v in reversed(list(zip(steps, lo)))]
            out.append(f'<polygon points="{" ".join(band)}" fill="{color}" fill-opacity="0.12" stroke="none"/>')
        raw = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, values))
        out.append(f'<polyline points="{raw}" fill="none" stroke="{color}" stroke-opacity="0.35" stroke-width="1"/>')
        avg = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, moving(values, k)))
        out.append(f'<polyline points="{avg}" fill="none" stroke="{color}" stroke-width="2.2"/>')
        ly = top + 14 + 18 * i
        out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 30}" y2="{ly - 4}" stroke="{color}" stroke-width="2.2"/>')
        out.append(f'<text x="{left + pw + 36}" y="{ly}">{name}</text>')
    note = f"thin: per step; thick: mean of the last {k} steps"
    if any(lo != hi for *_, lo, hi in series):
        note += "; band: min-max over seeds"
    out.append(f'<text x="{left + pw + 12}" y="{top + ph}" font-size="10" fill="#555">')
    for j, part in enumerate(note.split("; ")):
        out.append(f'<tspan x="{left + pw + 12}" dy="{0 if j == 0 else 12}">{part}</tspan>')
    out.append("</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metric", default="reward")
    ap.add_argument("--out", help="write the chart here (SVG)")
    ap.add_argument("--title", default=None)
    ap.add_argument("-k", type=int, default=6, help="moving-average window and summary window (steps)")
    ap.add_argument("runs", nargs="+", help="name=events.jsonl[,events.jsonl...]")
    args = ap.parse_args()
    series = []
    for spec in args.runs:
        name, _, paths = spec.rpartition("=")
        name = name or paths
        runs = [load(p, args.metric) for p in paths.split(",")]
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        if not steps:
            sys.exit(f"{spec}: no `{args.metric}` values (in common)")
        if len(runs) > 1:
            for p, r in zip(paths.split(","), runs):
                v = [r[s] for s in steps]
                print(summary(f"  {name} [{p}]", steps, v, args.k))
        values = [sum(r[s] for r in runs) / len(runs) for s in steps]
        lo = [min(r[s] for r in runs) for s in steps]
        hi = [max(r[s] for r in runs) for s in steps]
        print(summary(name, steps, values, args.k))
        series.append((name, steps, values, lo, hi))
    if args.out:
        with open(args.out, "w") as f:
            f.write(svg(series, args.metric, args.title or args.metric, args.k))


if __name__ == "__main__":
    main()
