"""Build the native runner (mobile_harness/runner) against a prebuilt ExecuTorch, and cache it.

Targets:
- host: the installed executorch wheel (its lib/*.so, include/ and share/cmake).
- linux-aarch64: the aarch64 executorch wheel of the same version, pinned by sha256, fetched by
  scripts/setup.sh (or on first use outside the tests) and unpacked in the cache (never committed),
  cross-compiled with Debian's g++-aarch64-linux-gnu. For ARM Linux boards; run under
  qemu-aarch64-static in tests for correctness only.
- android-arm64: needs ANDROID_NDK and an ExecuTorch built for Android with that NDK
  (MBV3_EXECUTORCH_ANDROID_ROOT = its install prefix). The manylinux wheels cannot serve here:
  their libraries link glibc, Android has bionic. Documented, not buildable on this machine.

A build lands in <cache>/harness/build/<target>-<key>/ (key: runner sources, executorch version,
toolchain), built in a temp folder and renamed into place only when complete. `deploy/` holds the
runner and exactly the ExecuTorch libraries it needs (its DT_NEEDED closure), ready to push.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from mbv3_mobile.core.atomic import atomic_dir

from .elf import elf_arch, elf_needed
from .errors import BuildError

RUNNER_SRC = Path(__file__).resolve().parent / "runner"
TARGETS = ("host", "linux-aarch64", "android-arm64")
MIN_CMAKE = (3, 28)
BUILD_TIMEOUT_S = 900
BINARY = "mbv3_runner"


@dataclass
class RunnerBuild:
    target: str
    arch: str
    deploy_dir: Path  # runner + libraries, pushed as one folder
    binary: Path
    libs: list[Path]
    executorch_version: str
    executorch_root: str
    build_seconds: float
    cached: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(deploy_dir=str(self.deploy_dir), binary=str(self.binary), libs=[p.name for p in self.libs])
        return d


def cache_root() -> Path:
    """<MBV3_CACHE or ~/.cache/mbv3-mobile>/harness, shared with the rest of the project's caches."""
    base = os.environ.get("MBV3_CACHE") or str(Path.home() / ".cache" / "mbv3-mobile")
    return Path(base) / "harness"


def executorch_version() -> str:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError as e:
        raise BuildError("executorch is not installed in this Python; install the project (pip install -e .)") from e


def host_executorch_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("executorch is not installed in this Python; install the project (pip install -e .)")
    root = Path(list(spec.submodule_search_locations)[0])
    if not (root / "share" / "cmake" / "executorch-config.cmake").is_file():
        raise BuildError(f"{root} has no share/cmake/executorch-config.cmake: this executorch build ships no C++ "
                         "package; reinstall the executorch wheel from PyPI")
    return root


