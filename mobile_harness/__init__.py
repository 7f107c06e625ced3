"""mobile_harness: run and time exported MobileNetV3 models on real targets.

- `build`: the native ExecuTorch runner (mobile_harness/runner, C++/CMake) for host, aarch64 Linux
  and Android arm64, against the executorch wheel's own libraries.
- `targets.host`, `targets.adb`, `targets.ios`: where a benchmark runs.

Entry point: `python -m mobile_harness --help`.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
