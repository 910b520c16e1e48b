"""Image files as people have them: colour profiles survive (or are dropped where they would lie), 16-bit too."""

import io

import numpy as np
from PIL import Image, ImageCms, ImageOps

from deblur.imagefile import decode, encode, output_format

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_cmyk_profile_is_not_copied_onto_rgb_output(real_photo):
    src = io.BytesIO()
    Image.fromarray(real_photo[:64, :80]).convert("CMYK").save(src, format="JPEG", quality=95, icc_profile=SRGB)
    img = decode(src.getvalue())
    assert img.rgb.shape == (64, 80, 3) and img.rgb.dtype == np.uint8
    assert "icc_profile" not in img.info  # it described CMYK values, not the RGB the model and the output hold
    out = Image.open(io.BytesIO(encode(img.rgb, img, "JPEG")))
    assert out.mode == "RGB" and out.info.get("icc_profile") != SRGB
    # the colours are still the photo's (Pillow's plain conversion, since the profile does not fit CMYK)
    assert np.abs(np.asarray(out, np.int16) - real_photo[:64, :80]).mean() < 12


def test_sixteen_bit_output_keeps_its_colour_profile(real_photo, tmp_path):
    deep = real_photo[:48, :64].astype(np.uint16) * 257
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"deep.{fmt.lower()}"
        if fmt == "PNG":
            from deblur.imagefile import _png

            path.write_bytes(_png(deep[..., ::-1], {"icc_profile": SRGB}, 1))
        else:
            import tifffile

            tifffile.imwrite(path, deep, photometric="rgb", extratags=[(34675, 7, len(SRGB), SRGB, True)])
        img = decode(path.read_bytes())
        assert img.rgb.dtype == np.uint16 and img.info.get("icc_profile") == SRGB, fmt
        data = encode(img.rgb, img, fmt)
        again = decode(data)
        assert again.rgb.dtype == np.uint16 and np.array_equal(again.rgb, deep), fmt
        assert again.info.get("icc_profile") == SRGB, fmt  # it used to be dropped for 16-bit files
        assert Image.open(io.BytesIO(data)).info.get("icc_profile") == SRGB, fmt


def test_bit_depth_is_read_from_the_header(real_photo, tmp_path):
    """The bit depth comes from the header: every 16-bit form reaches OpenCV and stays 16-bit, 8-bit stays 8-bit."""
    import cv2
    import tifffile

    deep = real_photo[:40, :56].astype(np.uint16) * 257 + 3
    cases = {
        "rgb16.png": cv2.imencode(".png", deep[..., ::-1])[1].tobytes(),
        "gray16.png": cv2.imencode(".png", deep[..., 0])[1].tobytes(),
        "rgba16.png": cv2.imencode(".png", np.dstack([deep[..., ::-1], deep[..., :1]]))[1].tobytes(),
    }
    buf = io.BytesIO()
    tifffile.imwrite(buf, deep, photometric="rgb")
    cases["rgb16.tif"] = buf.getvalue()
    for name, data in cases.items():
        img = decode(data, name)
        assert img.rgb.dtype == np.uint16 and img.rgb.shape == (40, 56, 3), name
        assert img.gray == name.startswith("gray") and (img.alpha is not None) == name.startswith("rgba"), name
    eight = io.BytesIO()
    Image.fromarray(real_photo[:40, :56]).save(eight, format="PNG")
    img = decode(eight.getvalue())
    assert img.rgb.dtype == np.uint8 and np.array_equal(img.rgb, real_photo[:40, :56])


def test_png_compression_reaches_the_encoder_and_never_changes_pixels(real_photo):
    img = _plain(real_photo)
    stored, fast, small = (encode(img.rgb, img, "PNG", png_compression=c) for c in (0, 1, 9))
    assert len(stored) > 1.2 * max(len(fast), len(small))  # level 0 stores; 1 vs 9 depends on the photo
    assert fast != small  # 1 is zlib's RLE strategy, 9 the standard one at level 9: both reach the encoder
    for data in (stored, fast, small):
        assert np.array_equal(decode(data).rgb, real_photo)


def _plain(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return decode(buf.getvalue())


def test_camera_jpeg_with_an_embedded_preview_is_read_as_the_jpeg_it_is(real_photo):
    """Phones and cameras write Multi-Picture JPEGs (the photo, then a preview); Pillow calls them MPO."""
    photo = Image.fromarray(real_photo[:48, :64])
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    buf = io.BytesIO()
    photo.save(buf, format="MPO", save_all=True, append_images=[photo.resize((16, 12))], exif=exif, quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    img = decode(buf.getvalue(), "IMG_0001.JPG")
    assert img.format == "JPEG" and output_format("same", img.format) == "JPEG"
    assert img.rgb.shape == (64, 48, 3)  # the photo (not its 16×12 preview), upright
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert np.array_equal(img.rgb, upright)
    assert Image.open(io.BytesIO(encode(img.rgb, img, "JPEG"))).format == "JPEG"


def test_png_output_keeps_profile_exif_alpha_and_gray(real_photo):
    """PNG is written by OpenCV, which knows no metadata: the chunks are added back and Pillow reads them."""
    exif = Image.Exif()
    exif[0x010F] = "deblur-test-camera"  # Make
    src = io.BytesIO()
    Image.fromarray(real_photo[:48, :64]).save(src, format="JPEG", quality=95, icc_profile=SRGB, exif=exif.tobytes())
    img = decode(src.getvalue())
    out = Image.open(io.BytesIO(encode(img.rgb, img, "PNG")))
    assert out.format == "PNG" and out.info.get("icc_profile") == SRGB
    assert out.getexif().get(0x010F) == "deblur-test-camera"
    assert np.array_equal(np.asarray(out), img.rgb)
    rgba = np.dstack([real_photo[:48, :64], np.arange(64, dtype=np.uint8)[None].repeat(48, 0)])
    for mode, arr in (("RGBA", rgba), ("L", real_photo[:48, :64, 1]), ("LA", rgba[..., 2:])):
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, format="PNG")
        img = decode(buf.getvalue())
        back = Image.open(io.BytesIO(encode(img.rgb, img, "PNG")))
        assert back.mode == mode and np.array_equal(np.asarray(back), arr), mode


def test_sixteen_bit_colour_with_alpha_in_every_output_format(real_photo):
    """16-bit colour + 16-bit alpha (RGBA PNG) and 16-bit colour + 8-bit alpha both encode to every format."""
    import cv2

    deep = real_photo[:40, :56].astype(np.uint16) * 257
    alpha16 = np.tile(np.arange(56, dtype=np.uint16) * 1000, (40, 1))
    img = decode(cv2.imencode(".png", np.dstack([deep[..., ::-1], alpha16]))[1].tobytes())
    assert img.rgb.dtype == np.uint16 and img.alpha.dtype == np.uint16
    for fmt in ("PNG", "TIFF", "WEBP", "JPEG"):
        out = decode(encode(img.rgb, img, fmt))
        assert out.rgb.shape == (40, 56, 3), fmt
        assert (out.alpha is not None) == (fmt != "JPEG"), fmt
    from dataclasses import replace

    mixed = replace(img, alpha=(alpha16 >> 8).astype(np.uint8))  # 8-bit alpha beside 16-bit colour
    back = decode(encode(img.rgb, mixed, "PNG"))
    assert (
        back.rgb.dtype == np.uint16 and back.alpha.dtype == np.uint16 and np.array_equal(back.alpha >> 8, mixed.alpha)
    )
