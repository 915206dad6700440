"""Graph rewrite (bort_infer.export.graph_rewrite): onnxruntime's fused BERT graph read layer by layer and
re-emitted on bort-infer's ops, checked against the plain onnxruntime graph on Bort, BERT-large-shaped and
MiniLM encoders; and the graphs it must refuse, with the layer and pattern named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from bort_infer import custom_op_library  # noqa: E402
from bort_infer.export.graph_rewrite import EncoderPatternError, emit, ops_used, recognize  # noqa: E402
from bort_infer.export.quantize import full_int8  # noqa: E402

from .conftest import bert_large_shaped_config  # noqa: E402

# Texts of the test batch, in tokens: a single-token text, and texts longer than the 16 tokens
# torch.onnx traced with (the sequence axis must really be dynamic).
LENGTHS = (23, 1, 40, 7)
MAX_ABS_DIFF = 1e-4


def ort_session(model) -> ort.InferenceSession:
    """A session for an ONNX file or ModelProto, with bort-infer's custom ops registered."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(custom_op_library())
    options.log_severity_level = 3
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def padded_batch(config: dict, lengths=LENGTHS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (right-padded with the model's pad id) and their 0/1 mask, [batch, max(lengths)]."""
    rng = np.random.default_rng(seed)
    seq = max(lengths)
    mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(5, config["vocab_size"], size=mask.shape, dtype=np.int64)
    ids[mask == 0] = config.get("pad_token_id") or 0
    return ids, mask


@pytest.fixture(scope="module")
def encoder(rewrite_case):
    return recognize(rewrite_case.fused)


@pytest.fixture(scope="module")
def plain_reference(rewrite_case):
    """(ids, mask, last hidden states) of the plain onnxruntime graph: what the rewrite must reproduce."""
    ids, mask = padded_batch(rewrite_case.config)
    states = ort_session(rewrite_case.plain_onnx).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return ids, mask, states


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    worst = float(np.abs(got - want).max())
    assert worst <= MAX_ABS_DIFF, f"{what}: max abs diff {worst:.3g}"


# ---------------------------------------------------------------------------------------------- recognition

def test_the_bert_large_shaped_encoder_has_bert_large_layers():
    config = bert_large_shaped_config()
    shapes = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "type_vocab_size",
              "layer_norm_eps", "max_position_embeddings")
    assert {k: config[k] for k in shapes} == {
        "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 30522,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "max_position_embeddings": 512}
    assert config["num_hidden_layers"] == 2  # not 24: see BERT_LARGE_SHAPED_LAYERS


def test_recognize_reads_every_layer_with_its_weights(rewrite_case, encoder):
    cfg, w = rewrite_case.config, rewrite_case.weights
    hidden, ffn = cfg["hidden_size"], cfg["intermediate_size"]
    assert len(encoder.layers) == cfg["num_hidden_layers"]
    assert encoder.hidden_size == hidden and encoder.num_heads == cfg["num_attention_heads"]
    np.testing.assert_array_equal(encoder.word, w["embeddings.word_embeddings.weight"])
    # Token type 0's embedding is folded into the position table (every row is one text).
    np.testing.assert_allclose(encoder.position, w["embeddings.position_embeddings.weight"]
                               + w["embeddings.token_type_embeddings.weight"][0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(encoder.emb_gamma, w["embeddings.LayerNorm.weight"])
    np.testing.assert_array_equal(encoder.emb_beta, w["embeddings.LayerNorm.bias"])
    assert encoder.emb_eps == pytest.approx(cfg["layer_norm_eps"])

    for i, layer in enumerate(encoder.layers):
        p = f"encoder.layer.{i}."
        assert layer.num_heads == cfg["num_attention_heads"]
        assert (layer.qkv.shape, layer.attn_out.shape, layer.ffn_in.shape, layer.ffn_out.shape) == \
            ((hidden, 3 * hidden), (hidden, hidden), (hidden, ffn), (ffn, hidden)), f"layer {i}"
        # onnxruntime stores Linear weights as [in, out] (PyTorch's transposed), Q | K | V side by side.
        expected = {
            "qkv": np.concatenate([w[f"{p}attention.self.{n}.weight"].T for n in ("query", "key", "value")], 1),
            "qkv_bias": np.concatenate([w[f"{p}attention.self.{n}.bias"] for n in ("query", "key", "value")]),
            "attn_out": w[f"{p}attention.output.dense.weight"].T,
            "attn_out_bias": w[f"{p}attention.output.dense.bias"],
            "ln1_gamma": w[f"{p}attention.output.LayerNorm.weight"],
            "ln1_beta": w[f"{p}attention.output.LayerNorm.bias"],
            "ffn_in": w[f"{p}intermediate.dense.weight"].T, "ffn_in_bias": w[f"{p}intermediate.dense.bias"],
            "ffn_out": w[f"{p}output.dense.weight"].T, "ffn_out_bias": w[f"{p}output.dense.bias"],
            "ln2_gamma": w[f"{p}output.LayerNorm.weight"], "ln2_beta": w[f"{p}output.LayerNorm.bias"],
        }
        for name, want in expected.items():
            np.testing.assert_array_equal(getattr(layer, name), want, err_msg=f"layer {i} {name}")
        assert layer.ln1_eps == pytest.approx(cfg["layer_norm_eps"])
        assert layer.ln2_eps == pytest.approx(cfg["layer_norm_eps"])


# ---------------------------------------------------------------------------------------------- emission

def test_padded_form_matches_the_plain_graph_on_every_real_token(rewrite_case, encoder, plain_reference):
    model = emit(encoder, "padded")
    assert ops_used(model) == ["BiasGelu", "FusedAttention", "SkipLayerNorm"]
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    ids, mask, want = plain_reference
    got = ort_session(model).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert got.shape == want.shape
    valid = mask.astype(bool)
    assert_close(got[valid], want[valid], f"{rewrite_case.name} padded")


def packed_feeds(ids, mask, every_row: bool = False) -> dict:
    """A padded batch as the packed form's feeds: real tokens back to back; queries the CLS rows (or every row)."""
    valid = mask.astype(bool)
    lengths = valid.sum(1)
    cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    query_rows = np.arange(int(cu_seqlens[-1]), dtype=np.int64) if every_row else cu_seqlens[:-1]
    return {"input_ids": ids[valid], "position_ids": np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
            "cu_seqlens": cu_seqlens, "query_rows": query_rows}


def test_packed_form_matches_the_plain_graph_on_all_rows_and_on_cls_rows(rewrite_case, encoder, plain_reference):
    model = emit(encoder, "packed")
    assert ops_used(model) == ["BiasGelu", "PackedAttention", "SkipLayerNorm"]
    assert [i.name for i in model.graph.input] == ["input_ids", "position_ids", "cu_seqlens", "query_rows"]
    ids, mask, want = plain_reference
    feeds = packed_feeds(ids, mask)
    cu_seqlens = feeds["cu_seqlens"]
    tokens = int(cu_seqlens[-1])
    session = ort_session(model)
    want_rows = want[mask.astype(bool)]  # the real tokens, text after text: the packed row order

    all_rows = session.run(None, {**feeds, "query_rows": np.arange(tokens, dtype=np.int64)})[0]
    assert_close(all_rows, want_rows, f"{rewrite_case.name} packed, every row")
    cls_rows = session.run(None, {**feeds, "query_rows": cu_seqlens[:-1]})[0]
    assert_close(cls_rows, want[:, 0], f"{rewrite_case.name} packed, CLS rows")
    # Any subset in any order: the last layer computes exactly the rows asked for.
    some_rows = np.random.default_rng(1).permutation(tokens)[:5].astype(np.int64)
    assert_close(session.run(None, {**feeds, "query_rows": some_rows})[0], want_rows[some_rows],
                 f"{rewrite_case.name} packed, shuffled rows")


def test_emit_rejects_an_unknown_form(tiny_bort_fused):
    with pytest.raises(ValueError, match="unknown graph form 'ragged'"):
        emit(recognize(tiny_bort_fused), "ragged")


def test_emit_rejects_an_unknown_int8_gemm(tiny_bort_fused):
    with pytest.raises(ValueError, match="unknown int8 GEMM 'blas'"):
        emit(recognize(tiny_bort_fused), "packed", gemm="blas")


def op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("form", ["padded", "packed"])
def test_int8_linears_run_on_linear_int8_and_equal_the_mlas_graph_bit_for_bit(rewrite_case, encoder, form):
    # Every linear of every layer is one LinearInt8 (the packed form's last layer splits QKV into the query
    # rows' Q and everyone's K | V); MatMulInteger's form computes the same integers, so the same bits come out
    # (on the pair-safe weights the exporter writes: MLAS saturates on full-range ones on AVX2-only CPUs).
    precision = full_int8(encoder, int8_weights="pair-safe")
    ours, mlas = emit(encoder, form, precision, gemm="ours"), emit(encoder, form, precision, gemm="mlas")
    layers = len(encoder.layers)
    linears = 4 * layers + (1 if form == "packed" else 0)
    assert op_counts(ours).get("LinearInt8") == linears
    assert not {"MatMulInteger", "QuantizeRows", "DequantizeRows", "MatMul"} & set(op_counts(ours))
    assert op_counts(mlas).get("MatMulInteger") == linears and "LinearInt8" not in op_counts(mlas)
    ids, mask = padded_batch(rewrite_case.config)
    feeds = {"input_ids": ids, "attention_mask": mask} if form == "padded" else packed_feeds(ids, mask)
    got, want = (ort_session(m).run(None, feeds)[0] for m in (ours, mlas))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_packed_last_layers_query_projection_reads_the_int8_rows_gathered_not_quantized_again(encoder):
    # The layer before emits its output's int8 rows (values, scales, zero points) beside the float rows; the
    # last layer's Q reads those rows at query_rows (the same values: the bit-for-bit test above).
    model = emit(encoder, "packed", full_int8(encoder))
    producer = {out: node for node in model.graph.node for out in node.output if out}
    q = next(n for n in model.graph.node if n.name == f"layer.{len(encoder.layers) - 1}/q")
    assert q.op_type == "LinearInt8" and q.input[0] == ""
    float_rows = producer[producer[q.input[1]].input[0]]  # the node whose int8 rows are gathered
    for i in (1, 2, 3):
        gather = producer[q.input[i]]
        assert gather.op_type == "Gather" and list(gather.input) == [float_rows.output[i], "query_rows"]


@pytest.mark.parametrize("tables,op", [("int8", "EmbedLayerNormInt8"), ("bf16", "EmbedLayerNormBf16")])
def test_packed_int8_or_bf16_embeddings_are_one_fused_op_with_the_lookups_bits(rewrite_case, encoder, monkeypatch,
                                                                                tables, op):
    # int8 / bf16 tables: one EmbedLayerNorm* op instead of each table's Gather and Cast (and Mul for int8) and a
    # SkipLayerNorm, and the same bits as that chain (emitted here by swapping the fused op back for the lookups).
    from bort_infer.export import graph_rewrite
    from bort_infer.export.bf16 import bf16_precision

    precision = full_int8(encoder) if tables == "int8" else bf16_precision(encoder)
    fused = emit(encoder, "packed", precision)
    counts = op_counts(fused)
    assert counts.get(op) == 1 and not {"Cast", "Mul", "Unsqueeze"} & set(counts)

    def lookups(b, word, position, gamma, beta, eps):
        rows = [graph_rewrite._lookup(b, table, q, ids, name) for table, q, ids, name in
                ((encoder.word, word, "input_ids", "word"), (encoder.position, position, "position_ids", "position"))]
        return b.node("SkipLayerNorm", [*rows, gamma, beta], "embeddings/ln", domain=graph_rewrite.DOMAIN,
                      epsilon=eps)

    monkeypatch.setattr(graph_rewrite, "_embed_one_op", lookups)
    unfused = emit(encoder, "packed", precision)
    assert op not in op_counts(unfused) and op_counts(unfused).get("Cast") == 2
    feeds = packed_feeds(*padded_batch(rewrite_case.config), every_row=True)
    got, want = (ort_session(m).run(None, feeds)[0] for m in (fused, unfused))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# ---------------------------------------------------------------------------------------------- refusals

def nth_node(graph, op_type: str, n: int):
    """The n-th node of op_type. ONNX keeps nodes topologically sorted, and each layer depends on the
    previous one, so layer i's Attention is the i-th Attention (its SkipLayerNormalizations 2i and 2i+1)."""
    return [node for node in graph.node if node.op_type == op_type][n]


def unfuse_bias_gelu(graph, layer: int) -> None:
    """BiasGelu → Add + Gelu: the graph onnxruntime leaves when it cannot fuse the FFN activation."""
    node = nth_node(graph, "BiasGelu", layer)
    at = list(graph.node).index(node)
    add = helper.make_node("Add", list(node.input), [f"unfused_add_{layer}"], name=f"unfused_add_{layer}")
    gelu = helper.make_node("Gelu", [add.output[0]], list(node.output), name=f"unfused_gelu_{layer}",
                            domain="com.microsoft")
    graph.node.remove(node)
    graph.node.insert(at, gelu)
    graph.node.insert(at, add)


def replace_attention(graph, layer: int) -> None:
    nth_node(graph, "Attention", layer).op_type = "MultiHeadAttention"


def consume_skip_layernorm_sum(graph, layer: int) -> None:
    """Make the attention SkipLayerNormalization's input+skip+bias sum (output 3) feed a graph output."""
    node = nth_node(graph, "SkipLayerNormalization", 2 * layer)
    name = f"layer{layer}_residual_sum"
    node.output.extend([""] * (3 - len(node.output)) + [name])
    graph.node.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    graph.output.append(helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, None))


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("break_layer, pattern", [
    (unfuse_bias_gelu, r"bias\+GELU pattern not found: expected one BiasGelu after the FFN input projection, "
                       r"found Add"),
    (replace_attention, r"attention pattern not found"),
    (consume_skip_layernorm_sum, r"skip\+LayerNorm \(attention\) uses SkipLayerNormalization output "
                                 r"'layer\d_residual_sum'"),
], ids=["bias-gelu-unfused", "attention-replaced", "skip-layernorm-sum-consumed"])
def test_a_broken_layer_is_refused_naming_the_layer_and_the_pattern(tiny_bort_fused, layer, break_layer, pattern):
    model = onnx.ModelProto()
    model.CopyFrom(tiny_bort_fused)
    break_layer(model.graph, layer)
    with pytest.raises(EncoderPatternError, match=rf"^layer {layer}: {pattern}"):
        recognize(model)


def test_the_intact_tiny_bort_graph_is_recognized(tiny_bort_fused):
    # The refusals above are caused by the breakage alone.
    assert len(recognize(tiny_bort_fused).layers) == 2


def test_a_graph_without_embed_layer_normalization_is_refused_naming_embeddings(exports):
    # The plain export, not run through onnxruntime's fusions: its embeddings are Gathers, Adds and a LayerNorm.
    plain = onnx.load(str(exports("tiny-bort", custom_ops=False) / "model.onnx"))
    with pytest.raises(EncoderPatternError, match=r"^embeddings: expected one EmbedLayerNormalization .* found 0"):
        recognize(plain)
