"""Photos crafted to break an image library, for the unit and the integration tests."""

from io import BytesIO

from PIL import ExifTags, Image


def corrupt_gps_jpeg() -> bytes:
    """A JPEG with an Orientation tag and a GPS block whose entry count is corrupt: its
    header reads well, and Pillow 13's `exif_transpose` raises TypeError on it (not one of
    its documented errors), which once stopped the photo worker for good."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.GPSInfo] = {2: (1.0, 2.0, 3.0)}
    out = BytesIO()
    Image.new("RGB", (64, 48)).save(out, "JPEG", exif=exif.tobytes())
    data = bytearray(out.getvalue())
    data[data.find(b"Exif\0\0") + 6 + 39] = 36
    return bytes(data)
