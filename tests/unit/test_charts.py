"""The dashboard's SVG charts: a single point is drawn with its value on an axis with two
distinct ends; eval_loss shares the training loss chart."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from dashboard.charts import grouped, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(SVG + "text")]


def test_a_single_point_is_drawn_with_its_value() -> None:
    root = parsed(line_chart("f1", {"f1": [(4.0, 0.2857)]}))
    labels = texts(root)
    top, bottom, left, right = labels[:4]
    assert top != bottom and float(bottom) < 0.2857 < float(top)
    assert left != right and float(left) < 4 < float(right)
    dots = list(root.iter(SVG + "circle"))
    assert len(dots) == 1
    assert "0.2857" in labels[5:]  # the value beside the point
    x, y = float(dots[0].get("cx", 0)), float(dots[0].get("cy", 0))
    assert 64 < x < 348 and 12 < y < 148  # inside the plot, not on its edge


def test_a_flat_series_is_drawn_in_the_middle() -> None:
    root = parsed(line_chart("learning_rate", {"learning_rate": [(1, 5e-5), (2, 5e-5)]}))
    top, bottom = texts(root)[:2]
    assert top != bottom
    line = next(root.iter(SVG + "polyline"))
    ys = {p.split(",")[1] for p in (line.get("points") or "").split()}
    assert len(ys) == 1 and 12 < float(ys.pop()) < 148


def test_many_points_are_a_line_without_value_labels() -> None:
    points = [(float(i), float(i * i)) for i in range(100)]
    root = parsed(line_chart("loss", {"loss": points}))
    line = next(root.iter(SVG + "polyline"))
    assert len((line.get("points") or "").split()) == 100
    assert not list(root.iter(SVG + "circle"))
    assert texts(root)[:4] == ["9801", "0", "0", "99"]


def test_eval_loss_goes_on_the_loss_chart() -> None:
    series = {
        "loss": [(1.0, 0.7), (2.0, 0.6)],
        "learning_rate": [(1.0, 1e-5)],
        "eval_loss": [(0.0, 0.71), (2.0, 0.65)],
    }
    charts = grouped(series)
    assert [name for name, _ in charts] == ["loss", "learning_rate"]
    assert list(charts[0][1]) == ["loss", "eval_loss"]
    svg = line_chart(*charts[0])
    root = parsed(svg)
    assert [p.get("data-series") for p in root.iter(SVG + "polyline")] == ["loss", "eval_loss"]
    assert "eval_loss" in texts(root)  # the legend
    assert re.search(r'data-series="loss"', svg)
    # without training loss, eval_loss has a chart of its own
    assert [name for name, _ in grouped({"eval_loss": [(1.0, 0.5)]})] == ["eval_loss"]


def test_names_are_escaped() -> None:
    svg = line_chart("<b>", {"<b>": [(1.0, 1.0)]})
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    parsed(svg)


def test_axis_ends_that_round_alike_get_more_digits() -> None:
    top, bottom = texts(parsed(line_chart("log_loss", {"log_loss": [(0, 0.69401), (4, 0.69398)]})))[
        :2
    ]
    assert (top, bottom) == ("0.69401", "0.69398")
