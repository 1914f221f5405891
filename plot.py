"""Plot training curves from a JSON-lines log as a dependency-free SVG (one panel per key).

    python plot.py runs/pipeline/grpo/log.jsonl --key reward.total --key kl --smooth 10 --out docs/grpo.svg
    python plot.py assets/tiny/log.jsonl --key loss --smooth 50 --out docs/pretrain.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WIDTH, PANEL_HEIGHT, MARGIN = 640, 200, 48


def series(path: str | Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every log line that has the dotted key, e.g. reward.total."""
    points = []
    for line in Path(path).read_text().splitlines():
        record = value = json.loads(line)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            points.append((record["step"], float(value)))
    return points


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def panel(points: list[tuple[int, float]], smooth: int, key: str, top: int) -> list[str]:
    steps, values = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    x0, x1, y0, y1 = MARGIN, WIDTH - 16, top + PANEL_HEIGHT - 28, top + 16
    sx = lambda s: x0 + (x1 - x0) * (s - steps[0]) / max(1, steps[-1] - steps[0])  # noqa: E731
    sy = lambda v: y0 - (y0 - y1) * (v - lo) / (hi - lo)                          # noqa: E731
    raw = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points)
    smoothed = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in zip(steps, moving_average(values, smooth)))
    return [f'<text x="{x0}" y="{top + 12}" font-size="12">{key} (light: raw, dark: mean of {smooth})</text>',
            f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>',
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#888"/>',
            f'<text x="{x0 - 4}" y="{y1 + 4}" font-size="10" text-anchor="end">{hi:.3g}</text>',
            f'<text x="{x0 - 4}" y="{y0}" font-size="10" text-anchor="end">{lo:.3g}</text>',
            f'<text x="{x0}" y="{y0 + 14}" font-size="10">step {steps[0]}</text>',
            f'<text x="{x1}" y="{y0 + 14}" font-size="10" text-anchor="end">step {steps[-1]}</text>',
            f'<polyline points="{raw}" fill="none" stroke="#9ecae1" stroke-width="1"/>',
            f'<polyline points="{smoothed}" fill="none" stroke="#08519c" stroke-width="2"/>']


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("log", help="a log.jsonl written by sft.py or grpo.py")
    p.add_argument("--key", action="append", required=True, help="dotted key to plot, e.g. loss, reward.total, kl")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window")
    p.add_argument("--out", required=True, help="SVG file to write")
    args = p.parse_args(argv)
    body = []
    for i, key in enumerate(args.key):
        points = series(args.log, key)
        if not points:
            print(f"error: {args.log}: no values for key {key!r}", file=sys.stderr)
            return 2
        body += panel(points, args.smooth, key, i * PANEL_HEIGHT)
    height = PANEL_HEIGHT * len(args.key)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">'
           f'<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(svg)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