def find_cmake() -> tuple[str, str]:
    """(path, version) of a CMake >= 3.28, preferring the one installed beside this Python."""
    candidates = [Path(sys.executable).parent / "cmake", shutil.which("cmake")]
    seen = []
    for c in candidates:
        if not c or not Path(c).is_file() or str(c) in [s for s, _ in seen]:
            continue
        out = subprocess.run([str(c), "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
        if not m:
            continue
        version = ".".join(g for g in m.groups() if g)
        seen.append((str(c), version))
        if (int(m.group(1)), int(m.group(2))) >= MIN_CMAKE:
            return str(c), version
    found = ", ".join(f"{v} at {p}" for p, v in seen) or "none"
    raise BuildError(f"the runner build needs CMake >= {MIN_CMAKE[0]}.{MIN_CMAKE[1]} (found: {found}); "
                     f"install it into this Python's environment: {sys.executable} -m pip install 'cmake>=3.28'")


def _source_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(RUNNER_SRC.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(RUNNER_SRC).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "missing"
    return out.splitlines()[0] if out else "unknown"


# ---- the aarch64 wheel ----------------------------------------------------------------------


# The aarch64 executorch wheels this project builds against, pinned by sha256 (PyPI's files).
AARCH64_WHEELS = {
    "1.5.1": ("executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl",
              "8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a"),
}


def wheel_dirs() -> list[Path]:
    """Where a fetched wheel may be: this cache's, and the machine-wide one scripts/setup.sh fills."""
    machine = Path(os.environ.get("MBV3_WHEELS") or Path.home() / ".cache" / "mbv3-mobile" / "wheels")
    return list(dict.fromkeys([cache_root() / "wheels", machine]))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def aarch64_wheel(version: str, *, log=print) -> Path:
    """The pinned aarch64 executorch wheel: found where scripts/setup.sh put it, else downloaded
    (unless MBV3_OFFLINE is set, as the tests set it) and checked against its sha256."""
    if version not in AARCH64_WHEELS:
        raise BuildError(f"no pinned aarch64 executorch wheel for version {version} (pinned: {', '.join(AARCH64_WHEELS)}); "
                         "add its file name and sha256 to mobile_harness.build.AARCH64_WHEELS")
    name, digest = AARCH64_WHEELS[version]
    for folder in wheel_dirs():
        path = folder / name
        if path.is_file():
            if _sha256(path) != digest:
                raise BuildError(f"{path} does not match its pinned sha256 ({digest[:12]}…); delete it and rerun "
                                 "scripts/setup.sh")
            return path
    if os.environ.get("MBV3_OFFLINE"):
        raise BuildError(f"the aarch64 executorch {version} wheel is not on this machine ({', '.join(map(str, wheel_dirs()))}) "
                         "and MBV3_OFFLINE forbids downloading it: run scripts/setup.sh, which fetches it hash-pinned")
    wheels = wheel_dirs()[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"[harness] downloading the aarch64 executorch {version} wheel into {wheels}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
           f"executorch=={version}", "-d", str(wheels), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    path = wheels / name
    if proc.returncode != 0 or not path.is_file():
        raise BuildError(f"could not download the aarch64 executorch {version} wheel "
                         f"(`{' '.join(cmd)}` said: {proc.stderr.strip()[-500:]}); it needs PyPI access")
    if _sha256(path) != digest:
        path.unlink()
        raise BuildError(f"the downloaded {name} does not match its pinned sha256 ({digest[:12]}…); not used")
    return path


def aarch64_executorch_root(version: str | None = None, *, log=print) -> Path:
    """Unpacked lib/include/share of the manylinux aarch64 executorch wheel."""
    version = version or executorch_version().split("+")[0]
    dest = cache_root() / "sysroots" / f"executorch-{version}-manylinux_2_28_aarch64"
    root = dest / "executorch"
    if (root / "share" / "cmake" / "executorch-config.cmake").is_file():
        return root
    wheel = aarch64_wheel(version, log=log)
    with atomic_dir(dest) as tmp, zipfile.ZipFile(wheel) as zf:
        # Only what a C++ consumer needs: libraries, headers, CMake config (not the Python code).
        for name in zf.namelist():
            if re.match(r"executorch/(lib/|include/|share/cmake/)", name):
                zf.extract(name, tmp)
    return root


# ---- building -------------------------------------------------------------------------------


def _configure_args(target: str, log) -> tuple[list[str], Path, str]:
    """(extra cmake args, executorch root, compiler id) for a target."""
    if target == "host":
        root = host_executorch_root()
        return [], root, _tool_version(["c++", "--version"])
    if target == "linux-aarch64":
        if not shutil.which("aarch64-linux-gnu-g++"):
            raise BuildError("aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu "
                             "(scripts/setup.sh installs it)")
        root = aarch64_executorch_root(log=log)
        tc = RUNNER_SRC / "cmake" / "aarch64-linux-gnu.cmake"
        return [f"-DCMAKE_TOOLCHAIN_FILE={tc}"], root, _tool_version(["aarch64-linux-gnu-g++", "--version"])
    if target == "android-arm64":
        ndk = os.environ.get("ANDROID_NDK") or os.environ.get("ANDROID_NDK_HOME")
        et = os.environ.get("MBV3_EXECUTORCH_ANDROID_ROOT")
        if not ndk or not Path(ndk, "build", "cmake", "android.toolchain.cmake").is_file():
            raise BuildError("android-arm64 needs the Android NDK: set ANDROID_NDK to its folder (the one holding "
                             "build/cmake/android.toolchain.cmake). See mobile_harness/README.md.")
        if not et or not Path(et, "share", "cmake", "executorch-config.cmake").is_file() and not Path(
                et, "lib", "cmake", "ExecuTorch", "executorch-config.cmake").is_file():
            raise BuildError("android-arm64 needs ExecuTorch built for Android (the manylinux wheel links glibc, "
                             "Android has bionic): build it with the NDK and set MBV3_EXECUTORCH_ANDROID_ROOT to "
                             "its install prefix. See mobile_harness/README.md.")
        args = [f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake", "-DANDROID_ABI=arm64-v8a",
                "-DANDROID_PLATFORM=android-26"]
        return args, Path(et), f"ndk:{Path(ndk).name}"
    raise BuildError(f"unknown runner target {target!r}: choose one of {', '.join(TARGETS)}")


def _run(cmd: list[str], log_file: Path, what: str, timeout: int) -> None:
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise BuildError(f"{what} took longer than {timeout} s; see {log_file}") from e
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {proc.returncode}); last lines of {log_file}:\n{tail}")


def _deploy_libs(binary: Path, lib_dir: Path) -> list[Path]:
    """The ExecuTorch libraries the runner needs, transitively (system libraries excluded)."""
    todo, seen = [binary], set()
    libs: list[Path] = []
    while todo:
        for name in elf_needed(todo.pop()):
            candidate = lib_dir / name
            if name not in seen and candidate.is_file():
                seen.add(name)
                libs.append(candidate)
                todo.append(candidate)
    return libs


def ensure_runner(target: str = "host", *, rebuild: bool = False, log=print) -> RunnerBuild:
    """The cached runner build for `target`, building it first when missing or stale."""
    if target not in TARGETS:
        raise BuildError(f"unknown runner target {target!r}: choose one of {', '.join(TARGETS)}")
    cmake, cmake_version = find_cmake()
    extra, root, compiler = _configure_args(target, log)
    version = executorch_version() if target == "host" else executorch_version().split("+")[0]
    key_src = json.dumps([_source_digest(), target, version, cmake_version, compiler, str(root), extra])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    out = cache_root() / "build" / f"{target}-{key}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run building this runner finishes first
        stamp = out / "build.json"
        if stamp.is_file() and not rebuild:
            info = json.loads(stamp.read_text())
            deploy = out / "deploy"
            return RunnerBuild(target=target, arch=info["arch"], deploy_dir=deploy, binary=deploy / BINARY,
                               libs=[deploy / n for n in info["libs"]], executorch_version=info["executorch_version"],
                               executorch_root=info["executorch_root"], build_seconds=info["build_seconds"], cached=True)
        log(f"[harness] building the native runner for {target} (executorch {version}) into {out}")
        start = time.monotonic()
        with atomic_dir(out) as tmp:
            build_dir = tmp / "build"
            log_file = tmp / "build.log"
            _run([cmake, "-S", str(RUNNER_SRC), "-B", str(build_dir), f"-DEXECUTORCH_ROOT={root}",
                  "-DCMAKE_BUILD_TYPE=Release", *extra], log_file, "configuring the runner (cmake)", 300)
            _run([cmake, "--build", str(build_dir), "-j", "2"], log_file, "building the runner", BUILD_TIMEOUT_S)
            deploy = tmp / "deploy"
            deploy.mkdir()
            shutil.copy2(build_dir / BINARY, deploy / BINARY)
            libs = _deploy_libs(deploy / BINARY, root / "lib")
            for lib in libs:
                shutil.copy2(lib, deploy / lib.name)
            arch = elf_arch(deploy / BINARY)
            seconds = round(time.monotonic() - start, 1)
            info = {"target": target, "arch": arch, "executorch_version": version, "executorch_root": str(root),
                    "cmake": cmake_version, "compiler": compiler, "build_seconds": seconds,
                    "libs": [lib.name for lib in libs], "key": key, "host": platform.machine()}
            (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            shutil.rmtree(build_dir)  # the object files are not needed once deploy/ is assembled
        log(f"[harness] runner built in {seconds} s")
        deploy = out / "deploy"
        return RunnerBuild(target=target, arch=arch, deploy_dir=deploy, binary=deploy / BINARY,
                           libs=[deploy / lib.name for lib in libs], executorch_version=version,
                           executorch_root=str(root), build_seconds=seconds)


def runner_from_dir(path: str | Path) -> RunnerBuild:
    """A runner folder given by hand (binary + libraries side by side), e.g. an NDK build."""
    d = Path(path)
    binary = d / BINARY
    if not binary.is_file():
        raise BuildError(f"{d} holds no {BINARY}; pass the deploy folder of a runner build "
                         "(python -m mobile_harness build prints it)")
    libs = sorted(p for p in d.iterdir() if p.name.endswith(".so") or ".so." in p.name)
    return RunnerBuild(target="custom", arch=elf_arch(binary), deploy_dir=d, binary=binary, libs=libs,
                       executorch_version="unknown", executorch_root="", build_seconds=0.0, cached=True)
