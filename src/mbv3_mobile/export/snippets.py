"""App-side preprocessing snippets, generated from one `Preprocessing` so every published README
(Kotlin for Android, Swift for iOS, Python for anything) does the same resize + crop as the
reference implementation the gates used (`Preprocessing.geometry`, Pillow)."""

from __future__ import annotations

from mbv3_mobile.data.preprocess import Preprocessing


def _floats(values, suffix: str = "") -> str:
    return ", ".join(f"{v:g}{suffix}" for v in values)


def python(pre: Preprocessing) -> str:
    """The reference, line for line (Pillow; what the gates fed every format)."""
    r = pre.resolution
    interp = "Image.BICUBIC" if pre.interpolation == "bicubic" else "Image.BILINEAR"
    if pre.resize_shorter:
        s = pre.resize_shorter
        geometry = f"""w, h = im.size  # shorter side to {s} px, aspect kept (torchvision's Resize rule), then the centre {r}x{r}
im = im.resize(({s}, int({s} * h / w)) if w <= h else (int({s} * w / h), {s}), {interp})
left, top = int(round((im.width - {r}) / 2.0)), int(round((im.height - {r}) / 2.0))
im = im.crop((left, top, left + {r}, top + {r}))"""
    else:
        geometry = f"im = im.resize(({r}, {r}), {interp})  # the whole picture, no crop"
    return f"""```python
import numpy as np
from PIL import Image

im = Image.open("picture.jpg").convert("RGB")
{geometry}
x = (np.asarray(im, np.float32) / 255 - np.array([{_floats(pre.mean)}], np.float32)) / np.array([{_floats(pre.std)}], np.float32)
x = x.transpose(2, 0, 1)[None]  # 1x3x{r}x{r}, NCHW float32
```"""


def kotlin(pre: Preprocessing) -> str:
    """Android Bitmap -> normalised CHW floats. Bitmap scaling with filter = true is bilinear
    without antialiasing, so a large photo is first halved step by step (close to Pillow's
    antialiased resize; exact only up to resampling differences)."""
    r = pre.resolution
    if pre.resize_shorter:
        s = pre.resize_shorter
        crop = f"""    // shorter side to {s} px, then the centre {r}x{r}: the same as cropping the centred square
    // of side shorter * {r} / {s}, then scaling it to {r}x{r}
    val side = (minOf(picture.width, picture.height) * {r}f / {s}f).roundToInt()
    var bmp = Bitmap.createBitmap(picture, (picture.width - side) / 2, (picture.height - side) / 2, side, side)"""
    else:
        crop = "    var bmp = picture  // the whole picture, no crop (aspect ratio not kept)"
    return f"""```kotlin
import android.graphics.Bitmap
import kotlin.math.roundToInt

fun preprocess(picture: Bitmap): FloatArray {{
    val size = {r}
{crop}
    while (bmp.width >= 4 * size && bmp.height >= 4 * size) {{  // antialias big photos
        bmp = Bitmap.createScaledBitmap(bmp, bmp.width / 2, bmp.height / 2, true)
    }}
    bmp = Bitmap.createScaledBitmap(bmp, size, size, /* filter = bilinear */ true)
    val mean = floatArrayOf({_floats(pre.mean, "f")})
    val std = floatArrayOf({_floats(pre.std, "f")})
    val pixels = IntArray(size * size).also {{ bmp.getPixels(it, 0, size, 0, 0, size, size) }}
    val chw = FloatArray(3 * size * size)
    for (i in pixels.indices) {{
        val p = pixels[i]
        chw[i] = (((p shr 16) and 0xFF) / 255f - mean[0]) / std[0]
        chw[size * size + i] = (((p shr 8) and 0xFF) / 255f - mean[1]) / std[1]
        chw[2 * size * size + i] = ((p and 0xFF) / 255f - mean[2]) / std[2]
    }}
    return chw  // 1x3x{r}x{r}, NCHW
}}
```"""


def swift_crop(pre: Preprocessing) -> str:
    """Vision request options and the crop that makes Vision's scaling match the reference."""
    r = pre.resolution
    if pre.resize_shorter:
        s = pre.resize_shorter
        return f"""// shorter side to {s} px then the centre {r}x{r} = crop the centred square of side
// shorter * {r} / {s}, then let Vision scale it to {r}x{r}
let shorter = min(picture.width, picture.height)
let side = Int((Double(shorter) * {r}.0 / {s}.0).rounded())
let square = picture.cropping(to: CGRect(x: (picture.width - side) / 2, y: (picture.height - side) / 2,
                                         width: side, height: side))!
request.imageCropAndScaleOption = .scaleFill
try VNImageRequestHandler(cgImage: square, options: [:]).perform([request])"""
    return f"""request.imageCropAndScaleOption = .scaleFill  // the whole picture to {r}x{r}, no crop, as in training
try VNImageRequestHandler(cgImage: picture, options: [:]).perform([request])"""
