"""Where a benchmark runs: `host` (this machine), `adb` (Android over adb), `ios` (macOS + xcrun)."""

TARGETS = ("host", "adb", "ios")
