"""The download's image path: a JPEG decoded only as large as the resize needs, resized by the
filter asked for, stored byte for byte when nothing would change. Quality is measured against
Pillow's full-size Lanczos result."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from recaption.downloads import DownloadConfig
from recaption.downloads.plain_jpeg import scaled_decode_size
from recaption.downloads.process import ProcessError, process_image, target_size
from recaption.samples.shards import bundled_samples


def photo(width: int, height: int, quality: int = 90, mode: str = "RGB",
          orientation: int | None = None) -> bytes:
    image = Image.open(io.BytesIO(bundled_samples()[0].image)).convert("RGB").resize((width, height))
    buf = io.BytesIO()
    exif = None
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
    image.convert(mode).save(buf, "JPEG", quality=quality, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def config(**options) -> DownloadConfig:
    return DownloadConfig(output="unused", **options)


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    err = np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(255**2 / err)


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_a_big_photo_decoded_reduced_matches_the_full_size_lanczos_result(mode):
    data = photo(1600, 1200)
    stored = process_image(data, None, config(resize=mode, image_size=256, quality=100))  # auto: lanczos

    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = full.resize(target_size(mode, 256, 1600, 1200), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if mode == "center_crop":
        left = (reference.width - 256) // 2
        reference = reference.crop((left, 0, left + 256, 256))
    got = decoded(stored.data)
    assert got.size == (stored.width, stored.height)
    if mode != "border":
        assert got.size == reference.size
        assert psnr(got, reference) > 38  # measured ~45 dB (docs/benchmarks.md); JPEG q100 adds a little
    # the size as sent, not the reduced decode's
    assert (stored.original_width, stored.original_height) == (1600, 1200)


def test_min_size_and_aspect_ratio_judge_the_size_as_sent():
    data = photo(1600, 400)
    with pytest.raises(ProcessError, match="aspect ratio 4.00"):
        process_image(data, None, config(image_size=64, max_aspect_ratio=3.0))
    stored = process_image(data, None, config(image_size=64, min_size=400))
    assert (stored.original_width, stored.original_height) == (1600, 400)
    with pytest.raises(ProcessError, match="1600x400 is under --min-size 401"):
        process_image(data, None, config(image_size=64, min_size=401))


def test_an_exif_rotated_photo_is_stored_upright_at_the_right_size():
    data = photo(1600, 1200, orientation=6)  # stored landscape, shown portrait
    stored = process_image(data, None, config(image_size=256))
    assert (stored.original_width, stored.original_height) == (1200, 1600)
    assert (stored.width, stored.height) == (256, 341)
    assert decoded(stored.data).size == (256, 341)
    kept = process_image(data, None, config(resize="none"))
    assert kept.data != data and decoded(kept.data).size == (1200, 1600)  # turned, so re-encoded


def test_an_image_that_needs_no_change_is_stored_byte_for_byte():
    data = photo(640, 480)
    assert process_image(data, None, config(resize="none")).data == data
    assert process_image(data, None, config(resize="keep_ratio", image_size=480)).data == data
    resized = process_image(data, None, config(resize="keep_ratio", image_size=240))
    assert resized.data != data and decoded(resized.data).size == (320, 240)
    png = process_image(data, None, config(resize="none", format="png"))
    assert decoded(png.data).size == (640, 480) and png.ext == "png"
    cmyk = photo(64, 48, mode="CMYK")  # readers disagree on CMYK JPEGs: always stored as RGB
    stored = process_image(cmyk, None, config(resize="none"))
    assert stored.data != cmyk and Image.open(io.BytesIO(stored.data)).mode == "RGB"


@pytest.mark.parametrize("resample", ["auto", "lanczos", "bicubic", "hamming", "bilinear"])
def test_every_resize_filter_stays_close_to_lanczos(resample):
    data = photo(640, 480)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = full.resize((341, 256), Image.Resampling.LANCZOS, reducing_gap=3.0)
    stored = process_image(data, None, config(image_size=256, resample=resample, quality=100))
    assert psnr(decoded(stored.data), reference) > 35


def test_an_unknown_filter_is_refused_naming_the_choices():
    choices = "auto, hamming, lanczos, bicubic, bilinear"
    with pytest.raises(ValueError, match=f"--resample must be one of {choices}"):
        config(resample="nearest")


@pytest.mark.parametrize("mode", ["RGB", "L"])  # (grey is stored as RGB, as every image is)
def test_the_jpeg_encoder_writes_what_pillows_would_in_the_right_colours(mode):
    """The stored JPEG is encoded off the GIL (OpenCV) but is the same file Pillow writes with
    the same quality: same chroma subsampling, tables and colours (a red photo stays red)."""
    image = Image.open(io.BytesIO(photo(300, 200))).convert(mode)
    if mode == "RGB":
        image.paste((255, 0, 0), (0, 0, 100, 100))
    stored = process_image(_png(image), None, config(image_size=100, resample="lanczos", quality=87))
    resized = image.convert("RGB").resize((150, 100), Image.Resampling.LANCZOS, reducing_gap=3.0)
    by_pillow = io.BytesIO()
    resized.save(by_pillow, "JPEG", quality=87)
    assert stored.ext == "jpg" and stored.data == by_pillow.getvalue()
    if mode == "RGB":
        red, green, blue = decoded(stored.data).getpixel((20, 20))
        assert red > 200 and green < 60 and blue < 60


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_a_resize_target_over_the_pixel_limit_is_that_rows_failure_before_any_allocation():
    """A 100000x2 banner (a 2 KB PNG) at keep_ratio 512 would be 25,600,000x512 pixels: 52 GB."""
    banner = _png(Image.new("RGB", (100_000, 2), "white"))
    with pytest.raises(ProcessError, match="would be 25600000x512, over --max-pixels") as caught:
        process_image(banner, None, config(image_size=512))
    assert caught.value.outcome == "too_many_pixels"
    assert process_image(banner, None, config(resize="border", image_size=512)).width == 512  # fits
    cropped = process_image(banner, None, config(resize="center_crop", image_size=512))  # only the centre
    assert (cropped.width, cropped.height) == (512, 512)


def test_an_image_size_whose_square_is_over_the_pixel_limit_is_refused():
    with pytest.raises(ValueError, match="--image-size 100000 makes every image at least 100000x100000"):
        config(image_size=100_000)
    assert config(image_size=100_000, resize="none").image_size == 100_000  # not used
    assert config(image_size=20_000, max_pixels=400_000_000).image_size == 20_000


def fast_path_calls(monkeypatch) -> list[tuple[int, int]]:
    """The targets process_image handed to the GIL-free plain-JPEG path."""
    from recaption.downloads import process

    calls: list[tuple[int, int]] = []
    real = process.resize_plain_jpeg

    def spy(data, size, target, quality):
        calls.append(target)
        return real(data, size, target, quality)

    monkeypatch.setattr(process, "resize_plain_jpeg", spy)
    return calls


def img2datasets_pixels(data: bytes, target: tuple[int, int], quality: int = 95) -> Image.Image:
    """img2dataset's own path: OpenCV decode at full size, INTER_AREA, OpenCV encode."""
    import cv2

    pixels = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), target,
                        interpolation=cv2.INTER_AREA)
    encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    return Image.fromarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])


