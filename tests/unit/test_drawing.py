"""Detections drawn on an image: a copy, boxes where the rows say, a colour per class."""
import numpy as np

from ssd_detector.drawing import draw

H, W = 120, 200


def blank() -> np.ndarray:
    return np.full((H, W, 3), 255, np.uint8)


def test_no_rows_draws_nothing_and_the_input_is_kept():
    image = blank()
    out = draw(image, np.zeros((0, 6), np.float32))
    assert out is not image and np.array_equal(out, image)
    draw(image, np.array([[0, 0.9, 0.1, 0.2, 0.6, 0.8]], np.float32))
    assert np.array_equal(image, blank()), "the caller's image is not drawn on"


def test_the_box_is_where_the_row_says():
    row = np.array([[1, 0.9, 0.25, 0.5, 0.75, 0.9]], np.float32)
    out = draw(blank(), row)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    x0, y0, x1, y1 = (int(v * s) for v, s in zip(row[0, 2:], (W, H, W, H)))  # float32 corners, as drawn
    colour = out[(y0 + y1) // 2, x0]
    assert not np.array_equal(colour, [255, 255, 255]), "the left edge is drawn"
    assert np.array_equal(out[(y0 + y1) // 2, x1], colour) and np.array_equal(out[y1, (x0 + x1) // 2], colour)
    assert np.array_equal(out[(y0 + y1) // 2, (x0 + x1) // 2], [255, 255, 255]), "the inside is left alone"
    assert np.array_equal(out[5, 5], [255, 255, 255]), "away from the box nothing changes"
    # The label sits on a filled band of the box's colour above its top edge.
    band = out[y0 - 3, x0 + 1:x0 + 20]
    assert (band != 255).any(axis=1).all() and np.all(band == colour, axis=1).mean() > 0.5  # text is antialiased


def test_classes_get_different_colours_and_names_label_them():
    rows = np.array([[0, 0.9, 0.05, 0.3, 0.3, 0.9], [1, 0.8, 0.6, 0.3, 0.9, 0.9]], np.float32)
    out = draw(blank(), rows)
    left, right = out[H // 2, int(0.05 * W)], out[H // 2, int(0.6 * W)]
    assert not np.array_equal(left, right)
    # A longer name makes a wider label band than the class id alone.
    short = draw(blank(), rows[:1])
    named = draw(blank(), rows[:1], {0: "a rather long class name"})
    row = int(0.3 * H) - 3
    assert (named[row] != 255).any(axis=1).sum() > (short[row] != 255).any(axis=1).sum()
