"""bort-bench's steps: artifacts built in child processes (what each needs first, two at a time only
within the memory budget, a build that dies named with why), backends measured in memory-bounded groups."""
import os
import signal
from pathlib import Path

import pytest

from bort_infer.bench import suite
from bort_infer.bench.suite import GB, build_artifacts, build_plan, measurement_groups


def _log_and_maybe_die(model, name):
    """Stands in for a build (runs in bort-bench's build child): logs its start and end to $BUILD_LOG;
    bert-large's plain-fp32 is killed as the out-of-memory killer would, `ctranslate2-int8` fails."""
    log = Path(os.environ["BUILD_LOG"])
    with open(log, "a") as f:
        f.write(f"start {model} {name}\n")
    if (model, name) == ("bert-large", "plain-fp32"):
        os.kill(os.getpid(), signal.SIGKILL)
    with open(log, "a") as f:
        f.write(f"end {model} {name}\n")
    if name == "ctranslate2-int8":
        raise ModuleNotFoundError("ctranslate2 is not installed")


JOBS = [("bort", "checkpoint"), ("bort", "plain-fp32"), ("bort", "ort-int8"), ("bort", "ctranslate2-int8"),
        ("bert-large", "checkpoint"), ("bert-large", "plain-fp32"), ("bert-large", "ort-int8")]


def test_a_build_that_dies_or_fails_is_named_with_why_and_what_needs_it_is_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "log"))
    failed = build_artifacts(JOBS, build_one=_log_and_maybe_die, memory_bytes=100 * GB)
    assert failed == {
        ("bort", "ctranslate2-int8"): "ModuleNotFoundError: ctranslate2 is not installed",
        ("bert-large", "plain-fp32"): "the build process was killed by SIGKILL; most likely the kernel's "
                                      "out-of-memory killer",
        ("bert-large", "ort-int8"): "needs plain-fp32, which could not be built"}
    log = (tmp_path / "log").read_text().splitlines()
    for model, name in JOBS[:5]:
        assert f"end {model} {name}" in log
    for job in JOBS:  # nothing starts before what it needs has ended
        for dep in {"plain-fp32": ["checkpoint"], "ort-int8": ["plain-fp32"]}.get(job[1], []):
            if f"start {job[0]} {job[1]}" in log:
                assert log.index(f"end {job[0]} {dep}") < log.index(f"start {job[0]} {job[1]}")


def test_builds_that_do_not_fit_the_memory_budget_together_run_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_LOG", str(tmp_path / "log"))
    jobs = [("bort", "checkpoint"), ("tiny-bort", "checkpoint"), ("tiny-bert-large", "checkpoint")]
    assert build_artifacts(jobs, build_one=_log_and_maybe_die, memory_bytes=3 * GB, parallel=2,
                           estimate=lambda model, name: 2 * GB) == {}
    log = (tmp_path / "log").read_text().splitlines()
    assert [line.split()[0] for line in log] == ["start", "end"] * 3


def test_each_run_of_builds_sees_the_environment_of_its_call(tmp_path, monkeypatch):
    # The build processes come from a fork server: one started for an earlier call must not serve this one.
    for run in ("first", "second"):
        monkeypatch.setenv("BUILD_LOG", str(tmp_path / run))
        assert build_artifacts([("tiny-bort", "checkpoint")], build_one=_log_and_maybe_die, memory_bytes=GB) == {}
        assert (tmp_path / run).read_text() == "start tiny-bort checkpoint\nend tiny-bort checkpoint\n"


def test_the_plan_builds_each_missing_artifact_once_and_the_fidelity_reference_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("BORT_INFER_CACHE", str(tmp_path))
    jobs = build_plan(["bort"], ["ort-fp32", "openvino-fp32", "ort-int8"], with_fidelity=True)
    assert jobs == [("bort", "checkpoint"), ("bort", "plain-fp32"), ("bort", "ort-int8"),
                    ("bort", "fidelity-reference")]
    assert ("bort", "fidelity-reference") not in build_plan(["bort"], ["ort-fp32"], with_fidelity=False)