@pytest.mark.parametrize("size", [(640, 480), (560, 420), (480, 360), (600, 450), (520, 390), (720, 540)])
def test_a_plain_jpeg_within_2x_takes_the_gil_free_path_at_img2datasets_quality(monkeypatch, size):
    calls = fast_path_calls(monkeypatch)
    data = photo(*size)
    stored = process_image(data, None, config(image_size=256, quality=95))
    target = target_size("keep_ratio", 256, *size)
    assert calls == [target]
    got = decoded(stored.data)
    assert got.size == target == (stored.width, stored.height)
    # against Pillow's full-size Lanczos, at least as close as img2dataset's path (some sizes
    # decode at M/8: 640x480 at 5/8, 560x420 at 6/8; 600x450 has no whole-pixel M/8 that fits)
    reference = decoded(data).resize(target, Image.Resampling.LANCZOS)
    assert psnr(got, reference) >= psnr(img2datasets_pixels(data, target), reference) - 0.5
    eighths = {(640, 480): 5, (560, 420): 6, (480, 360): 7}.get(size, 8)  # (the others: no M/8 fits)
    assert scaled_decode_size(size, target) == (size[0] * eighths // 8, size[1] * eighths // 8)
    grey = process_image(photo(400, 300, mode="L"), None, config(image_size=256))
    assert calls[-1] == (341, 256) and decoded(grey.data).size == (341, 256)


@given(width=st.integers(1, 5000), height=st.integers(1, 5000), side=st.integers(1, 1000))
def test_a_scaled_decode_covers_the_picture_in_whole_pixels_above_the_target(width, height, side):
    from recaption.downloads.plain_jpeg import CUBIC_BELOW, REDUCED_DECODE_MARGIN

    target = target_size("keep_ratio", side, width, height)
    reduced = scaled_decode_size((width, height), target)
    fits = [m for m in range(1, 8) if not (width * m % 8 or height * m % 8)
            and REDUCED_DECODE_MARGIN <= min(width * m / 8 / target[0], height * m / 8 / target[1])]
    # the smallest whole-pixel scale 1.1x above the target is taken when bicubic finishes from it
    assert (reduced != (width, height)) == bool(fits and min(width * fits[0] / 8 / target[0],
                                                             height * fits[0] / 8 / target[1]) < CUBIC_BELOW)
    if reduced != (width, height):
        eighths = reduced[0] * 8 // width
        assert 1 <= eighths < 8 and reduced == (width * eighths / 8, height * eighths / 8)
        shrink = min(reduced[0] / target[0], reduced[1] / target[1])
        assert REDUCED_DECODE_MARGIN <= shrink < CUBIC_BELOW


@pytest.mark.parametrize("orientation", range(10))  # (0 and 9: not orientations, left as stored)
@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
def test_a_reduced_decode_of_a_side_it_does_not_divide_keeps_the_picture_in_place(orientation, mode):
    # 1001x751 at 1/4 is 251x188 pixels holding 250.25x187.75 of picture: resized whole, the
    # picture was stretched by up to a pixel (28.7 dB; 25 with the padding on the wrong side)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo(1001, 751))).save(buf, "JPEG", quality=90, exif=exif)
    stored = process_image(buf.getvalue(), None, config(image_size=128, resize=mode, resample="lanczos"))
    upright = ImageOps.exif_transpose(decoded(buf.getvalue()))
    target = target_size(mode, 128, *upright.size)
    reference = upright.resize(target, Image.Resampling.LANCZOS)
    if mode == "center_crop":
        left, top = (target[0] - 128) // 2, (target[1] - 128) // 2
        reference = reference.crop((left, top, left + 128, top + 128))
    elif mode == "border":
        reference = ImageOps.pad(reference, (128, 128), color=(255, 255, 255))
    assert psnr(decoded(stored.data), reference) > 34  # (36 here)


def test_an_mpo_is_the_jpeg_of_its_first_picture(monkeypatch):
    # an MPO (stereo pairs, Ultra HDR gain maps) is a JPEG with more pictures after its first
    calls = fast_path_calls(monkeypatch)
    first = decoded(photo(640, 480))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[first.resize((160, 120))])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    stored = process_image(data, None, config(image_size=256))
    assert calls == [(341, 256)] and (stored.width, stored.height, stored.ext) == (341, 256, "jpg")
    kept = process_image(data, None, config(resize="none", format="keep"))
    assert kept.data == data and kept.ext == "jpg"  # byte for byte, as --format keep promises


