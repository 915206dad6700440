"""bort-bench's backends: what each needs and claims."""
from bort_infer.bench.artifacts import ARTIFACTS
from bort_infer.bench.backends import BACKENDS, PRECISIONS


def test_every_backend_needs_known_artifacts_and_declares_its_precision():
    for name, b in BACKENDS.items():
        assert b.name == name and b.precision in PRECISIONS and b.memory > 0
        assert b.artifacts and set(b.artifacts) <= set(ARTIFACTS)


def test_int8_bf16_and_runtime_chosen_precisions_get_a_fidelity_check():
    reduced = {n for n, b in BACKENDS.items() if b.reduced_precision}
    assert {"bort-infer-int8", "bort-infer-bf16", "ort-int8", "ctranslate2-int8", "openvino-int8",
            "openvino"} <= reduced
    assert not reduced & {"torch-fp32", "ort-fp32", "ort-fused-fp32", "openvino-fp32", "bort-infer-fp32"}


def test_openvino_peers_are_there_at_their_default_forced_fp32_and_int8():
    assert BACKENDS["openvino"].precision == "default"
    assert BACKENDS["openvino-fp32"].precision == "fp32"
    assert BACKENDS["openvino-int8"].artifacts == ("openvino-int8",) and "nncf" in BACKENDS["openvino-int8"].modules


def test_our_bf16_export_is_measured_beside_the_peer_it_answers():
    assert BACKENDS["bort-infer-bf16"].precision == "bf16"
    assert BACKENDS["bort-infer-bf16"].artifacts == ("bort-infer-bf16",)
