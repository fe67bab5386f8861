"""The explanation picture: overlays in range, titles that never run into their neighbours, one written PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from medens.evaluate import overlays
from medens.evaluate.overlays import Panel, overlay, save_explanation


def test_long_titles_are_wrapped_so_neighbouring_panels_do_not_overlap(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    real_canvas = overlays.FigureCanvasAgg

    def keep(fig):  # the module makes one canvas per picture: keep its figure to measure the titles
        figures.append(fig)
        return real_canvas(fig)

    monkeypatch.setattr(overlays, "FigureCanvasAgg", keep)
    image = np.full((64, 64, 3), 128, np.uint8)
    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    titles = ["Random-init (ImageNet weights unavailable): normal 0.40", "MAE-init: malignant 0.40",
              "ensemble: malignant 0.40"]
    out = save_explanation(tmp_path / "x.png", image, [Panel(t, cam) for t in titles], "caption", title="a.png")
    with Image.open(out) as written:
        assert written.size[0] > written.size[1] > 0  # one picture, the panels side by side
    fig = figures[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for left, right in zip(boxes[:-1], boxes[1:], strict=True):
        assert left.x1 <= right.x0, (left, right)  # each title ends before the next begins
    assert "\n" in fig.axes[1].title.get_text()  # the long one took two lines


def test_overlay_keeps_the_image_where_the_map_is_zero_and_refuses_other_shapes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(overlay(image, np.zeros((8, 8), np.float32)), image)
    with pytest.raises(ValueError, match="image, cam"):
        overlay(image, np.zeros((4, 4), np.float32))
