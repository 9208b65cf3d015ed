"""Server-side SVG line charts: no JavaScript, nothing fetched by the browser."""

from __future__ import annotations

from html import escape

WIDTH = 360
HEIGHT = 180
PAD_LEFT = 64
PAD_RIGHT = 12
PAD_TOP = 12
PAD_BOTTOM = 32


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart(name: str, points: list[tuple[float, float]]) -> str:
    """One series as an SVG polyline against step, with min/max labels on both axes."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    xspan = (x1 - x0) or 1.0
    yspan = (y1 - y0) or 1.0
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def sx(x: float) -> float:
        return PAD_LEFT + (x - x0) / xspan * plot_w

    def sy(y: float) -> float:
        return PAD_TOP + plot_h - (y - y0) / yspan * plot_h

    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    title = escape(name)
    bottom = PAD_TOP + plot_h
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{title} against step" data-series="{title}" data-points="{len(points)}">'
        f"<title>{title} against step</title>"
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{bottom}"/>'
        f'<line class="axis" x1="{PAD_LEFT}" y1="{bottom}" x2="{WIDTH - PAD_RIGHT}" '
        f'y2="{bottom}"/>'
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">{_label(y1)}</text>'
        f'<text x="{PAD_LEFT - 4}" y="{bottom}" text-anchor="end">{_label(y0)}</text>'
        f'<text x="{PAD_LEFT}" y="{bottom + 14}" text-anchor="start">{_label(x0)}</text>'
        f'<text x="{WIDTH - PAD_RIGHT}" y="{bottom + 14}" text-anchor="end">{_label(x1)}</text>'
        f'<text x="{PAD_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{title} / step</text>"
        f'<polyline class="series" fill="none" points="{coords}"/>'
        "</svg>"
    )
