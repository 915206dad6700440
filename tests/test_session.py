"""Session: input validation, ordering, pooling, truncation, and the run-time import boundary."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bort_infer import ModelDirectoryError, Session

# Every behaviour below holds for the plain onnxruntime graph, for bort-infer's packed graph (the
# default export: padding-free, custom ops) and for its int8 form.
SESSION_VARIANTS = {"plain": {"custom_ops": False}, "packed": {}, "packed-int8": {"quantize": "int8"}}


@pytest.fixture(scope="module", params=list(SESSION_VARIANTS))
def tiny(request, exports):
    return Session(exports("tiny-bort", **SESSION_VARIANTS[request.param]), threads=1)


def test_single_string_gives_one_vector(tiny):
    v = tiny.encode("hello")
    assert v.shape == (tiny.hidden_size,) and v.dtype == np.float32
    np.testing.assert_allclose(v, tiny.encode(["hello"])[0], atol=1e-6)


def test_empty_list_gives_empty_matrix(tiny):
    out = tiny.encode([])
    assert out.shape == (0, tiny.hidden_size) and out.dtype == np.float32


def test_rows_stay_in_input_order_across_batches(tiny):
    texts = [("word " * n).strip() for n in (5, 1, 40, 0, 17, 3, 60, 2, 9)]
    batched = tiny.encode(texts, batch_size=2)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batched[i], tiny.encode(t), atol=1e-5, err_msg=f"row {i}")


def test_generator_input_is_accepted(tiny):
    out = tiny.encode(t for t in ["a", "b", "c"])
    assert out.shape == (3, tiny.hidden_size)


@pytest.mark.parametrize("bad, index", [(["ok", None], 1), ([3], 0), (["a", "b", b"bytes"], 2)])
def test_non_str_item_is_a_type_error_naming_its_index(tiny, bad, index):
    with pytest.raises(TypeError, match=rf"texts\[{index}\]"):
        tiny.encode(bad)


@pytest.mark.parametrize("bad", [None, 42, 3.5])
def test_non_iterable_texts_is_a_type_error(tiny, bad):
    with pytest.raises(TypeError, match="texts must be"):
        tiny.encode(bad)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8"])
def test_bad_batch_size_is_a_value_error(tiny, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode(["a"], batch_size=batch_size)


def test_unknown_pooling_is_a_value_error(tiny):
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        tiny.encode(["a"], pooling="max")


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2"])
def test_bad_threads_is_a_value_error(exports, threads):
    with pytest.raises(ValueError, match="threads"):
        Session(exports("tiny-bort", custom_ops=False), threads=threads)


def test_mean_pooling_ignores_padding(tiny):
    # The short text's mean must not change when it shares a batch with a much longer one.
    alone = tiny.encode(["short text"], pooling="mean")
    mixed = tiny.encode(["short text", "a much longer text " * 20], pooling="mean", batch_size=2)
    np.testing.assert_allclose(mixed[0], alone[0], atol=1e-5)


def test_normalize_gives_unit_vectors(tiny):
    out = tiny.encode(["a", "b c d"], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_truncation_is_counted_and_warned(tiny):
    before = tiny.truncated_count
    with pytest.warns(UserWarning, match="2 of 3 texts exceed 512 tokens"):
        tiny.encode(["word " * 600, "short", "word " * 900])
    assert tiny.truncated_count == before + 2


def test_info_reports_the_model(tiny):
    info = tiny.info
    int8 = "DequantizeRows" in info["custom_ops"] or info["fidelity"] is not None
    assert info["precision"] == ("int8" if int8 else "fp32") and info["pooling"] == "cls" and info["hidden_size"] == 128
    assert (info["fidelity"] is not None) == int8
    assert info["source"]["sha256"] and info["versions"]["onnxruntime"]


def test_forward_validates_shapes(tiny):
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        tiny.forward(np.ones((2, 3), np.int64), np.ones((2, 4), np.int64))
    with pytest.raises(ValueError, match="exceeds the model's limit 512"):
        tiny.forward(np.ones((1, 513), np.int64), np.ones((1, 513), np.int64))


@pytest.mark.parametrize("variant", list(SESSION_VARIANTS))
def test_runtime_never_imports_build_time_libraries(exports, variant):
    model_dir = exports("tiny-bort", **SESSION_VARIANTS[variant])
    code = (
        "import sys, bort_infer\n"
        f"s = bort_infer.Session({str(model_dir)!r})\n"
        "v = s.encode(['hello world', ''])\n"
        "assert v.shape == (2, 128), v.shape\n"
        "bad = [m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class TestBadModelDirectories:
    def copy(self, src, dst):
        import shutil

        shutil.copytree(src, dst)
        return dst

    def test_missing_directory(self, tmp_path):
        with pytest.raises(ValueError, match=f"model directory {tmp_path / 'nope'} does not exist"):
            Session(tmp_path / "nope")

    def test_path_is_a_file(self, tmp_path):
        f = tmp_path / "file.onnx"
        f.write_text("x")
        with pytest.raises(ValueError, match="is not a directory"):
            Session(f)

    def test_empty_directory(self, tmp_path):
        with pytest.raises(ValueError, match=r"bort_infer.json is missing \(the directory is empty\)"):
            Session(tmp_path)

    def test_corrupt_metadata(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        (d / "bort_infer.json").write_text("{not json")
        with pytest.raises(ValueError, match="bort_infer.json is not valid JSON"):
            Session(d)

    def test_wrong_format_version(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        meta = json.loads((d / "bort_infer.json").read_text())
        meta["format_version"] = 99
        (d / "bort_infer.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="format_version 99; this bort-infer reads version 1"):
            Session(d)

    @pytest.mark.parametrize("field, value, message", [
        ("hidden_size", "big", "hidden_size"),
        ("pooling", "max", "pooling must be one of"),
        ("precision", "int4", "precision must be one of"),
        ("int8_gemm", "blas", "int8_gemm must be one of"),
        ("onnx_file", "../../etc/passwd", "must be a file name inside the directory"),
        ("ort_file", "../model.ort", "ort_file must be a file name inside the directory"),
        ("ort_file", "model.ort", "model.ort is missing"),
        ("ort_file", 5, "'ort_file' must be a non-empty string"),
        ("inputs", ["input_ids"], "inputs must list input_ids and attention_mask"),
        ("inputs", 5, "inputs must list input_ids and attention_mask"),
        ("format_version", True, "format_version True"),
        ("max_length", 2**70, "'max_length' must be an integer from 0 to 2147483647"),
        ("pad_token_id", 2**63, "'pad_token_id' must be an integer from 0 to 2147483647"),
        ("normalize", "yes", "normalize must be true or false"),
        ("versions", 5, "versions must be an object or null"),
        ("source", [1, 2], "source must be an object or null"),
        ("fidelity", "high", "fidelity must be an object or null"),
    ])
    def test_invalid_metadata_fields(self, exports, tmp_path, field, value, message):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        meta = json.loads((d / "bort_infer.json").read_text())
        meta[field] = value
        (d / "bort_infer.json").write_text(json.dumps(meta))
        with pytest.raises(ModelDirectoryError, match=message):
            Session(d)

    def test_missing_onnx(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        (d / "model.onnx").unlink()
        with pytest.raises(ValueError, match="model.onnx is missing"):
            Session(d)

    def test_truncated_onnx(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        data = (d / "model.onnx").read_bytes()
        (d / "model.onnx").write_bytes(data[: len(data) // 3])
        with pytest.raises(ValueError, match="onnxruntime cannot load this model"):
            Session(d)

    def test_empty_onnx(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        (d / "model.onnx").write_bytes(b"")
        with pytest.raises(ValueError, match="model.onnx is empty"):
            Session(d)

    def test_corrupt_tokenizer(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        (d / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
        with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizers file"):
            Session(d)

    def test_graph_inputs_must_match_metadata(self, exports, tmp_path):
        d = self.copy(exports("tiny-bort", custom_ops=False), tmp_path / "m")
        meta = json.loads((d / "bort_infer.json").read_text())
        meta["inputs"] = ["input_ids", "attention_mask", "token_type_ids"]
        (d / "bort_infer.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="do not match the metadata"):
            Session(d)


def test_encode_iter_streams_in_order_from_a_generator(tiny):
    texts = [("tok " * (i % 37)).strip() for i in range(250)]
    chunks = list(tiny.encode_iter((t for t in texts), chunk_size=64, batch_size=16))
    assert [len(c) for c in chunks] == [64, 64, 64, 58]
    np.testing.assert_allclose(np.concatenate(chunks), tiny.encode(texts), atol=1e-5)


def test_token_budget_batches_match_row_batches(tiny):
    texts = [("word " * n).strip() for n in (3, 50, 7, 120, 1, 64, 9, 2)]
    by_rows = tiny.encode(texts, batch_size=3)
    by_tokens = tiny.encode(texts, batch_size=64, max_tokens=130)
    np.testing.assert_allclose(by_tokens, by_rows, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"), ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_budgets_are_value_errors(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode_iter(["a"], **kwargs)


def test_encode_iter_rejects_a_single_string(tiny):
    with pytest.raises(TypeError, match="use encode"):
        tiny.encode_iter("one text")


def test_encode_iter_names_the_global_index_of_a_bad_item(tiny):
    texts = ["ok"] * 10 + [None]
    with pytest.raises(TypeError, match=r"texts\[10\]"):
        list(tiny.encode_iter(iter(texts), chunk_size=4))


def test_hard_inputs_each_get_one_valid_row(tiny):
    texts = ["", "\x00\x01\x07 control \x1b[31m", "lone \ud800 surrogate", "pair \ud83d\ude00 joined",
             "x" * 100_000, "mixed 漢字 ελληνικά עברית 😀", " ", "\u200b\u200d"]
    with pytest.warns(UserWarning, match="truncated"):
        out = tiny.encode(texts)
    assert out.shape == (len(texts), tiny.hidden_size) and np.isfinite(out).all()
    # A lone surrogate reads as U+FFFD; a well-formed pair as the character it encodes.
    np.testing.assert_allclose(out[2], tiny.encode("lone \ufffd surrogate"), atol=1e-5)
    np.testing.assert_allclose(out[3], tiny.encode("pair 😀 joined"), atol=1e-5)


def test_large_list_keeps_every_row(tiny):
    texts = [f"item {i}" for i in range(100_000)]
    out = tiny.encode(texts, batch_size=512)
    assert out.shape == (100_000, tiny.hidden_size)
    for i in (0, 1, 4_999, 77_777, 99_999):
        np.testing.assert_allclose(out[i], tiny.encode(texts[i]), atol=1e-5)


def test_one_session_from_eight_threads_matches_serial(tiny):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"thread test sentence number {i} " * (1 + i % 5) for i in range(64)]
    serial = tiny.encode(texts, batch_size=8)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda k: tiny.encode(texts[k::8], batch_size=3), range(8)))
    for k, part in enumerate(results):
        np.testing.assert_allclose(part, serial[k::8], atol=1e-5)


def test_same_text_alone_or_in_any_batch(tiny):
    target = "The same sentence, wherever it goes."
    alone = tiny.encode(target)
    fillers = ["x", "a much longer filler sentence " * 12, "", "mid length filler text here"]
    for k in range(1, len(fillers) + 1):
        batch = fillers[:k] + [target]
        v = tiny.encode(batch, batch_size=8)[-1]
        cos = float(v @ alone / (np.linalg.norm(v) * np.linalg.norm(alone)))
        assert cos >= 0.99999


@pytest.mark.parametrize("tamper", ["gamma", "qkv_bias"])
def test_custom_ops_given_mismatched_shapes_fail_clearly(exports, tmp_path, tamper):
    """A hostile or corrupted model file: a custom op's weight of the wrong shape is reported, naming the op
    and the model, never a crash or an out-of-bounds read."""
    import shutil

    import onnx
    from onnx import numpy_helper

    d = tmp_path / "m"
    shutil.copytree(exports("tiny-bort"), d)
    model = onnx.load(str(d / "model.onnx"))
    name = {"gamma": "layer.0/ln1.gamma", "qkv_bias": "layer.0/qkv.bias"}[tamper]
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:-3], name))
    onnx.save(model, str(d / "model.onnx"))
    session = Session(d)
    op = {"gamma": "SkipLayerNorm: gamma", "qkv_bias": "PackedAttention: bias"}[tamper]
    with pytest.raises(ValueError, match=f"model.onnx: the model failed to run: .*{op} must have shape"):
        session.encode(["hello world"])
    assert session.encode([]).shape == (0, 128)  # the session stays usable for what it can do


@pytest.mark.parametrize("bad_id", [-1, -1000, 1000, 2**40])
def test_token_ids_outside_the_vocabulary_are_value_errors(tiny, bad_id):
    """A negative id would index the embedding table from its end, silently; one past it fails deep inside."""
    ids = np.array([[0, 5, 7], [0, bad_id, 2]], dtype=np.int64)
    mask = np.ones_like(ids)
    says = rf"input_ids\[1, 1\] is {bad_id}, outside this model's vocabulary \[0, {tiny.vocab_size}\)"
    with pytest.raises(ValueError, match=says):
        tiny.forward(ids, mask)
    with pytest.raises(ValueError, match=says):
        tiny.embed_tokens(ids, mask)


@pytest.mark.parametrize("mask_value", [2, -1])
def test_attention_mask_holds_zeros_and_ones(tiny, mask_value):
    ids = np.array([[0, 5, 7]], dtype=np.int64)
    with pytest.raises(ValueError, match=rf"attention_mask must hold 0 and 1 only, got {mask_value}"):
        tiny.forward(ids, np.array([[1, mask_value, 0]]))


def model_with_a_wrong_output(src, dst, change: str):
    """A copy of model directory `src` whose graph output is changed after the last layer: the kind of
    model that loads and runs, and whose vectors would be wrong without a word."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = ["raw_state" if o == out else o for o in node.output]
    const = [helper.make_tensor(name, TensorProto.INT64, [len(v)], v)
             for name, v in (("zero", [0]), ("one", [1]), ("first_axis", [0]), ("last_axis", [-1]), ("cut", [127]))]
    g.initializer.extend(const)
    node = {
        "one-row": helper.make_node("Slice", ["raw_state", "zero", "one", "first_axis"], [out]),
        "float64": helper.make_node("Cast", ["raw_state"], [out], to=TensorProto.DOUBLE),
        "rank": helper.make_node("Unsqueeze", ["raw_state", "first_axis"], [out]),
        "hidden": helper.make_node("Slice", ["raw_state", "zero", "cut", "last_axis"], [out]),
    }[change]
    g.node.append(node)
    elem = TensorProto.DOUBLE if change == "float64" else TensorProto.FLOAT
    g.output[0].CopyFrom(helper.make_tensor_value_info(out, elem, None))
    onnx.save(model, str(dst / "model.onnx"))
    return dst


