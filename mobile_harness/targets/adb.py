"""Android target over adb: push the runner, its libraries and the models, run, pull, clean up.

Layout on the device: everything is pushed into <workdir>/.staging-<run> and renamed to
<workdir>/<run> only once every file arrived, so a half-pushed set is never run and is easy to
find and remove (a later run sweeps leftover .staging-* folders). The run folder is removed at the
end, on success and on failure. A failed or timed-out invocation raises: partial results are never
reported as a measurement.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from ..adb import Adb, AdbTimeout, quote_command
from ..bench import BenchPlan, add_measurement, new_results, parse_runner_output
from ..build import BINARY, RunnerBuild
from ..device_state import ABI_TO_ARCH, collect_adb_state
from ..errors import DeviceError, HarnessError, RunnerTimeout

DEFAULT_WORKDIR = "/data/local/tmp/mbv3"
CLEANUP_WAIT_S = 15.0


def check_abi(state: dict, runner: RunnerBuild) -> None:
    want = ABI_TO_ARCH.get(state.get("abi", ""), state.get("abi", ""))
    if want != runner.arch:
        raise HarnessError(
            f"the runner is built for {runner.arch} but the device's ABI is {state.get('abi') or 'unknown'}; build "
            f"the matching runner (python -m mobile_harness build --target android-arm64 for arm64-v8a phones) and "
            "pass it with --runner-dir")


class AdbSession:
    """One benchmark's footprint on one device."""

    def __init__(self, adb: Adb, serial: str, workdir: str, log=print) -> None:
        if not workdir.startswith("/") or workdir.rstrip("/") in ("", "/data", "/data/local", "/data/local/tmp",
                                                                   "/sdcard"):
            raise HarnessError(f"--workdir {workdir!r} must be a dedicated absolute folder such as {DEFAULT_WORKDIR} "
                               "(it is deleted at the end)")
        self.adb, self.serial, self.log = adb, serial, log
        self.workdir = workdir.rstrip("/")
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.staging = f"{self.workdir}/.staging-{run_id}"
        self.final = f"{self.workdir}/run-{run_id}"
        self.deployed: dict[Path, str] = {}
        self._n = 0

    def sweep_stale(self) -> None:
        # The glob stays unquoted on purpose; the folder part is quoted.
        self.adb.shell(self.serial, f"rm -rf {quote_command([self.workdir])}/.staging-*", timeout=60,
                       what="removing leftovers of interrupted runs")

    def deploy(self, runner: RunnerBuild, models: list[Path]) -> None:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise HarnessError(f"two models share a file name ({', '.join(names)}); rename one")
        if BINARY in names or any(n in {lib.name for lib in runner.libs} for n in names):
            raise HarnessError("a model file is named like the runner or one of its libraries; rename it")
        self.adb.check_shell(self.serial, ["mkdir", "-p", self.staging], what="creating the staging folder")
        files = [runner.binary, *runner.libs, *models]
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        self.log(f"[harness] pushing runner, {len(runner.libs)} libraries and {len(models)} model(s) "
                 f"({size_mb:.1f} MB) to {self.serial}:{self.staging}")
        self.adb.push(self.serial, files, self.staging)
        self.adb.check_shell(self.serial, ["chmod", "755", f"{self.staging}/{BINARY}"], what="chmod runner")
        self.adb.check_shell(self.serial, ["mv", self.staging, self.final], what="moving the pushed files into place")
        self.deployed = {m: f"{self.final}/{m.name}" for m in models}

    def run_runner(self, model: Path, args: list[str], *, timeout_s: float, where: str,
                   extra_pull: tuple[str, Path] | None = None) -> dict:
        self._n += 1
        remote_json = f"{self.final}/result-{self._n}.json"
        pid_file = f"{self.final}/runner-{self._n}.pid"
        argv = [f"./{BINARY}", "--model", self.deployed[model], "--json", remote_json, *args]
        # $$ is the shell's pid, which exec hands to the runner: what to kill if it hangs.
        line = (f"cd {quote_command([self.final])} && echo $$ > {quote_command([pid_file])} && "
                f"export LD_LIBRARY_PATH={quote_command([self.final])} && exec {quote_command(argv)}")
        try:
            r = self.adb.shell(self.serial, line, timeout=timeout_s, what=f"running {model.name}")
        except AdbTimeout:
            self.adb.shell(self.serial, f"kill -9 $(cat {quote_command([pid_file])}) 2>/dev/null", timeout=30,
                           what="killing the hung runner")
            raise RunnerTimeout(f"{where}: runner did not finish in {timeout_s:g} s and was killed; no result was "
                                "recorded. Raise --timeout-s or lower --iters if the device is just slow.") from None
        if r.exit_code != 0:
            parse_runner_output(r.stdout, r.exit_code, where=where)  # raises the matching RunnerError
        with tempfile.TemporaryDirectory(prefix="mbv3-pull-") as tmp:
            local = Path(tmp) / "result.json"
            self.adb.pull(self.serial, remote_json, local)
            doc = parse_runner_output(local.read_text(), 0, where=where)
        if extra_pull:
            self.adb.pull(self.serial, *extra_pull)
        return doc

    def cleanup(self) -> str | None:
        """Remove this run's folders; a message saying what is left when the device is unreachable."""
        cmd = ["rm", "-rf", self.staging, self.final]
        for attempt in range(2):
            try:
                r = self.adb.shell(self.serial, cmd, timeout=60, what="cleaning up")
                if r.exit_code == 0:
                    return None
            except DeviceError:
                pass
            if attempt == 0 and not self.adb.wait_for(self.serial, CLEANUP_WAIT_S):
                break
        return (f"could not clean up {self.serial}: remove the leftovers by hand with "
                f"`adb -s {self.serial} shell {quote_command(cmd)}`")


