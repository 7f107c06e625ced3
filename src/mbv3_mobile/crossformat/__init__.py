"""Cross-format work: several export pipelines on one checkpoint. `parity` compares every
format with eager PyTorch on the same pictures; `bench` times every runtime on this host. The one
room above the formats (it may import them; nothing below imports it)."""
