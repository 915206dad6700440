"""Graph rewrite: an exported BERT encoder onto bort-infer's fused kernels.

1. onnxruntime's transformers optimizer fuses the plain export into EmbedLayerNormalization, then per layer
   Attention → MatMul → SkipLayerNormalization → MatMul → BiasGelu → MatMul → SkipLayerNormalization.
2. `recognize` walks that graph layer by layer and reads every weight. A layer whose pattern differs fails
   with the layer and the pattern named (EncoderPatternError): a model is rewritten whole or not at all,
   never left half on slower ops.
3. `emit` writes the encoder as a new graph on our ops (domain ai.bort_infer): the QKV, attention output
   and FFN projections stay GEMMs (fp32 MatMul; int8, gemm="ours": one LinearInt8 each, our u8 x s8 GEMM with
   the quantization and epilogue fused; gemm="mlas": QuantizeRows → onnxruntime's MatMulInteger →
   DequantizeRows, the same bits; bf16: LinearBf16 on BFLOAT16 weights, with the FFN input's bias and GELU in
   its epilogue), the attention core, bias+GELU and residual+LayerNorm run on our kernels.

Two graph forms:
- padded: inputs input_ids, attention_mask [batch, seq]; output last_hidden_state [batch, seq, hidden];
  attention is FusedAttention with the [batch, seq] mask.
- packed (padding-free): inputs input_ids, position_ids [tokens] (the texts back to back), cu_seqlens
  [texts + 1] (where each text starts), query_rows [queries] (which tokens' final states are wanted);
  output last_hidden_state [queries, hidden]. Every GEMM and LayerNorm sees real tokens only, and the
  last layer computes keys and values for all tokens but queries, attention output, FFN and LayerNorms
  only for query_rows: with CLS pooling that is one row per text.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..model_dir import INT8_GEMMS

DOMAIN = "ai.bort_infer"
MS_DOMAIN = "com.microsoft"
FORMS = ("padded", "packed")
PADDED_INPUTS = ("input_ids", "attention_mask")
PACKED_INPUTS = ("input_ids", "position_ids", "cu_seqlens", "query_rows")
OUTPUT = "last_hidden_state"
LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")
# How int8 linears run: "ours" (LinearInt8) or "mlas" (QuantizeRows → MatMulInteger → DequantizeRows).
GEMMS = INT8_GEMMS


class EncoderPatternError(ValueError):
    """The exported graph is not the BERT encoder pattern the rewrite knows (names layer and pattern)."""


@dataclass
class Layer:
    num_heads: int
    scale: float | None  # None: 1/sqrt(head_dim)
    qkv: np.ndarray  # [H, 3H]: Q | K | V columns
    qkv_bias: np.ndarray  # [3H]
    attn_out: np.ndarray  # [H, H]
    attn_out_bias: np.ndarray
    ln1_gamma: np.ndarray
    ln1_beta: np.ndarray | None
    ln1_eps: float
    ffn_in: np.ndarray  # [H, I]
    ffn_in_bias: np.ndarray
    ffn_out: np.ndarray  # [I, H]
    ffn_out_bias: np.ndarray
    ln2_gamma: np.ndarray
    ln2_beta: np.ndarray | None
    ln2_eps: float
    # Set by activation smoothing (bort_infer.export.quantize): the residual into ln1 / ln2 arrives divided
    # per channel by these and is multiplied back inside SkipLayerNorm.
    ln1_skip_scale: np.ndarray | None = None
    ln2_skip_scale: np.ndarray | None = None


@dataclass
class Encoder:
    word: np.ndarray  # [V, H]
    position: np.ndarray  # [P, H], token type 0's embedding already added
    emb_gamma: np.ndarray
    emb_beta: np.ndarray
    emb_eps: float
    layers: list[Layer] = field(default_factory=list)

    @property
    def hidden_size(self) -> int:
        return int(self.word.shape[1])

    @property
    def num_heads(self) -> int:
        return self.layers[0].num_heads


# ---------------------------------------------------------------------------------------------- fusion

def fuse_with_onnxruntime(plain_onnx: str | Path, num_heads: int, hidden_size: int):
    """onnxruntime's transformers optimizer (its BERT fusions), as an onnx.ModelProto."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    def fuse(shape_inference: bool):
        options = FusionOptions("bert")
        options.enable_shape_inference = shape_inference
        return optimize_model(str(plain_onnx), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                              opt_level=0, optimization_options=options).model

    try:
        # First without the optimizer's symbolic shape inference, which copies the whole model (weights
        # included) several times: BERT-large fuses in 2.6 GB instead of 9.5, in a third of the time, into the
        # same graph. Some graphs need the inferred shapes for their embedding fusion; they are fused again
        # with it (recognize checks every shape of what it reads either way).
        model = fuse(shape_inference=False)
        ops = [n.op_type for n in model.graph.node]
        if ops.count("EmbedLayerNormalization") != 1 or "Attention" not in ops:
            del model
            model = fuse(shape_inference=True)
    except Exception as exc:
        # Raised again without its traceback: the optimizer's frames hold its TemporaryDirectory, which would
        # stay on disk for as long as a caller keeps the exception.
        failure = f"{type(exc).__name__}: {exc}"
    else:
        return model
    raise RuntimeError(f"onnxruntime's BERT optimizer failed on {plain_onnx}: {failure}")


