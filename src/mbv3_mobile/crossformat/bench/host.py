"""This host: CPU, FP32 and int8 peaks (rooflines), usable cores, thread counts."""

from __future__ import annotations

from pathlib import Path

from mbv3_mobile.core.threads import usable_cores
from mbv3_mobile.crossformat.bench.common import BenchError


def parse_cpuinfo(text: str) -> dict:
    """Vendor, family, model name, flags and clock of the first processor in /proc/cpuinfo text."""
    info: dict = {"flags": set()}
    for line in text.splitlines():
        if not line.strip():
            if "flags" in info and info["flags"]:
                break  # first processor block done
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            info["vendor"] = value
        elif key == "cpu family":
            info["family"] = int(value)
        elif key == "model name":
            info["model_name"] = value
        elif key == "cpu MHz":
            info["mhz"] = float(value)
        elif key in ("flags", "Features"):
            info["flags"] = set(value.split())
    return info


def fp32_flop_per_cycle(info: dict) -> tuple[int, str]:
    """FP32 FLOP per cycle per core from the CPU's flags, and the assumption made.

    FLOP/cycle = SIMD fp32 lanes x 2 (an FMA is a multiply and an add) x FMA units. The number of
    FMA units cannot be read from the flags: 2 is assumed (every AVX2/AVX-512 server core of the
    last decade has 2 FMA pipes; some low-end AVX-512 parts have 1, which would halve the peak).
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit datapaths, so it counts as 8 lanes."""
    flags = info.get("flags", set())
    amd_zen4 = info.get("vendor") == "AuthenticAMD" and info.get("family") == 25
    if "avx512f" in flags and not amd_zen4:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx" in flags or "avx512f" in flags:
        lanes, isa = 8, "AVX-512 on 256-bit datapaths (Zen 4)" if amd_zen4 else "AVX2"
    elif "asimd" in flags or "neon" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    fma = "fma" in flags or "asimd" in flags
    units = 2
    per_cycle = lanes * (2 if fma else 1) * units
    how = (f"{isa}: {lanes} fp32 lanes x {2 if fma else 1} FLOP/lane ({'FMA' if fma else 'no FMA'}) "
           f"x {units} units (assumed)")
    return per_cycle, how


def int8_op_per_cycle(info: dict) -> tuple[int, str]:
    """int8 operations (2 per multiply-accumulate) per cycle per core from the CPU's flags, and the
    assumption made. As for FP32, 2 SIMD units are assumed (not readable from the flags).

    - AVX-512 VNNI (`avx512_vnni`): VPDPBUSD, 4 u8 x s8 MACs per 32-bit lane into an int32: 64 MACs
      per 512-bit instruction (Zen 4 splits it over 256-bit datapaths: 32).
    - AVX-VNNI (`avx_vnni`, no AVX-512 VNNI): the same on 256 bits: 32 MACs per instruction.
    - AVX-512BW / AVX2 without VNNI: XNNPACK widens int8 to int16 and uses VPMADDWD (2 MACs per 32-bit
      lane): 32 (512-bit) / 16 (256-bit) MACs per instruction; the widening costs extra, ignored.
    - Arm: SDOT (`asimddp`) 16 MACs per 128-bit instruction; plain NEON (SMLAL) 8.
    Peak int8 OP/cycle = MACs per instruction x 2 x units."""
    flags = info.get("flags", set())
    amd_zen4 = info.get("vendor") == "AuthenticAMD" and info.get("family") == 25
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        macs, isa = (32, "AVX-512 VNNI on 256-bit datapaths (Zen 4)") if amd_zen4 else (64, "AVX-512 VNNI")
    elif "avx_vnni" in flags:
        macs, isa = 32, "AVX-VNNI (256-bit)"
    elif "avx512bw" in flags and not amd_zen4:
        macs, isa = 32, "AVX-512BW, no VNNI (int16 VPMADDWD)"
    elif "avx2" in flags or "avx512bw" in flags:
        macs, isa = 16, "AVX2, no VNNI (int16 VPMADDWD)"
    elif "asimddp" in flags:
        macs, isa = 16, "NEON dot product (SDOT)"
    elif "asimd" in flags or "neon" in flags:
        macs, isa = 8, "NEON (SMLAL)"
    else:
        macs, isa = 8, "SSE (int16 PMADDWD)"
    units = 2
    return macs * 2 * units, f"{isa}: {macs} int8 MACs/instruction x 2 OP/MAC x {units} units (assumed)"


def cpu_peak(cpuinfo_text: str, cores: int, max_mhz: float | None = None) -> dict:
    """The machine's FP32 peak: cores x FLOP/cycle x clock. `max_mhz` (cpufreq's maximum) wins over
    the clock /proc/cpuinfo reports, which on a VM is the nominal clock."""
    if cores < 1:
        raise BenchError(f"core count must be >= 1, got {cores}")
    info = parse_cpuinfo(cpuinfo_text)
    per_cycle, how = fp32_flop_per_cycle(info)
    mhz, source = (max_mhz, "cpufreq cpuinfo_max_freq") if max_mhz else (info.get("mhz"), "/proc/cpuinfo cpu MHz")
    i8_cycle, i8_how = int8_op_per_cycle(info)
    peaks = {"clock_mhz": mhz, "clock_source": source, "peak_gflops_per_core": None, "peak_gflops": None,
             "peak_int8_gops_per_core": None, "peak_int8_gops": None}
    if mhz:
        per_core, i8_core = per_cycle * mhz / 1e3, i8_cycle * mhz / 1e3  # GFLOP/s, GOP/s
        peaks.update(peak_gflops_per_core=per_core, peak_gflops=per_core * cores, peak_int8_gops_per_core=i8_core,
                     peak_int8_gops=i8_core * cores,
                     formula=f"{cores} cores x {per_cycle} FLOP/cycle x {mhz / 1e3:.3f} GHz = {per_core * cores:.1f} GFLOP/s",
                     int8_formula=f"{cores} cores x {i8_cycle} int8 OP/cycle x {mhz / 1e3:.3f} GHz = {i8_core * cores:.1f} GOP/s")
    else:  # e.g. Arm VMs: /proc/cpuinfo has no "cpu MHz" and no cpufreq; latency is still measured
        unknown = "clock unknown (no cpu MHz in /proc/cpuinfo, no cpufreq): no roofline"
        peaks.update(clock_mhz=None, clock_source="unknown", formula=unknown, int8_formula=unknown)
    return {"cpu": info.get("model_name", "?"), "vendor": info.get("vendor", "?"), "cores": cores,
            "fp32_flop_per_cycle": per_cycle, "assumption": how, "int8_op_per_cycle": i8_cycle,
            "int8_assumption": i8_how, **peaks}


def host_peak() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    max_mhz = int(freq.read_text()) / 1e3 if freq.is_file() else None
    return cpu_peak(text, usable_cores(), max_mhz)


def thread_counts(spec: list, cores: int) -> list[int]:
    """["1", "all"] -> [1, cores]; counts above the core count would only oversubscribe."""
    out = set()
    for t in spec:
        t = str(t).strip()
        if t == "all":
            out.add(cores)
        elif t.isdigit() and int(t) >= 1:
            if int(t) <= cores:
                out.add(int(t))
        else:
            raise BenchError(f"--threads takes positive integers or 'all' (e.g. --threads 1,all), got {t!r}")
    if not out:
        raise BenchError(f"none of the thread counts {spec} fits this machine's {cores} core(s)")
    return sorted(out)
