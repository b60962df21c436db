"""Images for the web app: uploads and canvas drawings converted to a model's input, and PNG rendering.

Conversions happen here, once; the result is stored as the job's input file (a lossless 8-bit PNG, or the
uploaded .npy array as is), which `sample.py --image` reads back bit for bit (`certifynet.data.image_tensor`
checks both).
"""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from certifynet.data import dataset_info, image_tensor
from certifynet.errors import CertifyNetError

MAX_PIXELS = 25_000_000        # refuse larger images before decoding them (decompression bombs)
MIN_SIDE = 8
DATA_URL_PREFIX = "data:image/png;base64,"
MNIST_BOX = 20                 # MNIST digits fill a 20×20 box centred in the 28×28 image


def _open(data: bytes, what: str):
    from PIL import Image, ImageOps
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in ("PNG", "JPEG"):
            raise CertifyNetError(f"{what} is a {im.format} image; upload a PNG or JPEG (or a .npy array)")
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise CertifyNetError(f"{what} is {w}×{h} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels")
        if min(w, h) < MIN_SIDE:
            raise CertifyNetError(f"{what} is {w}×{h} pixels; it needs at least {MIN_SIDE} pixels per side")
        im = ImageOps.exif_transpose(im)
        im.load()
        return im
    except CertifyNetError:
        raise
    except Exception as e:  # truncated, corrupt, not an image at all, ...
        raise CertifyNetError(f"{what} cannot be read as a PNG or JPEG image ({type(e).__name__})") from None


def _to_mode(im, channels: int, notes: list):
    """8-bit L (1 channel) or RGB (3), transparency composited onto white."""
    from PIL import Image
    if im.mode.startswith("I") or im.mode == "F":   # 16/32-bit grayscale: scale to 8 bits
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8), "L")
        notes.append("scaled to 8 bits")
    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        notes.append("transparency on white")
    target = "L" if channels == 1 else "RGB"
    if im.mode != target:
        notes.append("grayscale" if target == "L" else "RGB")
        im = im.convert(target)
    return im


def convert_image(data: bytes, filename: str, dataset: str, invert: str = "auto"):
    """(uint8 array, '.png', note) for an uploaded PNG/JPEG; (array, '.npy', note) for a .npy array.

    PNG/JPEG: to the model's channels, centre-cropped to its aspect ratio and resized (Lanczos); for
    1-channel models `invert='auto'` inverts a light background (MNIST digits are light on black).
    """
    c, h, w = dataset_info(dataset).shape
    what = f"'{filename}'"
    if filename.lower().endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise CertifyNetError(f"{what} is not a plain .npy array ({type(e).__name__})") from None
        image_tensor(arr, dataset, what)
        return arr, ".npy", "used as is"
    from PIL import Image, ImageOps
    im = _open(data, what)
    notes = [f"from {im.mode} {im.size[0]}×{im.size[1]}"]
    im = _to_mode(im, c, notes)
    if im.size != (w, h):
        im = ImageOps.fit(im, (w, h), Image.LANCZOS)
        notes.append(f"resized to {w}×{h}")
    if invert not in ("auto", "yes", "no"):
        raise CertifyNetError(f"invert must be auto, yes or no, got '{invert}'")
    a = np.asarray(im)
    border = np.concatenate([a[0].ravel(), a[-1].ravel(), a[:, 0].ravel(), a[:, -1].ravel()])
    if invert == "yes" or (invert == "auto" and c == 1 and border.mean() > 127):
        a = 255 - a
        notes.append("inverted" + (" (light background)" if invert == "auto" else ""))
    image_tensor(a, dataset, what)
    return np.ascontiguousarray(a), ".png", ", ".join(notes)


def convert_drawing(data_url: str, dataset: str):
    """(uint8 array, '.png', note) for a canvas drawing (light strokes on black, a PNG data URL).

    For 28×28 grayscale models the strokes' bounding box is scaled into a centred 20×20 box, as MNIST digits are.
    """
    if not data_url.startswith(DATA_URL_PREFIX):
        raise CertifyNetError("the drawing did not arrive as a PNG; draw a digit on the canvas first")
    try:
        data = base64.b64decode(data_url[len(DATA_URL_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise CertifyNetError("the drawing is not valid base64 PNG data") from None
    from PIL import Image, ImageOps
    c, h, w = dataset_info(dataset).shape
    im = _to_mode(_open(data, "the drawing"), c, [])
    box = im.convert("L").point(lambda v: 255 if v > 30 else 0).getbbox()
    if box is None:
        raise CertifyNetError("the drawing is empty; draw a digit on the canvas first")
    if c == 1 and (h, w) == (28, 28):
        im = im.crop(box)
        scale = MNIST_BOX / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.LANCZOS)
        canvas = Image.new("L", (w, h), 0)
        canvas.paste(im, ((w - im.size[0]) // 2, (h - im.size[1]) // 2))
        im, note = canvas, "digit fitted into the central 20×20 box"
    else:
        im, note = ImageOps.fit(im, (w, h), Image.LANCZOS), f"resized to {w}×{h}"
    a = np.ascontiguousarray(np.asarray(im))
    image_tensor(a, dataset, "the drawing")
    return a, ".png", note


def save_input(array: np.ndarray, f, suffix: str) -> None:
    """Write a converted input to the binary file f: uint8 → lossless PNG, float → .npy (exactly what `--image`
    reads back)."""
    if suffix == ".npy":
        np.save(f, array, allow_pickle=False)
        return
    from PIL import Image
    Image.fromarray(array, "L" if array.ndim == 2 else "RGB").save(f, format="PNG")


def png_bytes(x) -> bytes:
    """PNG of a [C,H,W] image tensor with values in [0,1] (clipped)."""
    from PIL import Image
    a = np.round(np.clip(x.detach().cpu().float().numpy(), 0, 1) * 255).astype(np.uint8)
    im = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