# ---------------------------------------------------------------------------------------------- recognition

class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._to_array = numpy_helper.to_array
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for name in n.input:
                if name:
                    self.consumers[name].append(n)
        self.outputs = [o.name for o in g.output]

    def array(self, name: str, what: str, layer: str) -> np.ndarray:
        if name not in self.inits:
            raise EncoderPatternError(f"{layer}: {what} ({name!r}) is not a constant weight of the graph")
        if name not in self._arrays:
            self._arrays[name] = np.asarray(self._to_array(self.inits[name]), dtype=np.float32)
        return self._arrays[name]

    def only_consumer(self, tensor: str, op_type: str, layer: str, pattern: str, after: str):
        found = [n for n in self.consumers.get(tensor, []) if n.op_type == op_type]
        if len(found) != 1:
            seen = sorted({n.op_type for n in self.consumers.get(tensor, [])}) or ["nothing"]
            raise EncoderPatternError(f"{layer}: {pattern} pattern not found: expected one {op_type} after {after}, "
                                      f"found {', '.join(seen)}")
        return found[0]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _check_only_first_output_used(g: _Graph, node, layer: str, what: str) -> None:
    for extra in list(node.output)[1:]:
        if extra and (g.consumers.get(extra) or extra in g.outputs):
            raise EncoderPatternError(f"{layer}: {what} uses {node.op_type} output {extra!r}, which bort-infer's op "
                                      "does not produce")


def _skip_layernorm(g: _Graph, branch: str, residual: str, layer: str, pattern: str, after: str):
    node = g.only_consumer(branch, "SkipLayerNormalization", layer, pattern, after)
    if {_input(node, 0), _input(node, 1)} != {branch, residual}:
        raise EncoderPatternError(f"{layer}: {pattern} pattern not found: SkipLayerNormalization after {after} does "
                                  "not add the layer's residual input")
    _check_only_first_output_used(g, node, layer, pattern)
    gamma = g.array(_input(node, 2), "LayerNorm gamma", layer)
    beta = g.array(_input(node, 3), "LayerNorm beta", layer) if _input(node, 3) else None
    bias = g.array(_input(node, 4), "projection bias", layer) if _input(node, 4) else None
    return node, gamma, beta, bias, float(_attr(node, "epsilon", 1e-12))