def test_groups_put_reduced_precision_backends_together_and_fp32_ones_after_ours_first_within_the_budget():
    backends = ["torch-fp32", "ort-fp32", "ort-int8", "bort-infer-int8", "bort-infer-fp32", "openvino"]
    one_gb_each = lambda model, backend: GB // 2  # noqa: E731
    assert measurement_groups(["bort", "bert-large"], backends, 100 * GB, one_gb_each) == [
        ["bort-infer-int8", "ort-int8", "openvino"], ["bort-infer-fp32", "torch-fp32", "ort-fp32"]]
    budget = suite.BASE_BYTES + 2 * GB
    assert measurement_groups(["bort", "bert-large"], backends, budget, one_gb_each) == [
        ["bort-infer-int8", "ort-int8"], ["openvino"], ["bort-infer-fp32", "torch-fp32"], ["ort-fp32"]]
    assert measurement_groups(["bert-large"], ["ort-fp32", "torch-fp32"], GB, lambda m, b: 10 * GB) == [
        ["ort-fp32"], ["torch-fp32"]]


def test_a_backend_joins_the_first_group_of_its_kind_it_fits_not_only_the_last():
    sizes = {"bort-infer-int8": 3, "ort-int8": 3, "openvino-int8": 1, "bort-infer-fp32": 1, "ort-fp32": 3}
    groups = measurement_groups(["bert-large"], list(sizes), suite.BASE_BYTES + 4 * GB,
                                lambda model, backend: sizes[backend] * GB)
    assert groups == [["bort-infer-int8", "openvino-int8"], ["ort-int8"], ["bort-infer-fp32", "ort-fp32"]]


def _group_dies(models, backends, threads, grid):
    if "torch-fp32" in backends:
        os.kill(os.getpid(), signal.SIGKILL)
    return suite.GroupResult(precision={b: "fp32" for b in backends})


def test_a_measuring_process_that_dies_skips_its_group_with_why(monkeypatch):
    monkeypatch.setattr(suite, "load_estimate", lambda model, backend: 3 * GB)
    grid = suite.Grid((1,), (8,), 1, 1.0)
    groups, result = suite.measure(["bort"], ["ort-fp32", "torch-fp32"], 1, grid, 4 * GB, child=_group_dies)
    assert groups == [["ort-fp32"], ["torch-fp32"]]
    assert result.precision == {"ort-fp32": "fp32"}
    assert "killed by SIGKILL" in result.skipped["torch-fp32"]
    with pytest.raises(KeyError):
        result.skipped["ort-fp32"]


def _hold_bytes(model, name):
    """A build that holds 300 MiB for a moment (at least 0.2 s)."""
    import time

    import numpy as np

    block = np.ones(300 * 2**20, dtype=np.uint8)
    time.sleep(0.2)
    del block


def test_each_build_process_reports_its_wall_time_and_peak_resident_set(capsys):
    usage = []
    failed = build_artifacts([("bort", "checkpoint"), ("bort", "plain-fp32")], build_one=_hold_bytes,
                             memory_bytes=100 * GB, usage=usage)
    assert failed == {}
    assert [u["what"] for u in usage] == ["build bort checkpoint", "build bort plain-fp32"]
    for u in usage:  # the child's own peak: its 300 MiB block on top of the interpreter, not the parent's
        assert 0.2 <= u["wall_s"] < 60 and 0.29 < u["peak_rss_gib"] < 2
    err = capsys.readouterr().err
    assert "build bort checkpoint: " in err and " GiB resident" in err


def test_each_measuring_group_process_reports_its_wall_time_and_peak_and_a_killed_one_its_wall_time(
        monkeypatch, capsys):
    monkeypatch.setattr(suite, "load_estimate", lambda model, backend: 3 * GB)
    grid = suite.Grid((1,), (8,), 1, 1.0)
    _, result = suite.measure(["bort"], ["ort-fp32", "torch-fp32"], 1, grid, 4 * GB, child=_group_dies)
    first, second = result.resources
    assert first["what"] == "measuring group 1 (ort-fp32)" and 0 < first["peak_rss_gib"] < 2
    assert second["what"] == "measuring group 2 (torch-fp32)" and second["peak_rss_gib"] is None
    assert second["wall_s"] >= 0
    err = capsys.readouterr().err
    assert "measuring group 1 (ort-fp32): " in err and "measuring group 2 (torch-fp32): " in err
    assert "peak unknown" in err
