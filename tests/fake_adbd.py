"""A test device: a loopback server speaking the real ADB transport protocol, for the real `adb`.

`adb connect 127.0.0.1:PORT` attaches it like a network device. It implements what the harness
uses, as adbd does:

- transport: CNXN (no AUTH: like a device with auth disabled), OPEN / OKAY / WRTE / CLSE with one
  unacknowledged WRTE per stream (the classic flow control, no delayed-ack feature);
- `shell:` (v1: raw output, no exit code), `shell,v2,...:` (framed stdin/stdout/stderr/exit),
  `exec:`; commands run for real with /bin/sh inside the sandbox;
- `sync:` STAT / LIST / SEND / RECV / DATA / DONE / OKAY / FAIL / QUIT (v1 only: stat_v2,
  ls_v2 and sendrecv_v2 are not advertised, so the client never asks for them).

The sandbox folder is the device's filesystem: device paths under /data/local/tmp, /sdcard and
/sys map into it (also inside shell command lines), and `getprop`, `dumpsys`, `id` (and `su` when
rooted) are small scripts reading files there. Its shell PATH holds only toybox-like tools, so
nothing from the host (like a real `su`) leaks in. The ABI is the host's (x86_64): the harness's
host-built runner runs on it.

Faults (for the harness's failure tests), settable while running: `disconnect_after_bytes`
(drop the connection mid-push, leaving the partial file as a power cut would), `quota_bytes`
(storage full: SEND fails with ENOSPC like adbd, which deletes the partial file), `runner_fault`
= "crash" (SIGSEGV the runner) or "hang" (SIGSTOP it).

Bounded: it listens only on 127.0.0.1, every wait has a timeout, and it stops by itself after
`lifetime_s` (killing what its shells started).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

A_CNXN, A_OPEN, A_OKAY, A_WRTE, A_CLSE, A_AUTH = (
    int.from_bytes(s, "little") for s in (b"CNXN", b"OPEN", b"OKAY", b"WRTE", b"CLSE", b"AUTH"))
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
ACK_TIMEOUT_S = 30.0
# Shell protocol v2 packet ids.
ID_STDIN, ID_STDOUT, ID_STDERR, ID_EXIT, ID_CLOSE_STDIN, ID_WINDOW = 0, 1, 2, 3, 4, 5

MAPPED = ("/data/local/tmp", "/sdcard", "/sys")
_MAP_RE = re.compile(r"(?<![\w/.-])(/data/local/tmp|/sdcard|/sys)(?![\w.-])")
# Tools a non-rooted Android shell has (toybox); symlinked from the host into system/bin.
TOOLS = ("sh", "cat", "ls", "mkdir", "rm", "mv", "cp", "chmod", "sleep", "kill", "test", "head", "tail",
         "wc", "tr", "sed", "grep", "uname", "stat", "touch", "env", "printf", "true", "false", "dirname",
         "basename", "readlink", "sort", "cut", "date", "df")


@dataclass
class Faults:
    disconnect_after_bytes: int | None = None  # one-shot: drop the transport during a SEND
    quota_bytes: int | None = None  # storage for the mapped folders, all files together
    runner_fault: str | None = None  # "crash" | "hang": applied to a process named mbv3_runner
    runner_name: str = "mbv3_runner"


@dataclass
class DeviceProfile:
    serial_model: str = "MBV3 Test Device"
    abi: str = "x86_64"
    cpus: int = 2
    rooted: bool = False
    governor: str = "schedutil"
    cur_freq_khz: int = 1800000
    max_freq_khz: int = 2400000
    min_freq_khz: int = 300000
    thermal_status: int = 0
    battery_temp_tenths: int = 301
    props: dict[str, str] = field(default_factory=dict)


class _Stream:
    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.inbox = bytearray()
        self.cv = threading.Condition()
        self.acked = threading.Event()
        self.acked.set()
        self.closed = False

    # -- data from the client --
    def feed(self, data: bytes) -> None:
        with self.cv:
            self.inbox += data
            self.cv.notify_all()

    def read_some(self, timeout: float) -> bytes | None:
        """Up to everything buffered; b"" on timeout; None when the stream is closed and drained."""
        with self.cv:
            if not self.inbox and not self.closed:
                self.cv.wait(timeout)
            if self.inbox:
                data = bytes(self.inbox)
                self.inbox.clear()
                return data
            return None if self.closed else b""

    def read_exact(self, n: int, timeout: float = ACK_TIMEOUT_S) -> bytes:
        deadline = time.monotonic() + timeout
        with self.cv:
            while len(self.inbox) < n:
                if self.closed or self.conn.dead:
                    raise ConnectionError("stream closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("client sent nothing")
                self.cv.wait(min(left, 0.5))
            data = bytes(self.inbox[:n])
            del self.inbox[:n]
            return data

    # -- data to the client --
    def write(self, data: bytes) -> None:
        for i in range(0, len(data), self.conn.max_payload):
            if self.closed or self.conn.dead:
                raise ConnectionError("stream closed")
            if not self.acked.wait(ACK_TIMEOUT_S):
                raise TimeoutError("client did not acknowledge a write")
            self.acked.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i:i + self.conn.max_payload])

    def close(self) -> None:
        if not self.closed:
            with self.cv:
                self.closed = True
                self.cv.notify_all()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.forget(self)


class _Connection:
    def __init__(self, device: FakeAdbDevice, sock: socket.socket) -> None:
        self.device, self.sock = device, sock
        self.lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD
        self.dead = False

    def send(self, cmd: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        header = struct.pack("<6I", cmd, arg0, arg1, len(payload), sum(payload) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
        with self.lock:
            if self.dead:
                raise ConnectionError("transport closed")
            try:
                self.sock.sendall(header + payload)
            except OSError as e:
                self.kill()
                raise ConnectionError("transport closed") from e

    def kill(self) -> None:
        """Drop the transport, as a pulled cable or a crashed adbd would."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for s in list(self.streams.values()):
            with s.cv:
                s.closed = True
                s.cv.notify_all()

    def forget(self, stream: _Stream) -> None:
        self.streams.pop(stream.local_id, None)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if self.device.stopping.is_set() or self.dead:
                return None
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        self.sock.settimeout(0.5)
        try:
            while True:
                header = self._recv_exact(24)
                if header is None:
                    return
                cmd, arg0, arg1, length, _check, magic = struct.unpack("<6I", header)
                if magic != cmd ^ 0xFFFFFFFF or length > 16 * 1024 * 1024:
                    return  # not ADB: drop it
                payload = self._recv_exact(length) if length else b""
                if payload is None:
                    return
                try:
                    self._dispatch(cmd, arg0, arg1, payload)
                except ConnectionError:
                    return
        finally:
            self.kill()

    def _dispatch(self, cmd: int, arg0: int, arg1: int, payload: bytes) -> None:
        if cmd == A_CNXN:
            self.max_payload = max(4096, min(MAX_PAYLOAD, arg1))
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner().encode())
        elif cmd == A_OPEN:
            service = payload.rstrip(b"\0").decode(errors="replace")
            local = self.next_id
            self.next_id += 1
            stream = _Stream(self, local, arg0)
            handler = self.device.service_handler(service)
            if handler is None:
                self.send(A_CLSE, 0, arg0)  # unknown service: refused, as adbd does
                return
            self.streams[local] = stream
            self.send(A_OKAY, local, arg0)
            threading.Thread(target=self._run_service, args=(handler, stream, service), daemon=True).start()
        elif cmd == A_OKAY:
            s = self.streams.get(arg1)
            if s:
                s.acked.set()
        elif cmd == A_WRTE:
            s = self.streams.get(arg1)
            if s is None:
                self.send(A_CLSE, 0, arg0)
                return
            s.feed(payload)
            self.send(A_OKAY, s.local_id, s.remote_id)
        elif cmd == A_CLSE:
            s = self.streams.pop(arg1, None)
            if s:
                with s.cv:
                    s.closed = True
                    s.cv.notify_all()
                try:
                    self.send(A_CLSE, s.local_id, s.remote_id)
                except ConnectionError:
                    pass

    def _run_service(self, handler, stream: _Stream, service: str) -> None:
        try:
            handler(stream, service)
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            try:
                stream.close()
            except ConnectionError:
                pass