def recognize(model) -> Encoder:
    """Read the encoder out of an onnxruntime-fused BERT graph (see fuse_with_onnxruntime)."""
    g = _Graph(model)
    embeds = [n for n in g.nodes if n.op_type == "EmbedLayerNormalization"]
    if len(embeds) != 1:
        raise EncoderPatternError(f"embeddings: expected one EmbedLayerNormalization (word + position embeddings "
                                  f"+ LayerNorm, fused by onnxruntime), found {len(embeds)}")
    emb = embeds[0]
    where = "embeddings"
    word = g.array(_input(emb, 2), "word embedding table", where)
    position = g.array(_input(emb, 3), "position embedding table", where).copy()
    if _input(emb, 4):
        segment_ids = _input(emb, 1)
        if segment_ids and segment_ids in {i.name for i in model.graph.input}:
            raise EncoderPatternError("embeddings: token type ids are a graph input; bort-infer exports encoders "
                                      "with token type 0 (one text per row)")
        position += g.array(_input(emb, 4), "token type embedding table", where)[0]
    if _input(emb, 8):
        raise EncoderPatternError("embeddings: explicit position ids are not supported (positions 0, 1, 2, ...)")
    # Its second output (the mask index) only feeds the Attention nodes, which take the model's mask instead.
    enc = Encoder(word=word, position=position, emb_gamma=g.array(_input(emb, 5), "LayerNorm gamma", where),
                  emb_beta=g.array(_input(emb, 6), "LayerNorm beta", where),
                  emb_eps=float(_attr(emb, "epsilon", 1e-12)))
    hidden = word.shape[1]

    x = emb.output[0]
    while any(n.op_type == "Attention" for n in g.consumers.get(x, [])):
        layer = f"layer {len(enc.layers)}"
        attn = g.only_consumer(x, "Attention", layer, "attention", "the layer input")
        if _attr(attn, "unidirectional", 0) or _attr(attn, "do_rotary", 0) or _input(attn, 4) or _input(attn, 5):
            raise EncoderPatternError(f"{layer}: attention pattern not found: Attention is causal, rotary, or has "
                                      "past state or an attention bias (an encoder's self-attention has none)")
        sizes = _attr(attn, "qkv_hidden_sizes")
        if sizes is not None and list(sizes) != [hidden] * 3:
            raise EncoderPatternError(f"{layer}: attention has qkv_hidden_sizes {list(sizes)}; expected 3 x {hidden}")
        _check_only_first_output_used(g, attn, layer, "attention")
        scale = float(_attr(attn, "scale", 0.0)) or None
        qkv = g.array(_input(attn, 1), "QKV weight", layer)
        qkv_bias = g.array(_input(attn, 2), "QKV bias", layer)
        if qkv.shape != (hidden, 3 * hidden) or qkv_bias.shape != (3 * hidden,):
            raise EncoderPatternError(f"{layer}: QKV weight {qkv.shape} / bias {qkv_bias.shape} do not match hidden "
                                      f"size {hidden}")
        out_mm = g.only_consumer(attn.output[0], "MatMul", layer, "attention output projection", "Attention")
        attn_out = g.array(_input(out_mm, 1), "attention output weight", layer)
        sln1, g1, b1, bias1, eps1 = _skip_layernorm(g, out_mm.output[0], x, layer, "skip+LayerNorm (attention)",
                                                    "the attention output projection")
        h = sln1.output[0]
        ffn_mm = g.only_consumer(h, "MatMul", layer, "FFN input projection", "the attention's LayerNorm")
        gelu = g.only_consumer(ffn_mm.output[0], "BiasGelu", layer, "bias+GELU", "the FFN input projection")
        ffn_in_bias = g.array(_input(gelu, 1), "FFN input bias", layer)
        ffn_in = g.array(_input(ffn_mm, 1), "FFN input weight", layer)
        out2 = g.only_consumer(gelu.output[0], "MatMul", layer, "FFN output projection", "bias+GELU")
        ffn_out = g.array(_input(out2, 1), "FFN output weight", layer)
        sln2, g2, b2, bias2, eps2 = _skip_layernorm(g, out2.output[0], h, layer, "skip+LayerNorm (FFN)",
                                                    "the FFN output projection")
        zeros = np.zeros(hidden, np.float32)
        enc.layers.append(Layer(
            num_heads=int(_attr(attn, "num_heads")), scale=scale, qkv=qkv, qkv_bias=qkv_bias,
            attn_out=attn_out, attn_out_bias=zeros if bias1 is None else bias1, ln1_gamma=g1, ln1_beta=b1,
            ln1_eps=eps1, ffn_in=ffn_in, ffn_in_bias=ffn_in_bias, ffn_out=ffn_out,
            ffn_out_bias=zeros if bias2 is None else bias2, ln2_gamma=g2, ln2_beta=b2, ln2_eps=eps2))
        x = sln2.output[0]
    if not enc.layers:
        raise EncoderPatternError("layer 0: attention pattern not found: no fused Attention follows the embeddings")
    if g.outputs[:1] != [x]:
        raise EncoderPatternError(f"layer {len(enc.layers)}: attention pattern not found: the output of layer "
                                  f"{len(enc.layers) - 1} is not the graph output and no fused Attention follows it")
    return enc


