"""bort-bench's steps: every artifact built in its own process, a build that dies named with why."""
import os
import signal

from bort_infer.bench.suite import build_artifacts


def _build_dies_on_the_large_model(model, backend, conn):
    """Stands in for a build the out-of-memory killer ends (runs in bort-bench's build child)."""
    if model == "bert-large":
        os.kill(os.getpid(), signal.SIGKILL)
    conn.send(None if backend == "ort-fp32" else f"{backend} is not installed")


def test_a_build_process_that_dies_skips_its_backend_with_why():
    pairs = [("bort", "ort-fp32"), ("bort", "openvino-fp32"), ("bert-large", "ort-fp32"),
             ("bert-large", "openvino-fp32")]
    skipped = build_artifacts(pairs, build_one=_build_dies_on_the_large_model)
    assert skipped == {
        "openvino-fp32": "openvino-fp32 is not installed",
        "ort-fp32": "its build for bert-large failed: the build process was killed by SIGKILL; most likely the "
                    "kernel's out-of-memory killer"}
