"""The charts of the benchmark reports and the demo page (mineworld.charts)."""

import math

from PIL import Image, ImageDraw

from mineworld.charts import (
    LEGEND_ROW,
    MARGIN,
    Panel,
    axis_ticks,
    chart_image,
    legend_rows,
    nice_ticks,
)


def test_ticks_are_round_and_cover_the_data():
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(1, 2) == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert nice_ticks(1, 2, min_step=1.0) == [1, 2]  # frames: no tick at 1.5


def test_frame_axes_are_whole_and_flat_memory_is_drawn_flat():
    flat = Panel("memory", "MB", {"RSS": ([1, 2, 3], [600.782, 600.783, 600.784])},
                 y_from_zero=True, whole_x=True)
    x_ticks, y_ticks = axis_ticks(flat)
    assert all(tick == int(tick) for tick in x_ticks)
    assert y_ticks[0] == 0 and y_ticks[-1] >= 600.784 and len(y_ticks) <= 6
    _, own_range = axis_ticks(Panel("memory", "MB", flat.series))  # without: a thousandth
    assert own_range[0] > 600 and own_range[-1] - own_range[0] < 0.01
    assert axis_ticks(Panel("empty", "", {"a": ([1], [math.nan])})) is None


def test_a_panels_legend_wraps_within_its_width():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    names = [f"A: series number {n}" for n in range(6)]
    rows = legend_rows(draw, names, 11, 300)
    assert [name for row in rows for name in row] == names  # all of them, in order
    assert 1 < len(rows) < len(names)  # wrapped, several to a row
    assert legend_rows(draw, names, 11, 10_000) == [names]  # room for all: one row
    assert legend_rows(draw, names[:2], 11, 1) == [[names[0]], [names[1]]]  # too wide: alone


def test_a_grid_of_panels_with_their_own_legends():
    panels = [Panel(f"p{n}", "", {"a": ([1, 2], [1.0, 2.0]), "b": ([1, 2], [2.0, 1.0])})
              for n in range(8)]
    image = chart_image(panels, columns=4, size=(330, 210), legend="panel")
    assert image.size == (4 * 330, 2 * 210)  # no shared legend above
    # each panel draws its own first series in the palette's first colour, under its title
    y = MARGIN[1] + LEGEND_ROW // 2 - 2
    for column in range(4):
        assert image.getpixel((column * 330 + 12, y)) == (31, 119, 180)
