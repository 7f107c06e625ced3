import json
import subprocess
import sys

from mbv3_mobile.cli import main


def test_info_table(capsys):
    assert main(["info", "--arch", "large", "--width", "1.0", "--resolution", "224"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large_100" in out and "5,483,032" in out and "216.6" in out and "features.16" in out


def test_info_json_and_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "mbv3_mobile", "info", "--arch", "small", "--json"],
                         capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    assert data["params"] == 2_542_856 and data["model"] == "mobilenet_v3_small_100"


def test_bad_resolution_is_a_clean_error(capsys):
    assert main(["info", "--resolution", "16"]) == 2
    err = capsys.readouterr().err
    assert "resolution 16" in err and "Traceback" not in err
