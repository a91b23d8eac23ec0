"""Preview drawing keeps 3 channels whatever comes in: every image output of the pack goes through draw_boxes."""

import numpy as np
import pytest

from realisid import drawing

BOX = np.array([[8.0, 8.0, 24.0, 24.0]])


def _image(channels: int | None) -> np.ndarray:
    """A 32 x 40 image whose channel c holds 0.1 * (c + 1) (2-D when channels is None)."""
    if channels is None:
        return np.full((32, 40), 0.3, np.float32)
    return np.stack([np.full((32, 40), 0.1 * (c + 1), np.float32) for c in range(channels)], axis=-1)


# what a pixel away from the box must hold: grey repeated into RGB, grey+alpha and RGBA lose the alpha
EXPECTED = {None: [0.3] * 3, 1: [0.1] * 3, 2: [0.1] * 3, 3: [0.1, 0.2, 0.3], 4: [0.1, 0.2, 0.3]}


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_boxes_drawn_on_any_channel_count_come_out_rgb(channels):
    out = drawing.draw_boxes(_image(channels), BOX, ["0"])
    assert out.shape == (32, 40, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[30, 36], EXPECTED[channels], atol=1 / 255)  # far from the box and its label
    assert not np.allclose(out[16, 8], EXPECTED[channels], atol=0.05)  # the box's left edge is drawn


def test_an_image_of_five_channels_is_refused():
    with pytest.raises(ValueError, match="5 channels"):
        drawing.draw_boxes(np.zeros((8, 8, 5), np.float32), BOX)
