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