@pytest.mark.parametrize("variant", ["plain", "packed"])
@pytest.mark.parametrize("change, says", [
    ("one-row", r"float32 values of shape \(1, (\d+, )?128\)"), ("float64", "float64 values"),
    ("rank", r"float32 values of shape \(1, "), ("hidden", r"float32 values of shape \(\d+, (\d+, )?127\)"),
])
def test_a_graph_output_that_disagrees_with_the_metadata_is_a_model_directory_error(
        exports, tmp_path, variant, change, says):
    """A model whose output has one row would give every text the same vector: each call checks the
    output's rank, dtype and row count against the metadata."""
    d = model_with_a_wrong_output(exports("tiny-bort", **SESSION_VARIANTS[variant]), tmp_path / "m", change)
    session = Session(d, threads=1)
    says = rf"{d / 'model.onnx'}: the model's output 'last_hidden_state' has {says}.*; expected float32 values of shape"
    ids, mask = np.array([[0, 5, 7, 2], [0, 9, 2, 1]]), np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    for call in (lambda: session.encode(["one text", "another text", "a third"]),
                 lambda: session.encode(["one text", "another"], pooling="mean"),
                 lambda: session.forward(ids, mask), lambda: session.embed_tokens(ids, mask)):
        with pytest.raises(ModelDirectoryError, match=says):
            call()


