import io

import pytest
from PIL import Image
from rawdata import corrupt_jpeg, image_bytes

from fastmlic.shards.images import BadImage, prepare_image


def decode(data):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("progressive", [False, True])
def test_plain_jpegs_pass_through_byte_for_byte(rng, mode, progressive):
    data = image_bytes(rng, (37, 23), mode=mode, progressive=progressive)
    out = prepare_image(data)
    assert out.jpeg == data and out.reencoded is None and (out.width, out.height) == (37, 23)


@pytest.mark.parametrize(
    "mode, fmt, reason",
    [
        ("RGB", "PNG", "format PNG"),
        ("RGBA", "PNG", "format PNG"),
        ("CMYK", "JPEG", "mode CMYK"),
    ],
)
def test_other_images_become_rgb_jpegs(rng, mode, fmt, reason):
    out = prepare_image(image_bytes(rng, (33, 21), mode=mode, fmt=fmt))
    im = decode(out.jpeg)
    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (33, 21))
    assert out.reencoded == reason


def test_exif_rotation_is_applied_at_shard_time(rng):
    im = Image.open(io.BytesIO(image_bytes(rng, (40, 20))))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    out = prepare_image(buf.getvalue())
    assert out.reencoded == "exif orientation"
    assert decode(out.jpeg).size == (20, 40)


def test_max_side_downsizes_and_keeps_aspect(rng):
    out = prepare_image(image_bytes(rng, (200, 100)), max_side=64)
    assert decode(out.jpeg).size == (64, 32) and out.reencoded == "max side"
    small = image_bytes(rng, (50, 40))
    assert prepare_image(small, max_side=64).jpeg == small


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"not an image at all", "not a JPEG or any image format Pillow knows"),
        (None, "cannot be decoded"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(rng, data, message):
    with pytest.raises(BadImage, match=message):
        prepare_image(corrupt_jpeg(rng) if data is None else data)


def test_structure_check_catches_truncation_and_keeps_good_jpegs(rng):
    good = image_bytes(rng, (41, 29), progressive=bool(rng.integers(2)))
    assert prepare_image(good, check="structure").jpeg == good
    for bad, message in [
        (good[: len(good) // 2], "truncated"),
        (good[:-2], "no end-of-image"),
        (b"\xff\xd8" + b"\x00" * 20, "marker structure|not a JPEG or any image format Pillow knows"),
    ]:
        with pytest.raises(BadImage, match=message):
            prepare_image(bad, check="structure")


def test_predict_decodes_a_huge_jpeg_reduced_and_without_pils_pixel_warning(tmp_path, monkeypatch):
    import warnings

    import numpy as np

    from fastmlic.predict import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3_000_000)  # PIL warns above it, as for 2000 x 2000
    Image.new("RGB", (2000, 2000), (200, 10, 10)).save(tmp_path / "huge.jpg", quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning fails the test
        image = load_image(tmp_path / "huge.jpg", 64)
    assert image.shape == (64, 64, 3) and np.abs(image.reshape(-1, 3).mean(0) - (200, 10, 10)).max() < 4