def run_adb(models: list[Path], plan: BenchPlan, runner: RunnerBuild, *, adb: Adb, serial: str | None = None,
            workdir: str = DEFAULT_WORKDIR, out_dir: Path | None = None, log=print) -> dict:
    serial = adb.select(serial)
    before = collect_adb_state(adb, serial)
    check_abi(before, runner)
    session = AdbSession(adb, serial, workdir, log)
    try:
        results = _run(session, models, plan, runner, before, out_dir, log)
    except HarnessError as e:
        problem = session.cleanup()
        if problem:
            e.args = (f"{e}\n{problem}",)
        raise
    problem = session.cleanup()
    if problem:
        results["notes"].append(problem)
    return results


def _profile(etdump: Path) -> list[dict] | str:
    from ..profile import top_ops

    try:
        return top_ops(etdump)
    except Exception as e:  # noqa: BLE001 - the profile is an extra; the measurement stands without it
        return f"could not read the ETDump: {type(e).__name__}: {e}"


def _run(session: AdbSession, models, plan: BenchPlan, runner, before: dict, out_dir, log) -> dict:
    adb, serial = session.adb, session.serial
    session.sweep_stale()
    session.deploy(runner, models)
    threads_list = plan.thread_counts(before.get("cpus"))
    rounds: dict[tuple[Path, int], list[dict]] = {(m, t): [] for m in models for t in threads_list}
    # Rounds outermost: thermal drift spreads over every variant instead of penalising the last one.
    for r in range(plan.rounds):
        if r and plan.cooldown_s:
            log(f"[harness] cooling down {plan.cooldown_s:g} s")
            time.sleep(plan.cooldown_s)
        for model in models:
            for threads in threads_list:
                where = f"{model.name} threads={threads} round {r + 1} on {serial}"
                doc = session.run_runner(model, plan.runner_args(threads), timeout_s=plan.timeout_s, where=where)
                rounds[(model, threads)].append(doc)
                log(f"[harness] {where}: p50 {doc['p50_ms']:.3f} ms, load {doc['load_ms']:.1f} ms")
    etdumps, profiles = {}, {}
    if plan.etdump and out_dir is not None:
        (out_dir / "etdump").mkdir(parents=True, exist_ok=True)
        for model in models:
            remote = f"{session.final}/{model.stem}.etdump"
            local = out_dir / "etdump" / f"{model.stem}.etdump"
            session.run_runner(model, [*plan.runner_args(max(threads_list)), "--etdump", remote],
                               timeout_s=plan.timeout_s, where=f"{model.name} profiling run",
                               extra_pull=(remote, local))
            etdumps[model.name] = f"etdump/{local.name}"  # relative to the report folder
            profiles[model.name] = _profile(local)
    after = collect_adb_state(adb, serial)
    results = new_results("adb", plan, serial=serial, device=before, device_after=after, runner=runner.to_dict(),
                          workdir=session.workdir, profiles=profiles)
    notes = []
    if before.get("governors") and before["governors"] != ["performance"]:
        notes.append(f"CPU governor {'/'.join(before['governors'])}: clocks scale with load; for steadier numbers "
                     "pin them (rooted: echo performance > .../scaling_governor)")
    if not before.get("rooted"):
        notes.append("device not rooted: governor and clocks could not be pinned")
    results["notes"].extend(notes)
    for (model, threads), rs in rounds.items():
        add_measurement(results, variant=model.name, model=str(model), runtime="native", threads=threads, rounds=rs,
                        before=before, after=after, verification=rs[-1].get("verification"),
                        etdump=etdumps.get(model.name))
    return results
