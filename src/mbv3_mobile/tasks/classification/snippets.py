"""A classifier's output in app code: what it is, and the expression that turns it into a label
(the formats' READMEs put these into their Kotlin, Swift and Python snippets)."""

from __future__ import annotations


def output_text(resolved) -> str:
    return f"1x{resolved.num_classes} logits (`labels.txt` names them)"


def kotlin_result(var: str = "logits") -> str:
    """A `FloatArray` of logits -> the label (a `List<String>` named `labels`)."""
    return f"labels[{var}.indices.maxByOrNull {{ {var}[it] }}!!]"


def swift_result(var: str = "logits") -> str:
    """A `[Float]` of logits -> the index into labels.txt."""
    return f"{var}.indices.max {{ {var}[$0] < {var}[$1] }}!"


def python_result(var: str = "logits") -> str:
    """A numpy array of logits -> the label."""
    return f'open("labels.txt").read().split("\\n")[int({var}.argmax())]'


# What the app's function is called and returns (the formats' READMEs wrap the result in it).
KOTLIN_FUNCTION = ("classify", "String")
SWIFT_FUNCTION = ("classify", "Int")  # an index into labels.txt
ORT_KOTLIN_OUTPUT = "(result[0].value as Array<FloatArray>)[0]"  # ai.onnxruntime: the output as logits

# Core ML: what the package outputs, and the Vision request that reads it
COREML_KIND = "classifier"
COREML_OUTPUTS = {"classLabel": "string", "classLabel_probs": "label -> softmax probability", "logits": "float32 (1, C)"}


def vision_request() -> str:
    return """let request = VNCoreMLRequest(model: model) { request, _ in
    guard let best = (request.results as? [VNClassificationObservation])?.first else { return }
    print(best.identifier, best.confidence)
}"""


def kotlin_overlay() -> str:
    return ""  # a label is the result; nothing to draw


def python_overlay(var: str = "label") -> str:
    return ""
