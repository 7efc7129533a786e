"""cv.images: JPEG and PNG encoding of RGB frames and JPEG decoding back, through the real
OpenCV codecs: shapes, dtypes, channel order, loss, and ValueError on bytes that are not an
image."""

from __future__ import annotations

import numpy as np
import pytest

from cv.images import decode_jpeg, encode_jpeg, encode_png


def _smooth(h: int, w: int) -> np.ndarray:
    """A gradient with some texture: what JPEG compresses well."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    return rgb.astype(np.uint8)


def test_a_jpeg_round_trip_keeps_shape_and_dtype_and_stays_close() -> None:
    rgb = _smooth(37, 53)  # odd sides: no padding to 8x8 blocks leaks out
    data = encode_jpeg(rgb)
    assert data[:3] == b"\xff\xd8\xff"
    back = decode_jpeg(data)
    assert back.shape == (37, 53, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_colours_come_back_in_rgb_order(channel: int) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., channel] = 255
    for back in (decode_jpeg(encode_jpeg(rgb)), decode_jpeg(encode_png(rgb))):
        assert int(np.argmax(back.reshape(-1, 3).mean(axis=0))) == channel
        assert back[8, 8, channel] >= 250


def test_lower_quality_gives_fewer_bytes_and_more_loss() -> None:
    # grey, so that chroma subsampling (the same at every quality) adds no loss of its own
    grey = _smooth(48, 64)[..., :1] + np.random.default_rng(0).normal(0, 12, (48, 64, 1))
    rgb = np.clip(np.repeat(grey, 3, axis=2), 0, 255).astype(np.uint8)
    low, high = encode_jpeg(rgb, quality=10), encode_jpeg(rgb, quality=95)
    assert len(low) < len(high) / 2

    def error(data: bytes) -> float:
        return float(np.abs(decode_jpeg(data).astype(int) - rgb.astype(int)).mean())

    assert error(low) > 2 * error(high)


def test_png_is_lossless() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (31, 45, 3), np.uint8)
    data = encode_png(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # OpenCV's decoder reads PNG too (dataset images may be .png; cv.model.viewdata)
    np.testing.assert_array_equal(decode_jpeg(data), rgb)


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"\xff\xd8\xff\xe0",  # a JPEG's first bytes only
        bytes(np.random.default_rng(2).integers(0, 256, 4096, np.uint8)),
    ],
    ids=["text", "jpeg-header", "noise"],
)
def test_bytes_that_are_not_an_image_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(data)


def test_a_truncated_jpeg_is_a_value_error() -> None:
    data = encode_jpeg(_smooth(64, 64))
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(data[:40])


def test_empty_bytes_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(b"")
