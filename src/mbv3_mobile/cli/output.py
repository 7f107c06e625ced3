"""What the terminal shows: the project's progress lines stay readable.

The toolchain (torch.export's pytree, ExecuTorch, torchao, coremltools, onnxscript) emits dozens of
deprecation warnings and INFO log lines per export that say nothing to the user. They are
filtered here, at the source, by category and by the module that raises them, so warnings from
the user's own code and real errors still show; `--verbose` shows everything."""

from __future__ import annotations

import logging
import os
import warnings

# Modules whose deprecation/future warnings are toolchain noise (regexes on the warning's module).
NOISY_MODULES = r"(torch|torchao|executorch|coremltools|onnxscript|onnx|onnxruntime|torch_xla|sklearn|pkg_resources)(\..*)?"
NOISY_LOGGERS = ("torch", "torchao", "executorch", "coremltools", "onnxscript")

def configure_output(*, quiet: bool = False, verbose: bool = False) -> None:
    if verbose:
        return
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)
    # coremltools and torchao raise some of theirs attributed to the caller's frame
    warnings.filterwarnings("ignore", message=r".*(isinstance\(treespec, LeafSpec\)|is deprecated|untested).*",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*(scikit-learn version|Torch version .* has not been tested).*")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ["MBV3_QUIET_NATIVE"] = "1"  # ExecuTorch's C++ start-up lines (see export/executorch/runtime.py)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