# ---------------------------------------------------------------------------------------------- emission

@dataclass
class QuantizedLinear:
    """int8 weights with one scale per output column."""

    weight: np.ndarray  # int8 [K, N]
    scale: np.ndarray  # float32 [N]

    def columns(self, start: int, stop: int) -> QuantizedLinear:
        return QuantizedLinear(np.ascontiguousarray(self.weight[:, start:stop]), self.scale[start:stop])


@dataclass
class QuantizedTable:
    """An embedding table as int8 rows with one scale per row."""

    values: np.ndarray  # int8 [V, H]
    scale: np.ndarray  # float32 [V]


@dataclass
class Bf16Linear:
    """bf16 weights (uint16 bit patterns, round to nearest even) for LinearBf16."""

    bits: np.ndarray  # uint16 [K, N]

    def columns(self, start: int, stop: int) -> Bf16Linear:
        return Bf16Linear(np.ascontiguousarray(self.bits[:, start:stop]))


@dataclass
class Bf16Table:
    """An embedding table stored as bf16 (uint16 bit patterns), widened to float32 after the lookup."""

    bits: np.ndarray  # uint16 [V, H]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns, round to nearest even (bort_infer._C.float_to_bf16's rule: NaN stays a quiet
    NaN, fp32 subnormals become signed zero)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    out = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    subnormal = (u & 0x7F800000) == 0
    out[subnormal] = ((u[subnormal] >> 16) & 0x8000).astype(np.uint16)
    return out


LinearPrecision = QuantizedLinear | Bf16Linear
TablePrecision = QuantizedTable | Bf16Table


@dataclass
class Precision:
    """What emit changes from fp32: linears by (layer, name) in LINEARS (int8 or bf16), optionally the
    embedding tables (int8 or bf16), and the arithmetic of attention's Q K^T and P V: "fp32" or "bf16" (bf16
    operands, fp32 accumulation and softmax; the attention ops' attribute 'precision', csrc/attention.h)."""

    linears: dict[tuple[int, str], LinearPrecision] = field(default_factory=dict)
    word: TablePrecision | None = None
    position: TablePrecision | None = None
    attention: str = "fp32"

    def is_int8(self, key: tuple[int, str]) -> bool:
        return isinstance(self.linears.get(key), QuantizedLinear)


