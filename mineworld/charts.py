"""Small line charts, drawn with Pillow (a runtime dependency; matplotlib is not one): the
benchmark reports' figures and the demo page's live plots (one image a tab: a browser draws it
for the cost of a picture, where a dozen interactive plots cost it more with every frame).

>>> panel = Panel("PSNR vs truth", "dB", {"none": ([1, 2, 3], [20.0, 19.5, 19.0])})
>>> line_charts([panel], "quality.png", colours={"none": (0, 0, 0)})

Each panel has its own axes and ticks at round numbers; panels are laid out in a grid under one
legend, or each with its own (``chart_image(..., legend="panel")``). NaN points break a line
(the gap shows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_SIZE = (470, 280)
MARGIN = (52, 26, 12, 34)  # left, top, right, bottom: room for tick labels and the title
LEGEND_ROW = 16  # a row of a panel's own legend, under its title
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]  # fmt: skip


@dataclass
class Panel:
    title: str
    ylabel: str  # the unit, shown after the title
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    xlabel: str = "frame"
    y_from_zero: bool = False  # the y axis starts at 0 (a flat line is drawn flat)
    whole_x: bool = False  # x ticks at whole numbers only (frames)


def nice_ticks(low: float, high: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """Round-numbered ticks (1, 2 or 5 x 10^k apart, at least ``min_step``) covering
    [low, high]."""
    if not high > low:
        low, high = low - 1, high + 1
    raw = max((high - low) / count, min_step)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.2g}"


def legend_rows(draw: ImageDraw.ImageDraw, names: list[str], size: int,
                width: float) -> list[list[str]]:
    """``names`` in rows of legend entries (a line sample and a name) at most ``width``
    pixels wide (an entry wider than that gets a row of its own)."""
    font = _font(size)
    rows: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        entry = 32 + draw.textlength(name, font=font)
        if rows[-1] and used + entry > width:
            rows.append([])
            used = 0.0
        rows[-1].append(name)
        used += entry
    return rows


def draw_legend(draw: ImageDraw.ImageDraw, origin: tuple[int, int], rows: list[list[str]],
                colours: dict[str, tuple[int, int, int]], size: int) -> None:
    """Legend ``rows`` (see :func:`legend_rows`) from ``origin`` (left, middle of the first
    row), ``LEGEND_ROW`` pixels apart."""
    font = _font(size)
    for index, names in enumerate(rows):
        x, y = origin[0], origin[1] + index * LEGEND_ROW
        for name in names:
            draw.line([(x, y), (x + 18, y)], fill=colours[name], width=3)
            draw.text((x + 22, y - size // 2 - 1), name, fill="black", font=font)
            x += 32 + int(draw.textlength(name, font=font))


def axis_ticks(panel: Panel) -> tuple[list[float], list[float]] | None:
    """The x and y ticks of ``panel`` (see :class:`Panel`), None when it has no point."""
    points = [(x, y) for xs, ys in panel.series.values() for x, y in zip(xs, ys, strict=True)
              if math.isfinite(y)]
    if not points:
        return None
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points),
                         min_step=1.0 if panel.whole_x else 0.0)
    y_low = min(p[1] for p in points)
    y_ticks = nice_ticks(min(y_low, 0.0) if panel.y_from_zero else y_low,
                         max(p[1] for p in points))
    return x_ticks, y_ticks


def draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], panel: Panel,
               colours: dict[str, tuple[int, int, int]], size: tuple[int, int] = PANEL_SIZE,
               own_legend: bool = False) -> None:
    """``panel`` with its top left corner at ``origin``; ``own_legend``: its series' legend
    under its title."""
    font, small = _font(12), _font(11)
    rows = legend_rows(draw, list(panel.series), 11, size[0] - 16) if own_legend else []
    left, top = origin[0] + MARGIN[0], origin[1] + MARGIN[1] + len(rows) * LEGEND_ROW
    right = origin[0] + size[0] - MARGIN[2]
    bottom = origin[1] + size[1] - MARGIN[3]
    title = f"{panel.title}, {panel.ylabel}" if panel.ylabel else panel.title
    draw.text((origin[0] + 8, origin[1] + 5), title, fill="black", font=font)
    draw_legend(draw, (origin[0] + 8, origin[1] + MARGIN[1] + LEGEND_ROW // 2 - 2), rows,
                colours, 11)
    ticks = axis_ticks(panel)
    if ticks is None:
        draw.text((left + 10, top + 10), "no data", fill="gray", font=small)
        return
    x_ticks, y_ticks = ticks

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])
        fy = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    for y in y_ticks:
        _, py = to_pixel(x_ticks[0], y)
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        text = _label(y)
        draw.text((left - 6 - draw.textlength(text, font=small), py - 6), text, fill="black",
                  font=small)
    for x in x_ticks:
        px, _ = to_pixel(x, y_ticks[0])
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        text = _label(x)
        draw.text((px - draw.textlength(text, font=small) / 2, bottom + 6), text, fill="black",
                  font=small)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((right - draw.textlength(panel.xlabel, font=small), bottom + 20), panel.xlabel,
              fill="gray", font=small)

    # Earlier series are drawn wider, so that a line hidden under a later one still shows.
    for index, (name, (xs, ys)) in enumerate(panel.series.items()):
        width = min(5, 2 + len(panel.series) - 1 - index)
        line: list[tuple[float, float]] = []
        for x, y in [*zip(xs, ys, strict=True), (math.nan, math.nan)]:
            if math.isfinite(y):
                line.append(to_pixel(x, y))
                continue
            if len(line) > 1:
                draw.line(line, fill=colours[name], width=width, joint="curve")
            elif line:
                draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2],
                             fill=colours[name])
            line = []


def chart_image(panels: list[Panel], colours: dict[str, tuple] | None = None, columns: int = 2,
                size: tuple[int, int] = PANEL_SIZE, legend: str = "shared") -> Image.Image:
    """``panels`` (each ``size`` pixels) in a grid of ``columns``, under one legend
    (``legend="shared"``) or each with its own (``"panel"``); series not in ``colours`` take
    the palette's in order of first appearance (in the image, or in their panel)."""
    shared = legend == "shared"
    given = colours or {}

    def coloured(names) -> dict[str, tuple]:
        return {n: given.get(n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)}

    colours = coloured(dict.fromkeys(name for panel in panels for name in panel.series))
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    legend_height = 24 if shared else 0
    image = Image.new("RGB", (columns * size[0], legend_height + rows * size[1]), "white")
    draw = ImageDraw.Draw(image)
    if shared:
        draw_legend(draw, (10, 12), [list(colours)], colours, 13)
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        draw_panel(draw, (column * size[0], legend_height + row * size[1]), panel,
                   colours if shared else coloured(panel.series), size, own_legend=not shared)
    return image


def line_charts(panels: list[Panel], path: str | Path, colours: dict[str, tuple] | None = None,
                columns: int = 2) -> Path:
    """Draw ``panels`` in a grid of ``columns`` with one shared legend on top; write a PNG."""
    path = Path(path)
    chart_image(panels, colours, columns).save(path, optimize=True)
    return path
