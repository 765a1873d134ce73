import io

import pytest
from PIL import Image

from recaption.samples import sample as st
from recaption.samples.images import ImageDecodeError, decode_image, decode_sample
from recaption.samples.sample import Sample

from ..conftest import image_bytes


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _cmyk_jpeg():
    return _save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG")


def _png16():
    img = Image.new("I;16", (16, 8))
    img.putpixel((0, 0), 65535)
    return _save(img, "PNG")


def _palette_transparent():
    img = Image.new("P", (10, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((5, 5), 1)
    return _save(img, "PNG", transparency=0)


def _animated_gif():
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


DECODABLE = {
    "rgb_jpeg": lambda: image_bytes(),
    "cmyk_jpeg": _cmyk_jpeg,
    "png_16bit": _png16,
    "palette_transparency": _palette_transparent,
    "greyscale": lambda: image_bytes(mode="L", fmt="PNG"),
    "greyscale_alpha": lambda: _save(Image.new("LA", (9, 9), (100, 50)), "PNG"),
    "rgba_webp": lambda: _save(Image.new("RGBA", (9, 9), (1, 2, 3, 128)), "WEBP"),
    "animated_gif": _animated_gif,
    "one_pixel": lambda: image_bytes(1, 1, fmt="PNG"),
}


@pytest.mark.parametrize("case", sorted(DECODABLE))
def test_decodable_images_become_rgb(case):
    img = decode_image(DECODABLE[case]())
    assert img.mode == "RGB"
    assert img.size[0] >= 1 and img.size[1] >= 1


def test_cmyk_colour_is_converted_not_garbled():
    r, g, b = decode_image(_cmyk_jpeg()).getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60  # C=0 M=255 Y=255 K=0 is red


def test_sixteen_bit_scales_instead_of_saturating():
    img = decode_image(_png16())
    assert img.getpixel((0, 0))[0] == 255 and img.getpixel((1, 0))[0] == 0


def test_transparency_composited_on_white():
    img = decode_image(_palette_transparent())
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((5, 5)) == (0, 0, 255)


def test_animated_gif_yields_first_frame():
    r, g, b = decode_image(_animated_gif()).getpixel((6, 6))
    assert r > 200 and g < 50 and b < 50


def test_large_images_are_shrunk_to_max_side():
    img = decode_image(image_bytes(3000, 1000), max_side=512)
    assert max(img.size) == 512 and abs(img.size[0] / img.size[1] - 3) < 0.05


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", st.EMPTY_IMAGE),
        (b"this is not an image at all", st.DECODE_ERROR),
        (image_bytes(64, 64)[:300], st.DECODE_ERROR),  # truncated JPEG
        (image_bytes(64, 64, fmt="PNG")[:200], st.DECODE_ERROR),  # truncated PNG
        (None, st.MISSING_IMAGE),
    ],
    ids=["zero_bytes", "not_an_image", "truncated_jpeg", "truncated_png", "missing"],
)
def test_undecodable_images_raise_with_status(data, status):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.status == status
    assert str(info.value)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(image_bytes(200, 200, fmt="PNG"), max_pixels=10_000)
    assert info.value.status == st.TOO_LARGE and "200x200" in str(info.value)


def test_pillow_bomb_error_is_a_status_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(image_bytes(100, 100, fmt="PNG"))
    assert info.value.status == st.TOO_LARGE


def test_decode_sample_marks_failure_and_frees_bytes():
    s = decode_sample(Sample(key="k", image_bytes=b"junk"))
    assert s.status == st.DECODE_ERROR and s.error and s.image is None and s.image_bytes is None
    good = decode_sample(Sample(key="g", image_bytes=image_bytes()))
    assert good.ok and good.image.mode == "RGB" and good.image_bytes is None


def test_a_reduced_decode_shrunk_to_max_side_keeps_the_picture_in_place():
    import numpy as np

    from recaption.samples.shards import bundled_samples

    buf = io.BytesIO()  # 4161x3121 at 1/8 is 521x391 pixels holding 520.125x390.125 of picture
    Image.open(io.BytesIO(bundled_samples()[0].image)).convert("RGB").resize((4161, 3121)).save(buf, "JPEG")
    img = decode_image(buf.getvalue(), max_side=512)
    full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(img.size, Image.Resampling.BICUBIC)
    err = np.mean((np.asarray(img, dtype=float) - np.asarray(full, dtype=float)) ** 2)
    assert img.size == (512, 384) and 10 * np.log10(255**2 / err) > 36, 10 * np.log10(255**2 / err)
    # a reduced decode that already fits max_side is cut to its picture too (385 rows, 384.5 of it)
    buf = io.BytesIO()
    Image.open(io.BytesIO(bundled_samples()[0].image)).convert("RGB").resize((1024, 769)).save(buf, "JPEG")
    assert decode_image(buf.getvalue(), max_side=512).size == (512, 384)
