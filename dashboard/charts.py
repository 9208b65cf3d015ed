"""Server-side SVG line charts: no JavaScript, nothing fetched by the browser."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

WIDTH = 360
HEIGHT = 180
PAD_LEFT = 64
PAD_RIGHT = 12
PAD_TOP = 12
PAD_BOTTOM = 32
INSET = 6
"""Points are drawn this far inside the axes, so that none sits on a frame line."""
MARKED_POINTS = 30
"""Series with at most this many points get a dot on each (evaluations are few)."""

Points = list[tuple[float, float]]


def _labels(low: float, high: float) -> tuple[str, str]:
    """The two ends of an axis, with as many digits as it takes to tell them apart."""
    for digits in range(4, 12):
        pair = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if pair[0] != pair[1]:
            return pair
    return f"{low:g}", f"{high:g}"


def _span(values: list[float], pad: float | None = None) -> tuple[float, float]:
    """The axis range of ``values``; a single value gets room on both sides (``pad``, else a
    tenth of it), so that it is drawn in the middle with distinct ends."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high > low:
        return low, high
    room = pad if pad is not None else abs(low) * 0.1 or 1.0
    return low - room, high + room


def line_chart(title: str, series: dict[str, Points]) -> str:
    """Series against step in one SVG, the first one named ``title``: the ends of both
    axes labelled, a legend when there are several series, a dot on each point of a short
    series, and the value beside the last point (a series' only point, or the last of the
    chart's only series)."""
    x0, x1 = _span([x for points in series.values() for x, _ in points], pad=1.0)
    y0, y1 = _span([y for points in series.values() for _, y in points])
    top = PAD_TOP + (14 * len(series) if len(series) > 1 else 0)  # the legend goes above
    bottom = HEIGHT - PAD_BOTTOM
    left, right = PAD_LEFT + INSET, WIDTH - PAD_RIGHT - INSET  # where points may go
    high, low = top + INSET, bottom - INSET

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return low - (y - y0) / (y1 - y0) * (low - high)

    (y_low, y_high), (x_low, x_high) = _labels(y0, y1), _labels(x0, x1)
    names = list(series)
    first = series[names[0]] if names else []
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)} against step" data-series="{escape(title)}" '
        f'data-points="{len(first)}">',
        f"<title>{escape(', '.join(names))} against step</title>",
        f'<line class="axis" x1="{PAD_LEFT}" y1="{top}" x2="{PAD_LEFT}" y2="{bottom}"/>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{bottom}" x2="{WIDTH - PAD_RIGHT}" '
        f'y2="{bottom}"/>',
        f'<text x="{PAD_LEFT - 4}" y="{high + 3}" text-anchor="end">{y_high}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{low + 3}" text-anchor="end">{y_low}</text>',
        f'<text x="{left}" y="{bottom + 14}" text-anchor="middle">{x_low}</text>',
        f'<text x="{right}" y="{bottom + 14}" text-anchor="middle">{x_high}</text>',
        f'<text x="{(PAD_LEFT + WIDTH - PAD_RIGHT) / 2:.0f}" y="{HEIGHT - 4}" '
        f'text-anchor="middle">{escape(" / ".join(names))} / step</text>',
    ]
    for index, (label, points) in enumerate(series.items()):
        kind = f"series s{index % 4}"
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(
            f'<polyline class="{kind}" fill="none" data-series="{escape(label)}" '
            f'points="{coords}"/>'
        )
        if len(points) <= MARKED_POINTS:
            parts += [
                f'<circle class="{kind} dot" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"/>'
                for x, y in points
            ]
        if points and (len(points) == 1 or len(series) == 1):
            parts.append(_value(*points[-1], sx, sy, (left + right) / 2, high))
    for index, label in enumerate(names if len(names) > 1 else []):
        y = PAD_TOP + 8 + 14 * index
        end = WIDTH - PAD_RIGHT
        parts += [
            f'<line class="series s{index % 4}" x1="{end - 14}" y1="{y - 3}" '
            f'x2="{end}" y2="{y - 3}"/>',
            f'<text class="legend" x="{end - 18}" y="{y}" text-anchor="end">{escape(label)}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def _value(
    x: float,
    y: float,
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    middle: float,
    high: float,
) -> str:
    """A point's value written beside it, towards the middle, below it near the top."""
    anchor = "end" if sx(x) > middle else "start"
    shift = -6 if anchor == "end" else 6
    above = sy(y) - 6
    return (
        f'<text class="value" x="{sx(x) + shift:.1f}" '
        f'y="{above if above > high + 10 else sy(y) + 14:.1f}" '
        f'text-anchor="{anchor}">{y:.4g}</text>'
    )


SHARED = {"loss": ("eval_loss",)}
"""Series drawn on another's chart, to be compared with it: the test split's loss on the
training loss chart."""


def grouped(series: dict[str, Points]) -> list[tuple[str, dict[str, Points]]]:
    """The charts of a model's curves: each series on its own, but those of ``SHARED``."""
    guests = {g for host, names in SHARED.items() if host in series for g in names}
    return [
        (name, {name: points} | {g: series[g] for g in SHARED.get(name, ()) if g in series})
        for name, points in series.items()
        if name not in guests
    ]
