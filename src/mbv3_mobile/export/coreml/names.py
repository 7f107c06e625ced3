"""The package's input / output names, shared by conversion, metadata and the runtimes."""

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBS_OUTPUT = "classLabel_probs"
LOGITS_OUTPUT = "logits"
_PROBS_VAR = "probs"  # the softmax var inside the program before the classify op takes it over
