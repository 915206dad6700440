"""Fuzzing the ai.bort_infer ops: random one-node graphs (tests/fuzz/graphs.py), each input present, absent, empty,
of the wrong rank, shape or dtype, or holding out-of-range values, each attribute missing, of the wrong type or
absurd, and odd output lists.

Every graph runs in a worker subprocess (tests/fuzz/runner.py), many graphs per process; a crash or hang is a
finding: its culprit is the graph in flight, re-run alone in a fresh process to confirm, and printed with its
reproducer. The only acceptable outcomes are the reference result (tests/fuzz/contracts.py) or an onnxruntime error
naming the op.

BORT_INFER_FUZZ_EXAMPLES sets the number of graphs: by default 2,000 in a plain test run (about 17 s on 2 shared
cores) and 10,000 under `make asan` (its Makefile sets it; CI runs both), where the worker inherits the sanitizer build
(BORT_INFER_C_DIR) and its preloaded runtimes. The default run judges the same graphs every time, so a failure in CI
fails the same way on a laptop; BORT_INFER_FUZZ_EXPLORE=1 draws new ones (Hypothesis' random search, with its example
database).
"""
from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from ..test_docs import registered_ops
from .contracts import CONTRACTS
from .graphs import ATTRIBUTES, MUTATIONS, OPS, VALID, graph_spec, materializable
from .runner import OUTPUT_TYPES, Worker, WorkerDied, judge_alone

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

EXAMPLES = int(os.environ.get("BORT_INFER_FUZZ_EXAMPLES", "2000"))
EXPLORE = os.environ.get("BORT_INFER_FUZZ_EXPLORE", "") not in ("", "0")
SEEDS = st.integers(0, 2**32 - 1)
MUTATION_LISTS = st.lists(st.tuples(st.sampled_from(MUTATIONS), SEEDS), max_size=3)


@st.composite
def graph_specs(draw):
    # Unmutated graphs check results on valid inputs; mutated ones the refusals.
    mutations = draw(st.one_of(st.just(()), st.just(()), MUTATION_LISTS))
    threads, isa = draw(st.sampled_from([1, 1, 1, 2])), draw(st.sampled_from(["auto", "auto", "avx2", "scalar"]))
    spec = graph_spec(draw(st.sampled_from(OPS)), draw(SEEDS), mutations, threads, isa)
    assume(materializable(spec))
    return spec


@pytest.fixture(scope="module")
def worker(request):
    w = Worker()
    start = time.perf_counter()
    yield w
    w.close()
    seconds = time.perf_counter() - start
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nfuzz: {w.judged} ai.bort_infer graphs judged in {seconds:.1f} s")


# No shrinking: a failure already names its graph, and shrinking a hang would wait out every timeout again.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not EXPLORE,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(spec=graph_specs())
def test_fuzzed_graphs_give_the_reference_result_or_an_error_naming_the_op(worker, spec):
    try:
        verdict = worker.judge(spec)
    except WorkerDied as died:
        text = json.dumps(spec)
        pytest.fail(f"{spec['op']} graph killed the worker: {died}\nspec: {text}\nalone in a fresh process: "
                    f"{judge_alone(spec)}\nreproduce: python -m tests.fuzz.runner --one '{text}'")
    assert verdict["ok"], f"{verdict['detail']}\nspec: {json.dumps(spec)}"


def test_every_registered_op_is_fuzzed():
    # A new op in csrc/ort_custom_ops.cc needs its valid graphs (graphs.py), attributes, output types (runner.py)
    # and contract (contracts.py) here before it ships.
    ops = set(registered_ops())
    for table in (OPS, VALID, ATTRIBUTES, OUTPUT_TYPES, CONTRACTS):
        assert ops == set(table), sorted(ops ^ set(table))
