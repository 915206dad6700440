"""Without the `ray` extra: the run-time package works and the integration says what to install."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_missing_ray_gives_an_install_hint():
    code = ("import sys; sys.modules['ray'] = None\n"  # as if ray were not installed
            "import bort_infer, bort_infer.encode_file, bort_infer.cli.main, bort_infer.cli.encode\n"
            "import bort_infer.integrations\n"
            "try:\n"
            "    import bort_infer.integrations.ray\n"
            "except ImportError as exc:\n"
            "    assert \"pip install 'bort-infer[ray]'\" in str(exc), exc\n"
            "else:\n"
            "    raise SystemExit('imported without ray')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