class TestTokenIds:
    """tokenize() and embed_ids(): the token-level entry points a server batches across requests."""

    def test_embed_ids_of_tokenize_equals_encode(self, tiny):
        texts = ["hello world", "", "a longer sentence with several words in it", "x"]
        ids = [e.ids for e in tiny.tokenize(texts)]
        np.testing.assert_allclose(tiny.embed_ids(ids), tiny.encode(texts, normalize=False), atol=1e-5)

    def test_tokenize_marks_texts_cut_to_the_limit(self, tiny):
        long, short = tiny.tokenize(["word " * 2000, "short"])
        assert len(long.ids) == tiny.metadata.max_length and long.overflowing
        assert not short.overflowing

    def test_tokenize_names_a_non_str_item(self, tiny):
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            tiny.tokenize(["a", 3])

    @pytest.mark.parametrize("bad, match", [
        ([[0, 5], []], r"sequences\[1\] has 0 token ids"),
        ([[0, -1, 2]], r"sequences\[0\] holds a token id outside"),
        ([[0, 2], [0, 10**9]], r"sequences\[1\] holds a token id outside"),
        ([[0, 2.5]], "must be integers"),
        (["abc"], r"sequences\[0\] must be a sequence of token ids"),
    ])
    def test_embed_ids_names_a_bad_sequence(self, tiny, bad, match):
        with pytest.raises(ValueError, match=match):
            tiny.embed_ids(bad)

    def test_embed_ids_rejects_a_sequence_past_the_limit(self, tiny):
        with pytest.raises(ValueError, match=r"sequences\[0\] has"):
            tiny.embed_ids([[0] * (tiny.metadata.max_length + 1)])


def test_allow_spinning_is_checked_and_does_not_change_vectors(exports):
    path = exports("tiny-bort")
    calm = Session(path, threads=1, allow_spinning=False)
    np.testing.assert_array_equal(calm.encode(["a b c"]), Session(path, threads=1).encode(["a b c"]))
    with pytest.raises(ValueError, match="allow_spinning"):
        Session(path, allow_spinning="no")
