"""Image files as people have them: colour profiles survive (or are dropped where they would lie), 16-bit too."""
import io

import numpy as np
from PIL import Image, ImageCms

from deblur.bulk.imagefile import decode, encode

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
            import cv2

            ok, buf = cv2.imencode(".png", deep[..., ::-1])
            from deblur.bulk.imagefile import _with_png_icc

            path.write_bytes(_with_png_icc(buf.tobytes(), SRGB))
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
