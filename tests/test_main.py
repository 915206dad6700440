"""``python -m bort_infer``: the paths build systems of non-Python apps need."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bort_infer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bort_infer", *args], capture_output=True, text=True)


def test_ops_lib_prints_the_custom_op_library():
    out = run("--ops-lib")
    assert out.returncode == 0 and out.stdout.strip() == bort_infer.custom_op_library()


def test_include_dir_prints_the_directory_of_the_c_header():
    out = run("--include-dir")
    assert out.returncode == 0 and (Path(out.stdout.strip()) / "bort_infer_ops.h").is_file()


def test_version_prints_the_package_version():
    assert run("--version").stdout.strip() == bort_infer.__version__


@pytest.mark.parametrize("args", [[], ["--ops-lib", "--include-dir"], ["--bogus"]])
def test_asks_for_exactly_one_question(args):
    out = run(*args)
    assert out.returncode == 2 and "usage:" in out.stderr