class FakeAdbDevice:
    """Run with `with FakeAdbDevice(sandbox) as dev:`; dev.serial is "127.0.0.1:PORT"."""

    def __init__(self, root: str | os.PathLike, *, profile: DeviceProfile | None = None,
                 faults: Faults | None = None, lifetime_s: float = 600.0, command_timeout_s: float = 300.0) -> None:
        self.root = Path(root).resolve()
        self.profile = profile or DeviceProfile()
        self.faults = faults or Faults()
        self.lifetime_s = lifetime_s
        self.command_timeout_s = command_timeout_s
        self.stopping = threading.Event()
        self.connections: list[_Connection] = []
        self.commands: list[str] = []  # every shell command line received (device paths, unmapped)
        self.pushed: list[str] = []  # device paths of completed SENDs
        self.events: list[str] = []  # faults that fired
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self._bytes_received = 0
        self._make_filesystem()

    # ---- lifecycle ----
    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeAdbDevice:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.25)
        self._listener, self.port = sock, sock.getsockname()[1]
        self._started = time.monotonic()
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._listener:
            self._listener.close()
        for c in list(self.connections):
            c.kill()
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            _kill_group(p)

    def __enter__(self) -> FakeAdbDevice:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Simulate the device vanishing (cable pulled): the adb server sees the transport close."""
        for c in list(self.connections):
            c.kill()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            if time.monotonic() - self._started > self.lifetime_s:
                self.stop()
                return
            try:
                conn_sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[0] != "127.0.0.1":
                conn_sock.close()
                continue
            conn_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # many small acks
            conn = _Connection(self, conn_sock)
            self.connections = [c for c in self.connections if not c.dead] + [conn]
            threading.Thread(target=conn.serve, daemon=True).start()

    # ---- the device's filesystem ----
    def device_path(self, path: str) -> Path:
        """Sandbox path for a device path; PermissionError outside the mapped folders."""
        norm = os.path.normpath("/" + path.lstrip("/")) if path.startswith("/") else None
        if norm is None or not any(norm == m or norm.startswith(m + "/") for m in MAPPED):
            raise PermissionError(f"{path}: Permission denied")
        return self.root / norm.lstrip("/")

    def map_command(self, command: str) -> str:
        return _MAP_RE.sub(lambda m: str(self.root) + m.group(1), command)

    def _make_filesystem(self) -> None:
        p = self.profile
        for d in ("data/local/tmp", "sdcard", "system/bin", "props", "dumpsys"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        props = {"ro.product.model": p.serial_model, "ro.product.manufacturer": "mbv3",
                 "ro.product.cpu.abi": p.abi, "ro.product.cpu.abilist": p.abi, "ro.build.version.release": "14",
                 "ro.build.version.sdk": "34", "ro.soc.model": "FakeSoC", "ro.hardware": "fake",
                 "ro.build.fingerprint": "mbv3/fake/fake:14/TEST/1:userdebug/test-keys", **p.props}
        for k, v in props.items():
            (self.root / "props" / k).write_text(v)
        cpu = self.root / "sys/devices/system/cpu"
        (cpu).mkdir(parents=True, exist_ok=True)
        (cpu / "possible").write_text(f"0-{p.cpus - 1}\n")
        for i in range(p.cpus):
            f = cpu / f"cpu{i}" / "cpufreq"
            f.mkdir(parents=True, exist_ok=True)
            for name, val in (("scaling_governor", p.governor), ("scaling_cur_freq", p.cur_freq_khz),
                              ("cpuinfo_max_freq", p.max_freq_khz), ("cpuinfo_min_freq", p.min_freq_khz)):
                (f / name).write_text(f"{val}\n")
        tz = self.root / "sys/class/thermal/thermal_zone0"
        tz.mkdir(parents=True, exist_ok=True)
        (tz / "type").write_text("cpu-thermal\n")
        (tz / "temp").write_text("41000\n")
        (self.root / "dumpsys" / "thermalservice").write_text(
            f"IsStatusOverride: false\nThermal Status: {p.thermal_status}\n")
        (self.root / "dumpsys" / "battery").write_text(
            f"Current Battery Service state:\n  AC powered: false\n  USB powered: true\n  level: 87\n"
            f"  temperature: {p.battery_temp_tenths}\n")
        bin_dir = self.root / "system" / "bin"
        for tool in TOOLS:
            src = shutil.which(tool, path="/usr/bin:/bin")
            if src and not (bin_dir / tool).exists():
                (bin_dir / tool).symlink_to(src)
        root_q = str(self.root)
        scripts = {
            "getprop": (f'if [ $# -eq 0 ]; then for f in "{root_q}/props/"*; do k=${{f##*/}}; '
                        f'printf "[%s]: [%s]\\n" "$k" "$(cat "$f")"; done; '
                        f'else cat "{root_q}/props/$1" 2>/dev/null; echo; fi'),
            "dumpsys": f'cat "{root_q}/dumpsys/$1" 2>/dev/null || echo "Can\'t find service: $1"',
            "id": 'echo "uid=2000(shell) gid=2000(shell)"',  # adbd's shell user, not the host's root
        }
        if p.rooted:
            scripts["su"] = ('if [ "$1" = "-c" ]; then shift; SU_ROOT=1 exec sh -c "$*"; fi; '
                             'echo "uid=0(root) gid=0(root)"')
            scripts["id"] = 'if [ -n "$SU_ROOT" ]; then echo "uid=0(root) gid=0(root)"; ' \
                            'else echo "uid=2000(shell) gid=2000(shell)"; fi'
        for name, body in scripts.items():
            path = bin_dir / name
            path.unlink(missing_ok=True)
            path.write_text("#!/bin/sh\n" + body + "\n")
            path.chmod(0o755)

    def banner(self) -> str:
        p = self.profile
        return (f"device::ro.product.name=mbv3_fake;ro.product.model={p.serial_model};"
                f"ro.product.device=mbv3_fake;features=shell_v2,cmd")

    def _usage(self) -> int:
        total = 0
        for m in ("data", "sdcard"):
            for dirpath, _dirs, files in os.walk(self.root / m):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
        return total

    # ---- services ----
    def service_handler(self, service: str):
        if service.startswith("shell") and ":" in service:
            head = service.split(":", 1)[0].split(",")
            if head[0] == "shell":
                return self._shell_v2 if "v2" in head[1:] else self._shell_v1
        if service.startswith("exec:"):
            return self._shell_v1
        if service == "sync:":
            return self._sync
        return None

    def _spawn(self, command: str) -> subprocess.Popen:
        self.commands.append(command)
        env = {"PATH": str(self.root / "system" / "bin"), "HOME": str(self.root / "data/local/tmp"),
               "TMPDIR": str(self.root / "data/local/tmp"), "ANDROID_DATA": "/data"}
        proc = subprocess.Popen(["/bin/sh", "-c", self.map_command(command) if command else "sh"],
                                cwd=str(self.root), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        with self._lock:
            self._procs.append(proc)
        if self.faults.runner_fault and self.faults.runner_name in command:
            threading.Thread(target=self._inject_runner_fault, args=(proc,), daemon=True).start()
        threading.Thread(target=self._reaper, args=(proc,), daemon=True).start()
        return proc

    def _reaper(self, proc: subprocess.Popen) -> None:
        """Bound every command: kill its process group after command_timeout_s or at stop."""
        deadline = time.monotonic() + self.command_timeout_s
        while proc.poll() is None:
            if self.stopping.is_set() or time.monotonic() > deadline:
                _kill_group(proc)
                return
            time.sleep(0.2)

    def _inject_runner_fault(self, proc: subprocess.Popen) -> None:
        sig = signal.SIGSEGV if self.faults.runner_fault == "crash" else signal.SIGSTOP
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            for pid in _session_pids(proc.pid):
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == self.faults.runner_name[:15]:
                    os.kill(pid, sig)
                    return
            time.sleep(0.01)

    def _shell_v1(self, stream: _Stream, service: str) -> None:
        command = service.split(":", 1)[1]
        proc = self._spawn(command)
        proc.stdin.close()
        # v1 merges stdout and stderr and reports no exit code: the client only sees the stream end.
        for _kind, data in _pump(proc, stream, self.stopping):
            stream.write(data)

    def _shell_v2(self, stream: _Stream, service: str) -> None:
        command = service.split(":", 1)[1]
        proc = self._spawn(command)
        stdin_open = True

        def on_input(chunk: bytes, state={"buf": b""}) -> None:  # noqa: B006 (per-call state)
            nonlocal stdin_open
            state["buf"] += chunk
            buf = state["buf"]
            while len(buf) >= 5:
                pid, n = buf[0], struct.unpack_from("<I", buf, 1)[0]
                if len(buf) < 5 + n:
                    break
                data, buf = buf[5:5 + n], buf[5 + n:]
                if pid == ID_STDIN and stdin_open:
                    try:
                        proc.stdin.write(data)
                        proc.stdin.flush()
                    except OSError:
                        stdin_open = False
                elif pid == ID_CLOSE_STDIN and stdin_open:
                    stdin_open = False
                    proc.stdin.close()
            state["buf"] = buf

        for kind, data in _pump(proc, stream, self.stopping, on_input):
            stream.write(bytes([kind]) + struct.pack("<I", len(data)) + data)
        if stream.closed or self.stopping.is_set():
            return  # nobody to report to; the reaper bounds the process
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return
        # sh reports death by signal N as 128+N; adbd passes the low byte on.
        code = 128 - code if code < 0 else code
        stream.write(bytes([ID_EXIT]) + struct.pack("<I", 1) + bytes([code & 0xFF]))

    # sync: the file service behind push / pull.
    def _sync(self, stream: _Stream, service: str) -> None:
        while True:
            req = stream.read_exact(8, timeout=self.command_timeout_s)
            rid, n = req[:4], struct.unpack("<I", req[4:])[0]
            if rid == b"QUIT":
                return
            if n > 4096:
                raise ConnectionError("sync path too long")
            path = stream.read_exact(n).decode(errors="replace") if n else ""
            if rid == b"STAT":
                self._sync_stat(stream, path)
            elif rid == b"LIST":
                self._sync_list(stream, path)
            elif rid == b"RECV":
                self._sync_recv(stream, path)
            elif rid == b"SEND":
                if not self._sync_send(stream, path):
                    return
            else:
                _sync_fail(stream, f"unknown sync request {rid!r}")
                return

    def _sync_stat(self, stream: _Stream, path: str) -> None:
        try:
            st = os.stat(self.device_path(path))
            stream.write(b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
        except OSError:
            stream.write(b"STAT" + struct.pack("<III", 0, 0, 0))

    def _sync_list(self, stream: _Stream, path: str) -> None:
        try:
            d = self.device_path(path)
            entries = sorted(os.listdir(d))
        except OSError:
            entries, d = [], None
        out = bytearray()
        for name in entries:
            try:
                st = os.lstat(d / name)
            except OSError:
                continue
            raw = name.encode()
            out += b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw)) + raw
        out += b"DONE" + struct.pack("<IIII", 0, 0, 0, 0)
        stream.write(bytes(out))

    def _sync_recv(self, stream: _Stream, path: str) -> None:
        try:
            with open(self.device_path(path), "rb") as f:
                while chunk := f.read(SYNC_DATA_MAX):
                    stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as e:
            _sync_fail(stream, f"{path}: {e.strerror or e}")
            return
        stream.write(b"DONE" + struct.pack("<I", 0))

    def _sync_send(self, stream: _Stream, spec: str) -> bool:
        """One pushed file. False when the connection was dropped on purpose."""
        path, _, mode_s = spec.rpartition(",")  # the path may hold commas: adbd splits at the last one
        mode = int(mode_s) if mode_s.isdigit() else 0o644
        error = None
        try:
            target = self.device_path(path)
            if path.endswith("/"):
                raise IsADirectoryError(21, "Is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            f = open(target, "wb")
        except OSError as e:
            target, f, error = None, None, f"{path}: {e.strerror or e}"
        used = self._usage() if self.faults.quota_bytes is not None else 0
        written = 0
        while True:
            head = stream.read_exact(8, timeout=self.command_timeout_s)
            hid, n = head[:4], struct.unpack("<I", head[4:])[0]
            if hid == b"DONE":
                break
            if hid != b"DATA" or n > SYNC_DATA_MAX:
                raise ConnectionError(f"bad sync data header {hid!r}")
            data = stream.read_exact(n)
            self._bytes_received += n
            if error:
                continue
            quota = self.faults.quota_bytes
            if quota is not None and used + written + n > quota:
                f.write(data[:max(0, quota - used - written)])
                error = f"write failed: No space left on device (pushing {path})"
                self.events.append(f"storage full during push of {path}")
                continue
            f.write(data)
            written += n
            limit = self.faults.disconnect_after_bytes
            if limit is not None and self._bytes_received >= limit:
                self.faults.disconnect_after_bytes = None
                f.close()  # the partial file stays, as after a power cut
                self.events.append(f"disconnected during push of {path} ({written} bytes written)")
                stream.conn.kill()
                return False
        if f:
            f.close()
        if error:
            if target is not None:
                target.unlink(missing_ok=True)  # adbd removes what it could not finish
            _sync_fail(stream, error)
            return True
        if not stat.S_ISLNK(mode):
            os.chmod(target, mode & 0o777)
        self.pushed.append(path)
        stream.write(b"OKAY" + struct.pack("<I", 0))
        return True


def _sync_fail(stream: _Stream, message: str) -> None:
    raw = message.encode()
    stream.write(b"FAIL" + struct.pack("<I", len(raw)) + raw)


def _pump(proc: subprocess.Popen, stream: _Stream, stopping: threading.Event, on_input=None):
    """Yield (stream id, bytes) from the process's stdout/stderr until both close; feed input."""
    fds = {proc.stdout.fileno(): ID_STDOUT, proc.stderr.fileno(): ID_STDERR}
    while fds and not stopping.is_set():
        ready, _, _ = select.select(list(fds), [], [], 0.1)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                del fds[fd]
            else:
                yield fds[fd], data
        incoming = stream.read_some(0) if on_input else None
        if incoming:
            on_input(incoming)
        if stream.closed:
            # Client went away. A raw (non-pty) shell's process keeps running on a real device,
            # so it is left alone here too (bounded by the reaper); its output is dropped.
            return


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    # A SIGSTOPped child in the group is killed by SIGKILL as well; reap the leader.
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