class _Builder:
    """Collects nodes, and writes each constant straight into the model being built: the weights exist once
    as protobuf (make_graph and make_model would copy them twice more: 2.7 GB for BERT-large fp32)."""

    def __init__(self):
        from onnx import ModelProto

        self.model = ModelProto()
        self.nodes, self._count = [], defaultdict(int)

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import helper

        a = np.ascontiguousarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        tensor = self.model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(a.dtype)
        tensor.dims.extend(a.shape)
        tensor.raw_data = a.tobytes()
        return name

    def const_bf16(self, name: str, bits: np.ndarray) -> str:
        """A BFLOAT16 initializer from uint16 bit patterns (2 bytes per weight in the file)."""
        from onnx import TensorProto

        bits = np.ascontiguousarray(bits, dtype=np.uint16)
        tensor = self.model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = TensorProto.BFLOAT16
        tensor.dims.extend(bits.shape)
        tensor.raw_data = bits.astype("<u2", copy=False).tobytes()
        return name

    def node(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.node_outputs(op, inputs, name, 1, domain, **attrs)[0]

    def node_outputs(self, op: str, inputs: list[str], name: str, outputs: int, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        self._count[name] += 1
        base = name if self._count[name] == 1 else f"{name}_{self._count[name]}"
        outs = [base] if outputs == 1 else [f"{base}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=base, domain=domain, **attrs))
        return outs


@dataclass
class _Value:
    """An activation [rows, width]: its float tensor and, once made, its per-row int8 form (u8 values,
    row scales, row zero points) for the int8 GEMMs that read it."""

    fp32: str | None
    quantized: tuple[str, str, str] | None = None


def _quantized(b: _Builder, v: _Value, name: str) -> tuple[str, str, str]:
    """v's int8 form, made once (QuantizeRows) unless its producer already emitted it."""
    if v.quantized is None:
        v.quantized = tuple(b.node_outputs("QuantizeRows", [v.fp32], f"{name}/quantize", 3, domain=DOMAIN))
    return v.quantized


def _int8_gemm(b: _Builder, x: _Value, q: QuantizedLinear, name: str) -> list[str]:
    """MatMulInteger (onnxruntime/MLAS, exact int32) of x's u8 rows by int8 weights: the first five inputs
    of DequantizeRows (accumulator, row scales and zero points, column scales, column sums)."""
    xq, xs, xz = _quantized(b, x, name)
    acc = b.node("MatMulInteger", [xq, b.const(f"{name}.weight_int8", q.weight)], f"{name}/matmul")
    colsum = q.weight.astype(np.int32).sum(axis=0).astype(np.int32)
    return [acc, xs, xz, b.const(f"{name}.weight_scale", q.scale.astype(np.float32)),
            b.const(f"{name}.weight_colsum", colsum)]


def _int8_linear(b: _Builder, x: _Value, q: QuantizedLinear, epilogue: list[str], node_name: str, outputs: int,
                 gemm: str, name: str, **attrs) -> list[str]:
    """An int8 linear with DequantizeRows' epilogue inputs (bias, skip, gamma, beta, skip_scale) and outputs (y,
    then the requantized y_quantized, y_scale, y_zero_point). gemm "ours": one LinearInt8 reading x's int8 rows
    when its producer emitted them, else its float rows (quantized inside, as QuantizeRows would); "mlas": the
    three-op form."""
    if gemm == "mlas":
        inputs = _int8_gemm(b, x, q, name) + epilogue
        return b.node_outputs("DequantizeRows", inputs, node_name, outputs, domain=DOMAIN, **attrs)
    rows = [x.fp32, "", "", ""] if x.quantized is None else ["", *x.quantized]
    weight = [b.const(f"{name}.weight_int8", q.weight), b.const(f"{name}.weight_scale", q.scale.astype(np.float32))]
    return b.node_outputs("LinearInt8", rows + weight + epilogue, node_name, outputs, domain=DOMAIN, **attrs)


def _matmul(b: _Builder, x: _Value, weight: np.ndarray, name: str) -> str:
    return b.node("MatMul", [x.fp32, b.const(f"{name}.weight", weight.astype(np.float32))], name)


def _bf16_linear(b: _Builder, x: _Value, q: Bf16Linear, name: str, bias: str = "", **attrs) -> str:
    """LinearBf16: x's float rows rounded to bf16 times the BFLOAT16 weight, fp32 accumulation and epilogue."""
    inputs = [x.fp32, b.const_bf16(f"{name}.weight_bf16", q.bits)] + ([bias] if bias else [])
    return b.node("LinearBf16", inputs, name, domain=DOMAIN, **attrs)


def _linear(b: _Builder, x: _Value, weight: np.ndarray, q: LinearPrecision | None, name: str, gemm: str) -> str:
    """x @ weight, without bias (the attention op that follows adds it)."""
    if q is None:
        return _matmul(b, x, weight, name)
    if isinstance(q, Bf16Linear):
        return _bf16_linear(b, x, q, name)
    return _int8_linear(b, x, q, [], name, 1, gemm, name)[0]


def _linear_gelu(b: _Builder, x: _Value, weight: np.ndarray, q: LinearPrecision | None, bias: np.ndarray,
                 name: str, int8_consumer: bool, gemm: str) -> _Value:
    """gelu(x @ weight + bias): the FFN input projection. int8: one epilogue with the bias and GELU, emitting only
    the int8 rows when the FFN output projection is int8 too. bf16: one LinearBf16 with the bias and GELU in
    its epilogue."""
    bias_name = b.const(f"{name}.bias", bias)
    if q is None:
        return _Value(b.node("BiasGelu", [_matmul(b, x, weight, name), bias_name], f"{name}/gelu", domain=DOMAIN))
    if isinstance(q, Bf16Linear):
        return _Value(_bf16_linear(b, x, q, name, bias_name, activation="gelu"))
    if not int8_consumer:
        return _Value(_int8_linear(b, x, q, [bias_name], name, 1, gemm, name, activation="gelu")[0])
    outs = _int8_linear(b, x, q, [bias_name], name, 4, gemm, name, activation="gelu")
    b.nodes[-1].output[0] = ""  # the float result is not needed: only the next int8 GEMM reads it
    return _Value(None, tuple(outs[1:]))


def _linear_skip_layernorm(b: _Builder, x: _Value, weight: np.ndarray, q: LinearPrecision | None,
                           bias: np.ndarray, residual: str, gamma, beta, skip_scale, eps: float, name: str, ln: str,
                           int8_consumer: bool, gemm: str) -> _Value:
    """LayerNorm(x @ weight + bias + residual [* skip_scale]) * gamma + beta: the attention-output and
    FFN-output projections with BERT's residual + LayerNorm. int8: one epilogue adds the residual, normalises
    and, when the next GEMM is int8, also emits the result's int8 rows. bf16:
    LinearBf16, then SkipLayerNorm (with the bias) as in the fp32 graph."""
    norm = [b.const(f"{ln}.gamma", gamma), b.const(f"{ln}.beta", beta) if beta is not None else ""]
    scale = [b.const(f"{ln}.skip_scale", skip_scale.astype(np.float32))] if skip_scale is not None else []
    bias_name = b.const(f"{ln}.bias", bias)
    if q is None or isinstance(q, Bf16Linear):
        y = b.node("SkipLayerNorm", [_linear(b, x, weight, q, name, gemm), residual, *norm, bias_name, *scale], ln,
                   domain=DOMAIN, epsilon=eps)
        return _Value(y)
    epilogue = [bias_name, residual, *norm, *scale]
    if not int8_consumer:
        return _Value(_int8_linear(b, x, q, epilogue, ln, 1, gemm, name, epsilon=eps)[0])
    y, *quantized = _int8_linear(b, x, q, epilogue, ln, 4, gemm, name, epsilon=eps)
    return _Value(y, tuple(quantized))


def _int8_table(b: _Builder, q: QuantizedTable, name: str) -> tuple[str, str]:
    """An int8 embedding table's initializers: its rows and their scales."""
    return b.const(f"embeddings.{name}_int8", q.values), b.const(f"embeddings.{name}_scale", q.scale.astype(np.float32))


def _lookup(b: _Builder, table: np.ndarray, q: TablePrecision | None, ids: str, name: str) -> str:
    """Rows `ids` of an embedding table (int8 rows times their scale when quantized; bf16 rows widened)."""
    if q is None:
        return b.node("Gather", [b.const(f"embeddings.{name}", table), ids], f"embeddings/{name}")
    if isinstance(q, Bf16Table):
        rows = b.node("Gather", [b.const_bf16(f"embeddings.{name}_bf16", q.bits), ids], f"embeddings/{name}_bf16")
        return b.node("Cast", [rows], f"embeddings/{name}", to=1)
    values, scales = _int8_table(b, q, name)
    rows = b.node("Gather", [values, ids], f"embeddings/{name}_int8")
    scale = b.node("Gather", [scales, ids], f"embeddings/{name}_scale")
    scale = b.node("Unsqueeze", [scale, b.const(f"embeddings.{name}_last_axis", np.array([-1], np.int64))],
                   f"embeddings/{name}_scale_column")
    return b.node("Mul", [b.node("Cast", [rows], f"embeddings/{name}_float", to=1), scale], f"embeddings/{name}")


def _embed_one_op(b: _Builder, word: TablePrecision | None, position: TablePrecision | None, gamma: str, beta: str,
                  eps: float) -> str | None:
    """The packed form's embeddings as one op when both tables are int8 (EmbedLayerNormInt8) or both bf16
    (EmbedLayerNormBf16): the bits of _lookup's nodes for both tables, then SkipLayerNorm, in one pass per token.
    None for other tables (the caller emits _lookup's nodes)."""
    if isinstance(word, QuantizedTable) and isinstance(position, QuantizedTable):
        tables = [*_int8_table(b, word, "word"), *_int8_table(b, position, "position")]
        op = "EmbedLayerNormInt8"
    elif isinstance(word, Bf16Table) and isinstance(position, Bf16Table):
        tables = [b.const_bf16(f"embeddings.{name}_bf16", table.bits) for name, table in (("word", word),
                                                                                        ("position", position))]
        op = "EmbedLayerNormBf16"
    else:
        return None
    return b.node(op, ["input_ids", "position_ids", *tables, gamma, beta], "embeddings/ln", domain=DOMAIN, epsilon=eps)


def _layer_body(b: _Builder, enc: Encoder, i: int, precision: Precision, x: _Value, attention, gemm: str) -> _Value:
    """One layer from its input x; `attention(layer, prefix, x)` emits the form's attention and returns
    (context, residual). Each output is also emitted in int8 form when the GEMM that reads it is int8."""
    layer, p, linears = enc.layers[i], f"layer.{i}", precision.linears
    ctx, residual = attention(layer, p, x)
    h = _linear_skip_layernorm(b, _Value(ctx), layer.attn_out, linears.get((i, "attn_out")), layer.attn_out_bias,
                               residual.fp32, layer.ln1_gamma, layer.ln1_beta, layer.ln1_skip_scale, layer.ln1_eps,
                               f"{p}/attn_out", f"{p}/ln1", int8_consumer=precision.is_int8((i, "ffn_in")), gemm=gemm)
    f = _linear_gelu(b, h, layer.ffn_in, linears.get((i, "ffn_in")), layer.ffn_in_bias, f"{p}/ffn_in",
                     int8_consumer=precision.is_int8((i, "ffn_out")), gemm=gemm)
    return _linear_skip_layernorm(b, f, layer.ffn_out, linears.get((i, "ffn_out")), layer.ffn_out_bias, h.fp32,
                                  layer.ln2_gamma, layer.ln2_beta, layer.ln2_skip_scale, layer.ln2_eps,
                                  f"{p}/ffn_out", f"{p}/ln2", int8_consumer=precision.is_int8((i + 1, "qkv")),
                                  gemm=gemm)


def _attention_attrs(layer: Layer, precision: Precision) -> dict:
    attrs = {"num_heads": layer.num_heads}
    if layer.scale is not None:
        attrs["scale"] = layer.scale
    if precision.attention != "fp32":  # absent means fp32: fp32 graphs stay as they were
        attrs["precision"] = precision.attention
    return attrs


def emit(enc: Encoder, form: str = "packed", precision: Precision | None = None, name: str = "bort-infer",
         gemm: str = "ours"):
    """The encoder as an onnx.ModelProto on bort-infer's ops (see the module docstring for the two forms and
    the two int8 GEMMs)."""
    from onnx import TensorProto, helper

    if form not in FORMS:
        raise ValueError(f"unknown graph form {form!r}; choose one of {', '.join(FORMS)}")
    if gemm not in GEMMS:
        raise ValueError(f"unknown int8 GEMM {gemm!r}; choose one of {', '.join(GEMMS)}")
    precision = precision or Precision()
    b = _Builder()
    H = enc.hidden_size
    gamma, beta = b.const("embeddings.ln.gamma", enc.emb_gamma), b.const("embeddings.ln.beta", enc.emb_beta)
    int64 = TensorProto.INT64

    if form == "padded":
        inputs = [helper.make_tensor_value_info("input_ids", int64, ["batch", "sequence"]),
                  helper.make_tensor_value_info("attention_mask", int64, ["batch", "sequence"])]
        output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "sequence", H])
        words = _lookup(b, enc.word, precision.word, "input_ids", "word")
        seq = b.node("Gather", [b.node("Shape", ["input_ids"], "embeddings/shape"),
                                b.const("embeddings.seq_axis", np.array([1], np.int64))], "embeddings/seq_len")
        # Positions 0..seq-1 as a slice of a constant (onnxruntime rewrites Gather-of-Range into a Slice
        # that rejects the scalar bounds Range takes).
        all_positions = b.const("embeddings.position_ids", np.arange(enc.position.shape[0], dtype=np.int64))
        position_ids = b.node("Slice", [all_positions, b.const("embeddings.zero", np.array([0], np.int64)), seq],
                              "embeddings/position_ids")
        pos = _lookup(b, enc.position, precision.position, position_ids, "position")
        x = _Value(b.node("LayerNormalization", [b.node("Add", [words, pos], "embeddings/sum"), gamma, beta],
                          "embeddings/ln", axis=-1, epsilon=enc.emb_eps))

        for i in range(len(enc.layers)):
            def attention(layer, p, x, i=i):
                qkv = _linear(b, x, layer.qkv, precision.linears.get((i, "qkv")), f"{p}/qkv", gemm)
                ctx = b.node("FusedAttention", [qkv, b.const(f"{p}/qkv.bias", layer.qkv_bias), "attention_mask"],
                             f"{p}/attention", domain=DOMAIN, **_attention_attrs(layer, precision))
                return ctx, x
            x = _layer_body(b, enc, i, precision, x, attention, gemm)
    else:
        inputs = [helper.make_tensor_value_info("input_ids", int64, ["tokens"]),
                  helper.make_tensor_value_info("position_ids", int64, ["tokens"]),
                  helper.make_tensor_value_info("cu_seqlens", int64, ["texts_plus_1"]),
                  helper.make_tensor_value_info("query_rows", int64, ["queries"])]
        output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["queries", H])
        embedded = _embed_one_op(b, precision.word, precision.position, gamma, beta, enc.emb_eps)
        if embedded is None:
            words = _lookup(b, enc.word, precision.word, "input_ids", "word")
            pos = _lookup(b, enc.position, precision.position, "position_ids", "position")
            embedded = b.node("SkipLayerNorm", [words, pos, gamma, beta], "embeddings/ln", domain=DOMAIN,
                              epsilon=enc.emb_eps)
        x = _Value(embedded)

        last = len(enc.layers) - 1
        for i in range(len(enc.layers)):
            def attention(layer, p, x, i=i):
                bias = b.const(f"{p}/qkv.bias", layer.qkv_bias)
                qq = precision.linears.get((i, "qkv"))
                if i < last:
                    qkv = _linear(b, x, layer.qkv, qq, f"{p}/qkv", gemm)
                    return b.node("PackedAttention", [qkv, bias, "cu_seqlens"], f"{p}/attention", domain=DOMAIN,
                                  **_attention_attrs(layer, precision)), x
                # Last layer: keys and values for every token, queries only for the rows asked for.
                rows = _Value(b.node("Gather", [x.fp32, "query_rows"], f"{p}/query_inputs", axis=0))
                if x.quantized is not None:
                    # The int8 rows x's producer emitted, gathered as well: the query projection does not quantize
                    # its rows again (the same values; Bort int8 b8 s128, every row asked for: 1.0 -> 0.74 ms).
                    rows.quantized = tuple(b.node("Gather", [t, "query_rows"], f"{p}/query_inputs_{part}", axis=0)
                                           for t, part in zip(x.quantized, ("int8", "scale", "zero_point")))
                query = _linear(b, rows, layer.qkv[:, :H], qq.columns(0, H) if qq else None, f"{p}/q", gemm)
                kv = _linear(b, x, layer.qkv[:, H:], qq.columns(H, 3 * H) if qq else None, f"{p}/kv", gemm)
                ctx = b.node("PackedAttention", [kv, bias, "cu_seqlens", "query_rows", query], f"{p}/attention",
                             domain=DOMAIN, **_attention_attrs(layer, precision))
                return ctx, rows
            x = _layer_body(b, enc, i, precision, x, attention, gemm)

    # The node producing the last layer's float output writes it under its public name.
    producer = next(n for n in reversed(b.nodes) if x.fp32 in n.output)
    producer.output[list(producer.output).index(x.fp32)] = OUTPUT
    model = b.model  # what helper.make_graph and make_model would make, without copying the initializers
    model.graph.name = name
    model.graph.node.extend(b.nodes)
    model.graph.input.extend(inputs)
    model.graph.output.append(output)
    model.opset_import.extend([helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1),
                               helper.make_opsetid(MS_DOMAIN, 1)])
    model.producer_name = "bort-infer"
    model.ir_version = 8
    return model


def ops_used(model) -> list[str]:
    """bort-infer custom ops a graph uses, sorted."""
    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
