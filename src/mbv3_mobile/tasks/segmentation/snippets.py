"""A segmenter's output in app code: logits C x R x R (class-major, the NCHW layout every format
hands back) -> the label map (argmax per pixel, in app code: measured cheaper than in the graph,
docs/segmentation.md) -> a coloured overlay to draw over the picture."""

from __future__ import annotations


def output_text(resolved) -> str:
    r = resolved.resolution
    return (f"1x{resolved.num_classes}x{r}x{r} logits per class and pixel at the input size (`labels.txt` names "
            "the classes; the label map is their argmax per pixel)")


def kotlin_result(var: str = "logits") -> str:
    """A class-major `FloatArray` (C x R x R) -> the label map, an `IntArray` of R x R class indices
    (`labels` is the `List<String>` of labels.txt)."""
    return (f"IntArray({var}.size / labels.size) {{ p -> labels.indices.maxByOrNull {{ c -> "
            f"{var}[c * ({var}.size / labels.size) + p] }}!! }}")


def swift_result(var: str = "logits") -> str:
    """A class-major `[Float]` (C x R x R) -> the label map `[Int]` (`labels` is labels.txt's lines)."""
    return (f"(0..<({var}.count / labels.count)).map {{ p in labels.indices.max {{ "
            f"{var}[$0 * ({var}.count / labels.count) + p] < {var}[$1 * ({var}.count / labels.count) + p] }}! }}")


def python_result(var: str = "logits") -> str:
    """A numpy array 1 x C x R x R -> the label map R x R (uint8 class indices)."""
    return f"{var}[0].argmax(0).astype('uint8')"



# What the app's function is called and returns (the formats' READMEs wrap the result in it).
KOTLIN_FUNCTION = ("segment", "IntArray")  # the label map, row-major R x R
SWIFT_FUNCTION = ("segment", "[Int]")
# ai.onnxruntime: a 4-D output as one class-major FloatArray
ORT_KOTLIN_OUTPUT = "(result[0] as OnnxTensor).floatBuffer.let { b -> FloatArray(b.remaining()).also { b.get(it) } }"

# Core ML: what the package outputs, and the Vision request that reads it
COREML_KIND = "semantic segmentation model"
COREML_OUTPUTS = {"logits": "MultiArray float32 (1, C, R, R): class scores per pixel, labels.txt order"}


def vision_request() -> str:
    """Vision hands the MultiArray back as a feature value; argmax per pixel -> label map -> RGBA overlay."""
    return """let request = VNCoreMLRequest(model: model) { request, _ in
    guard let logits = (request.results as? [VNCoreMLFeatureValueObservation])?.first?.featureValue.multiArrayValue
    else { return }
    let (c, h, w) = (logits.shape[1].intValue, logits.shape[2].intValue, logits.shape[3].intValue)
    let scores = UnsafeMutablePointer<Float>(OpaquePointer(logits.dataPointer))  // contiguous C x H x W
    var labelMap = [Int](repeating: 0, count: h * w)
    for p in 0..<(h * w) {
        var best = 0
        for k in 1..<c where scores[k * h * w + p] > scores[best * h * w + p] { best = k }
        labelMap[p] = best
    }
    // an overlay: one opaque colour per class, background transparent; draw it over the picture at
    // ~50 % opacity (e.g. a CALayer's opacity). UInt32 0xAABBGGRR is R, G, B, A in memory.
    let palette: [UInt32] = (0..<c).map { $0 == 0 ? 0 : 0xFF00_0000 | UInt32(($0 * 0x5F3A91) & 0xFF_FFFF) }
    var rgba = labelMap.map { palette[$0] }
    let overlay = CGContext(data: &rgba, width: w, height: h, bitsPerComponent: 8, bytesPerRow: 4 * w,
                            space: CGColorSpaceCreateDeviceRGB(),
                            bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue)!.makeImage()
    _ = overlay
}"""


def kotlin_overlay() -> str:
    """The label map -> an ARGB Bitmap to draw over the picture (background transparent)."""
    return """
// The label map as a coloured overlay (background transparent): draw it over the picture with a
// Paint of alpha ~128, scaled to the picture's size.
fun overlay(labelMap: IntArray, size: Int): android.graphics.Bitmap {
    val palette = IntArray(labels.size) { c -> if (c == 0) 0 else (0xFF shl 24) or ((c * 0x5F3A91) and 0xFFFFFF) }
    return android.graphics.Bitmap.createBitmap(IntArray(labelMap.size) { palette[labelMap[it]] }, size, size,
                                                android.graphics.Bitmap.Config.ARGB_8888)
}"""


def python_overlay(var: str = "label_map") -> str:
    """Lines that blend the label map over the picture (numpy + Pillow only)."""
    return f"""palette = np.array([(0, 0, 0)] + [((c * 97) % 256, (c * 57) % 256, (c * 173) % 256) for c in range(1, 256)], np.uint8)
shown = np.asarray(Image.open("picture.jpg").convert("RGB").resize({var}.shape[::-1]), np.float32)
painted = {var} > 0
shown[painted] = 0.45 * shown[painted] + 0.55 * palette[{var}[painted]]
Image.fromarray(shown.astype(np.uint8)).save("overlay.png")"""
