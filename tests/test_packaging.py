"""The wheel ships the pipeline files that live at the top of the repository, and an installed
`mbv3` finds them from any folder (no checkout, no MBV3_PIPELINES_DIR)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_pipelines_and_mbv3_finds_them_outside_a_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("mbv3_mobile-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("mbv3_mobile/pipelines/")}
    assert shipped == {p.name for p in (ROOT / "pipelines").glob("*.toml")}
    assert "mobile_harness/runner/CMakeLists.txt" in names  # the harness's data folders still ship

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MBV3_PIPELINES_DIR"}
    env["PYTHONPATH"] = str(site)
    code = ("import mbv3_mobile, sys; from mbv3_mobile.cli import main; print(mbv3_mobile.__file__); "
            "sys.exit(main(['export', 'android', '--help']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(site))  # the installed copy, not the checkout
    assert "--int8-stem" in out.stdout and "--quant" in out.stdout
