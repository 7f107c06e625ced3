"""The cross-runtime benchmark on this host: `mbv3 bench` / `nox -s bench`.

By default the models phones run (`--models default,large-224,small-224`: the embedded default and
torchvision-layout Large / Small 1.0 at 224 px with random weights and photo-calibrated BatchNorm
statistics, see `workload.py`), each in its own run; per model: one checkpoint, the artifacts of the android and onnx pipelines (cached), the same real test image
and the same thread counts for every runtime: eager PyTorch fp32, the .pte fp32/int8 in
ExecuTorch's Python runtime and in the native C++ runner (mobile_harness), ONNX Runtime fp32/int8
(QDQ) and, where a converter is at hand, LiteRT. Latencies come from interleaved rounds after a
warm-up (the order rotates every round, so drift in the machine's load hits every runtime alike)
and are reported as medians and as ratios against a baseline measured in the same run; absolute
times on a shared 2-core host are noise, ratios much less so. Also measured: artifact sizes, load
time and peak RSS (each in a fresh process), export time per stage (cold and cached), training
throughput, achieved G(FL)OP/s against the FP32 and int8 rooflines of this CPU, goals judged per
model, and the recommended thread count per runtime. `--sweep` (sweep.py) times arch x width x
resolution for latency vs MACs; `--profile` (profile.py) gives per-op profiles (ETDump for the
.pte, ORT's profiler for its peer).

Like parity, this is the cross-format room: it may import several formats' modules. Parameters and
goals live in `pipelines/05_bench.toml`.
"""

from mbv3_mobile.crossformat.bench.common import BASELINE, SCHEMA, BenchError
from mbv3_mobile.crossformat.bench.goals import evaluate_goals, parse_goal, ratios, recommended_threads, rotation
from mbv3_mobile.crossformat.bench.host import cpu_peak, host_peak, thread_counts, usable_cores
from mbv3_mobile.crossformat.bench.render import findings, markdown
from mbv3_mobile.crossformat.bench.run import load_report, run_bench

__all__ = ["BASELINE", "SCHEMA", "BenchError", "cpu_peak", "evaluate_goals", "findings", "host_peak", "load_report",
           "markdown", "parse_goal", "ratios", "recommended_threads", "rotation", "run_bench", "thread_counts", "usable_cores"]
