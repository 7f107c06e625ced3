"""What state a device was in when it was measured: identity, CPU governor and clocks, thermal
status, battery temperature, root. Gathered by one shell script (one adb round trip)."""

from __future__ import annotations

import re

from .stats import THERMAL_STATUS

PROPS = ("ro.product.manufacturer", "ro.product.model", "ro.product.cpu.abi", "ro.product.cpu.abilist",
         "ro.build.version.release", "ro.build.version.sdk", "ro.soc.manufacturer", "ro.soc.model",
         "ro.board.platform", "ro.hardware", "ro.build.fingerprint")

# Fixed text (no user input), POSIX sh: runs on Android's mksh/toybox and on the test device.
STATE_SCRIPT = "; ".join([
    "for p in " + " ".join(PROPS) + "; do echo \"prop.$p=$(getprop $p)\"; done",
    "echo \"cpu.possible=$(cat /sys/devices/system/cpu/possible 2>/dev/null)\"",
    "for d in /sys/devices/system/cpu/cpu[0-9]*; do f=$d/cpufreq; [ -d $f ] || continue; n=${d##*/}; "
    "echo \"$n.governor=$(cat $f/scaling_governor 2>/dev/null)\"; "
    "echo \"$n.cur_khz=$(cat $f/scaling_cur_freq 2>/dev/null)\"; "
    "echo \"$n.min_khz=$(cat $f/cpuinfo_min_freq 2>/dev/null)\"; "
    "echo \"$n.max_khz=$(cat $f/cpuinfo_max_freq 2>/dev/null)\"; done",
    "echo \"thermal.status=$(dumpsys thermalservice 2>/dev/null | sed -n 's/^Thermal Status: *//p' | head -n 1)\"",
    "for z in /sys/class/thermal/thermal_zone[0-9]*; do [ -d $z ] || continue; "
    "echo \"zone.${z##*/}=$(cat $z/type 2>/dev/null):$(cat $z/temp 2>/dev/null)\"; done",
    "echo \"battery.temp=$(dumpsys battery 2>/dev/null | sed -n 's/^ *temperature: *//p' | head -n 1)\"",
    "echo \"id=$(id 2>/dev/null)\"",
    "echo \"su=$(su -c id 2>/dev/null | head -n 1)\"",
])


def _int(s: str | None) -> int | None:
    try:
        return int(str(s).strip())
    except (TypeError, ValueError):
        return None


def _cpu_count(possible: str) -> int | None:
    """'0-7' or '0-3,5' -> number of CPUs."""
    total = 0
    for part in possible.split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        if not a.isdigit() or (b and not b.isdigit()):
            return None
        total += (int(b) - int(a) + 1) if b else 1
    return total or None


def parse_state(text: str) -> dict:
    kv: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            kv[key.strip()] = value.strip()
    props = {k[5:]: v for k, v in kv.items() if k.startswith("prop.")}
    cpus: dict[str, dict] = {}
    for k, v in kv.items():
        m = re.fullmatch(r"(cpu\d+)\.(governor|cur_khz|min_khz|max_khz)", k)
        if m:
            cpus.setdefault(m.group(1), {})[m.group(2)] = v if m.group(2) == "governor" else _int(v)
    zones = {}
    for k, v in kv.items():
        if k.startswith("zone."):
            ztype, _, temp = v.rpartition(":")
            t = _int(temp)
            # sysfs reports millidegrees on most kernels, degrees on a few.
            zones[k[5:]] = {"type": ztype, "temp_c": (t / 1000 if t is not None and abs(t) > 200 else t)}
    battery = _int(kv.get("battery.temp"))
    id_line, su_line = kv.get("id", ""), kv.get("su", "")
    governors = sorted({c["governor"] for c in cpus.values() if c.get("governor")})
    status = _int(kv.get("thermal.status"))
    return {
        "manufacturer": props.get("ro.product.manufacturer", ""),
        "model": props.get("ro.product.model", ""),
        "abi": props.get("ro.product.cpu.abi", ""),
        "abilist": props.get("ro.product.cpu.abilist", ""),
        "android_release": props.get("ro.build.version.release", ""),
        "sdk": _int(props.get("ro.build.version.sdk")),
        "soc": " ".join(x for x in (props.get("ro.soc.manufacturer"), props.get("ro.soc.model")) if x)
        or props.get("ro.board.platform", "") or props.get("ro.hardware", ""),
        "fingerprint": props.get("ro.build.fingerprint", ""),
        "cpus": _cpu_count(kv.get("cpu.possible", "")) or len(cpus) or None,
        "cpufreq": cpus,
        "governors": governors,
        "thermal_status": status,
        "thermal_status_name": THERMAL_STATUS.get(status) if status is not None else None,
        "thermal_zones": zones,
        "battery_temp_c": battery / 10 if battery is not None else None,
        "shell_uid": _int(m.group(1)) if (m := re.search(r"uid=(\d+)", id_line)) else None,
        "rooted": "uid=0" in su_line or "uid=0(" in id_line,
    }


def collect_adb_state(adb, serial: str, *, timeout: float = 60) -> dict:
    out = adb.check_shell(serial, STATE_SCRIPT, timeout=timeout, what="reading device state")
    return parse_state(out)


ABI_TO_ARCH = {"arm64-v8a": "aarch64", "x86_64": "x86_64", "armeabi-v7a": "arm", "x86": "x86"}