@pytest.mark.parametrize("case", ["lanczos asked", "rotated", "cmyk", "reduced decode fits", "png out"])
def test_everything_else_goes_pillows_way(monkeypatch, case):
    calls = fast_path_calls(monkeypatch)
    data, options = photo(640, 480), {"image_size": 256}
    if case == "lanczos asked":
        options["resample"] = "lanczos"
    elif case == "rotated":
        data = photo(640, 480, orientation=6)
    elif case == "cmyk":
        data = photo(640, 480, mode="CMYK")
    elif case == "reduced decode fits":
        data = photo(1600, 1200)
    else:
        options["format"] = "png"
    stored = process_image(data, None, config(**options))
    assert calls == [] and stored.width * stored.height > 0


def test_a_jpeg_libjpeg_warns_about_is_judged_by_pillow_and_nothing_is_printed(capfd):
    data = photo(640, 480)
    scan_start = data.index(b"\xff\xda")
    extraneous = data[:scan_start] + b"\x00\x00\x00" + data[scan_start:]  # libjpeg: "Corrupt JPEG data"
    stored = process_image(extraneous, None, config(image_size=256))
    assert decoded(stored.data).size == (341, 256)  # Pillow decodes it, as before this path
    with pytest.raises(ProcessError) as refused:
        process_image(data[: len(data) // 2], None, config(image_size=256))
    assert refused.value.outcome == "decode_error" and "truncated" in str(refused.value)
    # stored as sent (--resize none, or already the target's size): still read through first
    assert process_image(extraneous, None, config(resize="none")).data == extraneous
    for options in ({"resize": "none"}, {"image_size": 480}):
        with pytest.raises(ProcessError) as refused:
            process_image(data[: len(data) - 100], None, config(**options))
        assert refused.value.outcome == "decode_error"
    out, err = capfd.readouterr()
    assert "JPEG" not in out + err  # (OpenCV's decoder would print libjpeg's warnings)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("cut", [1, 2])
def test_a_jpeg_without_its_end_marker_is_stored_with_it(progressive, cut):
    # some servers send every block but not the final FF D9; browsers and OpenCV show such files
    from recaption.samples.images import decode_image

    buf = io.BytesIO()
    decoded(photo(640, 480)).save(buf, "JPEG", quality=90, progressive=progressive)
    whole = buf.getvalue()
    sent = whole[:-cut]
    stored = process_image(sent, None, config(image_size=256))
    assert (stored.width, stored.height) == (341, 256) and psnr(decoded(stored.data), decoded(whole)
                                                                .resize((341, 256))) > 35
    assert stored.sha256 == hashlib.sha256(sent).hexdigest()  # (of the bytes sent, as DataComp's)
    as_sent = process_image(sent, None, config(resize="none"))
    assert as_sent.data.endswith(b"\xff\xd9") and decoded(as_sent.data).size == (640, 480)
    assert decode_image(sent).size == (640, 480)  # the caption path reads it too


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.05, 0.995))
def test_a_jpeg_cut_inside_its_data_is_still_refused(fraction):
    data = photo(320, 240)
    cut = data[: min(int(len(data) * fraction), len(data) - 3)]
    with pytest.raises(ProcessError) as refused:
        process_image(cut, None, config(image_size=128))
    assert refused.value.outcome == "decode_error"


