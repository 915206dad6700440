"""`bort-infer` command line: create-random and export end to end, and clear errors."""
import json
import subprocess
import sys

from bort_infer import Session
from bort_infer.cli import main


def test_create_random_then_export_then_encode(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "model"
    assert main(["create-random", "tiny-bort", str(ckpt), "--seed", "7"]) == 0
    assert json.loads((ckpt / "config.json").read_text())["hidden_size"] == 128
    assert main(["export", str(ckpt), str(out), "--no-custom-ops"]) == 0
    assert "custom ops: none" in capsys.readouterr().out
    assert Session(out).encode(["hi"]).shape == (1, 128)


def test_export_error_is_reported_not_raised(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing" / "x"), str(tmp_path / "out"), "--no-custom-ops"]) == 2
    assert "bort-infer export: error:" in capsys.readouterr().err


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "bort_infer.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "create-random" in proc.stdout and "export" in proc.stdout