def test_a_plain_jpeg_stored_as_sent_is_read_at_an_eighth_of_its_size(monkeypatch):
    from recaption.downloads import process

    checked = []
    monkeypatch.setattr(process, "decodes_cleanly", lambda data, size: checked.append(size) or True)
    data = photo(1600, 1200)
    assert process_image(data, None, config(resize="none")).data == data
    assert process_image(data, None, config(resize="none", format="keep")).data == data
    assert checked == [(1600, 1200), (1600, 1200)]


def test_a_jpeg_over_pillows_bomb_limit_is_refused_by_pillows_rule_without_a_warning(monkeypatch):
    import warnings

    data = photo(40, 30)  # 1200 pixels: over the limit below, under twice it (a warning, not an error)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a process that lowered Pillow's limit
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ProcessError) as refused:
            process_image(data, None, config(image_size=32))
    assert refused.value.outcome == "too_many_pixels" and "Pillow's limit" in str(refused.value)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("options, piece", [
    ({"timeout": float("nan")}, "--timeout must be a positive number"),
    ({"timeout": float("inf")}, "--timeout must be a positive number"),
    ({"max_bytes": 0}, "--max-bytes must be at least 1"),
    ({"max_aspect_ratio": float("nan")}, "--max-aspect-ratio must be at least 1"),
    ({"retry_backoff": -1.0}, "retry_backoff must be 0 or more"),
])
def test_numbers_no_download_could_use_are_refused_before_any_work(options, piece):
    with pytest.raises(ValueError, match=piece):
        config(**options)
