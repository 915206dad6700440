"""int8 quantization with a measured fidelity gate.

What is quantized: every large GEMM (QKV, attention output, FFN in and out) to int8 weights with one scale
per output column, and the word and position embedding tables to int8 with one scale per row. Activations are quantized
on the fly per row (per token: QuantizeRows → onnxruntime's MatMulInteger → DequantizeRows), so a token's
range is its own: no calibrated range to clip unseen text, no outlier token costing the others their
resolution, and a text's vector does not depend on what else is in its batch (onnxruntime's
DynamicQuantizeMatMul uses one range per tensor, i.e. per batch). Attention's Q K^T takes int8 operands (each query
and key row quantized on its own) and P V bf16 operands, fp32 accumulation and softmax (where the CPU has
AVX512-BF16; fp32 elsewhere): int8 Q K^T is kept only when the evaluation texts pass the gate with it, else both
products take bf16 operands (step 4 below).

Beyond plain per-channel quantization, three measured steps, each kept only when the calibration texts
say it helps:
1. Activation smoothing (SmoothQuant, Xiao et al. 2022), kept when it helps: the LayerNorm outputs that feed QKV and
   the FFN carry a few outlier channels whose range would dominate each token's activation scale. Each such
   channel k is divided by s_k = max|x_k|^alpha / max|W_k|^(1-alpha), folded into the producing LayerNorm's
   gamma and beta, and the weight rows are multiplied by s_k; the residual path gets s back inside
   SkipLayerNorm (skip_scale). The folding is exact in real arithmetic and costs nothing at run time.
2. Per-layer fallback: linears whose int8 form costs the most fidelity per FLOP stay fp32, one at a time,
   until the calibration texts meet the aims.
3. The result is measured on evaluation texts the search never saw; the export fails if it is under the
   gate (--max-drop).
4. Attention: the search runs with bf16 products; the result is then measured with int8 Q K^T (csrc/attention.h,
   precision "int8") on the evaluation texts, and kept when that passes the gate; else attention stays bf16.
Calibration texts are the built-in set's even lines (or the user's texts); evaluation texts are its odd
lines. The batch-dependence of per-tensor activation scales is measured too: the same texts alone vs inside
batches of 16 mixed-length texts.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from importlib import resources

import numpy as np

from ..model_dir import INT8_WEIGHTS
from .graph_rewrite import LINEARS, Encoder, Precision, QuantizedLinear, QuantizedTable, emit

log = logging.getLogger(__name__)

# Default gate: every evaluation text's int8 vector keeps cosine >= 1 - max_drop to its fp32 vector and
# the mean stays >= 1 - max_drop / 4 (so 0.98 and 0.995 by default).
DEFAULT_MAX_DROP = 0.02
# The search aims at half the allowed drop on calibration texts, leaving room for unseen text.
AIM_FRACTION = 0.5
SMOOTHING_ALPHAS = (0.5, 0.7, 0.85)
MAX_CALIBRATION_TEXTS = 1024
BATCH_CHECK_TEXTS = 32

Embedder = Callable[[object, list[str]], np.ndarray]  # (onnx model, texts) → pooled vectors [n, hidden]


@dataclasses.dataclass(frozen=True)
class Gate:
    max_drop: float

    @property
    def min_cosine(self) -> float:
        return 1.0 - self.max_drop

    @property
    def mean_cosine(self) -> float:
        return 1.0 - self.max_drop / 4

    def aims(self) -> tuple[float, float]:
        """(mean, min) cosine the calibration search aims at."""
        return 1.0 - AIM_FRACTION * self.max_drop / 4, 1.0 - AIM_FRACTION * self.max_drop

    def passes(self, stats: dict) -> bool:
        return stats["cosine_min"] >= self.min_cosine and stats["cosine_mean"] >= self.mean_cosine


def builtin_texts() -> tuple[list[str], list[str]]:
    """(calibration, evaluation) halves of the built-in text set."""
    text = resources.files("bort_infer.export").joinpath("data/fidelity_texts.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0::2], lines[1::2]


# ---------------------------------------------------------------------------------------------- weights

# Rows quantized per block: the float64 arithmetic is the same, but its temporaries stay a few MB instead of
# four copies of a whole BERT-large embedding table or FFN weight.
_ROWS_PER_BLOCK = 4096


# How the int8 linears' weights are scaled (model_dir.INT8_WEIGHTS): "full" maps each column's largest |weight| to
# 127; "pair-safe" also keeps every two weights k = 2j, 2j + 1 of one sign within 128 together, so that no u8 x s8
# pair sum can leave the int16 of x86's vpmaddubsw (255 x 128 = 32640): the int8 GEMM is then exact at twice the speed
# on AVX2-only CPUs (csrc/gemm_int8_avx2.cc), and so is onnxruntime's MLAS, which saturates there on full-range
# weights. The price is a coarser step where a column's two largest neighbours of one sign outweigh its largest
# weight (all-MiniLM-L6-v2: median 1.27x, at most 2x), which measured as nothing on STS-B dev (cosine to fp32
# min / mean 0.9973 / 0.9992 against 0.9974 / 0.9993, Spearman 86.72 against 86.68; benchmarks/fidelity_sts.py).
# So an export is pair-safe by default, on every CPU: the same model file then runs exactly and at full speed
# wherever it goes, AVX2-only CPUs included.
DEFAULT_INT8_WEIGHTS = "pair-safe"


def quantize_columns(weight: np.ndarray, int8_weights: str = "full") -> QuantizedLinear:
    """Symmetric int8 per output column of a [K, N] weight, scaled as `int8_weights` says (INT8_WEIGHTS)."""
    if int8_weights not in INT8_WEIGHTS:
        raise ValueError(f"unknown int8 weights {int8_weights!r}; choose one of {', '.join(INT8_WEIGHTS)}")
    largest = np.abs(weight).max(axis=0).astype(np.float64)
    if int8_weights == "pair-safe" and weight.shape[0] > 1:
        # With |w0| / scale + |w1| / scale <= 127 for a pair of one sign, the rounded pair sums to at most 128.
        pairs = weight[:weight.shape[0] // 2 * 2].astype(np.float64).reshape(-1, 2, weight.shape[1])
        positive = np.maximum(pairs, 0).sum(axis=1).max(axis=0)
        negative = np.minimum(pairs, 0).sum(axis=1).min(axis=0)
        largest = np.maximum(largest, np.maximum(positive, -negative))
    scale = largest / 127.0
    scale[scale == 0] = 1.0
    out = np.empty(weight.shape, np.int8)
    for r in range(0, weight.shape[0], _ROWS_PER_BLOCK):
        w = weight[r:r + _ROWS_PER_BLOCK].astype(np.float64)
        out[r:r + _ROWS_PER_BLOCK] = np.clip(np.rint(w / scale), -127, 127)
    return QuantizedLinear(out, scale.astype(np.float32))


def quantize_rows(table: np.ndarray) -> QuantizedTable:
    """Symmetric int8 per row of an embedding table."""
    scale = np.abs(table).max(axis=1).astype(np.float64) / 127.0
    scale[scale == 0] = 1.0
    out = np.empty(table.shape, np.int8)
    for r in range(0, table.shape[0], _ROWS_PER_BLOCK):
        t = table[r:r + _ROWS_PER_BLOCK].astype(np.float64)
        out[r:r + _ROWS_PER_BLOCK] = np.clip(np.rint(t / scale[r:r + _ROWS_PER_BLOCK, None]), -127, 127)
    return QuantizedTable(out, scale.astype(np.float32))


def full_int8(enc: Encoder, keep_fp32: frozenset = frozenset(), attention: str = "bf16",
              int8_weights: str = DEFAULT_INT8_WEIGHTS) -> Precision:
    columns = {(i, n): quantize_columns(getattr(layer, n), int8_weights) for i, layer in enumerate(enc.layers)
               for n in LINEARS if (i, n) not in keep_fp32}
    return Precision(columns, quantize_rows(enc.word), quantize_rows(enc.position), attention=attention)


# The int8 export's attention (csrc/attention.h): "int8" when the gate holds with it, else "bf16".
ATTENTION_DESCRIPTIONS = {
    "int8": "Q K^T on int8 operands (each query and key row per head quantized on its own, int32 sums), P V on bf16 "
            "operands, fp32 softmax",
    "bf16": "Q K^T and P V on bf16 operands, fp32 accumulation and softmax",
}


def linear_flops(enc: Encoder, name: str) -> int:
    """Multiply-adds per token of one linear (for ranking fallbacks by cost)."""
    w = getattr(enc.layers[0], name)
    return int(w.shape[0] * w.shape[1])


# ---------------------------------------------------------------------------------------------- smoothing

def activation_channel_max(enc: Encoder, texts: list[str], run_fp32_graph) -> dict[tuple[str, int], np.ndarray]:
    """max |activation| per channel of each smoothable activation over `texts`: ("x", i) is layer i's
    input (feeds QKV), ("h", i) its attention LayerNorm output (feeds the FFN). `run_fp32_graph(model,
    outputs, texts)` runs a packed graph over the texts' real tokens and returns the named outputs."""
    from onnx import TensorProto, helper

    model = emit(enc, "packed")
    wanted: dict[str, tuple[str, int]] = {}
    for node in model.graph.node:
        layer, _, role = node.name.partition("/")
        if node.op_type == "MatMul" and role in ("qkv", "kv", "ffn_in"):
            wanted[node.input[0]] = ("h" if role == "ffn_in" else "x", int(layer.split(".")[1]))
    for name in wanted:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    maxima: dict[tuple[str, int], np.ndarray] = {}
    runs = run_fp32_graph(model, list(wanted), texts)
    del model  # a generator that drops its own reference once the graph is saved frees it before its session loads
    for name, values in runs:
        key = wanted[name]
        m = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
        maxima[key] = m if key not in maxima else np.maximum(maxima[key], m)
    return maxima


def smooth(enc: Encoder, channel_max: dict[tuple[str, int], np.ndarray], alpha: float) -> Encoder:
    """A copy of `enc` whose smoothable activations are divided per channel by s (folded into the LayerNorm
    that produces them), with consumer weight rows multiplied by s and the residual scaled back."""
    # A structural copy: every array that changes is replaced below, never written in place, so the others
    # are shared with `enc` (a deep copy would hold a second full set of weights per candidate).
    out = copy.copy(enc)
    out.layers = [copy.copy(layer) for layer in enc.layers]
    for (kind, i), xmax in channel_max.items():
        layer = out.layers[i]
        consumer = "qkv" if kind == "x" else "ffn_in"
        w = getattr(layer, consumer)
        s = np.maximum(xmax, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)  # a dead channel must not blow up its weight row
        setattr(layer, consumer, (w * s[:, None]).astype(np.float32))
        if kind == "x":
            if i == 0:
                out.emb_gamma, out.emb_beta = out.emb_gamma / s, out.emb_beta / s
            else:
                prev = out.layers[i - 1]
                prev.ln2_gamma = prev.ln2_gamma / s
                prev.ln2_beta = None if prev.ln2_beta is None else prev.ln2_beta / s
            layer.ln1_skip_scale = s
        else:
            layer.ln1_gamma = layer.ln1_gamma / s
            layer.ln1_beta = None if layer.ln1_beta is None else layer.ln1_beta / s
            layer.ln2_skip_scale = s
    return out


# ---------------------------------------------------------------------------------------------- measurement

def cosine_stats(got: np.ndarray, ref: np.ndarray) -> dict:
    a, b = got.astype(np.float64), ref.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"texts": len(cos), "cosine_min": float(cos.min()), "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_mean": float(cos.mean())}


def batch_consistency(model, texts: list[str], embed: Embedder, seed: int = 0) -> dict:
    """Each text alone vs inside a batch of 16 mixed-length texts (different activation ranges)."""
    rng = np.random.default_rng(seed)
    picked = texts[:BATCH_CHECK_TEXTS]
    alone = np.concatenate([embed(model, [t]) for t in picked])
    cos = []
    for i, t in enumerate(picked):
        others = [texts[j] for j in rng.choice(len(texts), size=15, replace=len(texts) < 15)]
        others[0] = " ".join(texts)  # one long neighbour, so the batch's ranges differ from the text's own
        batch = others[:7] + [t] + others[7:]
        v = embed(model, batch)[7]
        cos.append(float(v @ alone[i] / max(np.linalg.norm(v) * np.linalg.norm(alone[i]), 1e-30)))
    return {"texts": len(picked), "batch_size": 16, "cosine_min": min(cos), "cosine_mean": float(np.mean(cos))}


# ---------------------------------------------------------------------------------------------- search

def make_gate(max_drop: float | None) -> Gate:
    gate = Gate(DEFAULT_MAX_DROP if max_drop is None else float(max_drop))
    if not 0.0 < gate.max_drop < 1.0:
        raise ValueError(f"--max-drop must be in (0, 1), got {gate.max_drop}")
    return gate


def quantize_encoder(enc: Encoder, form: str, embed: Embedder, run_fp32_graph, calibration_texts: list[str] | None,
                     gate: Gate, gemm: str = "ours", enforce: bool = True,
                     fp32_embed: Callable[[list[str]], np.ndarray] | None = None,
                     attention_order: tuple[str, ...] = ("int8", "bf16"),
                     int8_weights: str = DEFAULT_INT8_WEIGHTS) -> tuple[object, dict]:
    """The int8 graph of `enc` in `form`, its linears on `gemm` (graph_rewrite.GEMMS) with weights scaled as
    `int8_weights` says (INT8_WEIGHTS), and its fidelity report;
    raises ValueError under the gate unless not `enforce` (a task head is gated on its own decisions instead,
    see bort_infer.export.head_gate). fp32_embed(texts): what `embed` gives for the fp32 graph emit(enc, form),
    when the caller can read it from the fp32 model it wrote; otherwise that graph is emitted again here.
    attention_order: the attention precisions to try, in order; the first that passes the gate is kept (the last
    is gated as `enforce` says)."""
    builtin_calibration, _ = builtin_texts()
    calibration = list(calibration_texts) if calibration_texts else builtin_calibration
    if len(calibration) > MAX_CALIBRATION_TEXTS:  # an even spread over a large corpus
        calibration = [calibration[int(i)] for i in np.linspace(0, len(calibration) - 1, MAX_CALIBRATION_TEXTS)]
    aim_mean, aim_min = gate.aims()

    # fp32 first, each graph dropped once read (BERT-large's is 1.3 GB): the channel maxima, then the
    # reference vectors of the calibration and evaluation texts; the search then holds one graph at a time.
    maxima = activation_channel_max(enc, calibration, run_fp32_graph)
    if fp32_embed is None:
        fp32_model = emit(enc, form)
        ref = embed(fp32_model, calibration)
        evaluation_ref = embed(fp32_model, builtin_texts()[1])
        del fp32_model
    else:
        ref, evaluation_ref = fp32_embed(calibration), fp32_embed(builtin_texts()[1])

    def score(candidate: Encoder, keep_fp32: frozenset) -> dict:
        precision = full_int8(candidate, keep_fp32, int8_weights=int8_weights)
        return cosine_stats(embed(emit(candidate, form, precision, gemm=gemm), calibration), ref)

    def meets(stats: dict) -> bool:
        return stats["cosine_mean"] >= aim_mean and stats["cosine_min"] >= aim_min

    # 1. Plain per-channel int8, and each smoothing strength: smoothing costs nothing at run time, so the
    #    best on the calibration texts' worst percentile wins.
    chosen, alpha, keep = enc, None, frozenset()
    stats = score(enc, keep)
    tried = {"none": stats}
    for a in SMOOTHING_ALPHAS:
        candidate = smooth(enc, maxima, a)
        s = score(candidate, keep)
        tried[f"alpha={a}"] = s
        if (s["cosine_p1"], s["cosine_mean"]) > (stats["cosine_p1"], stats["cosine_mean"]):
            chosen, alpha, stats = candidate, a, s
    # 2. Per-linear fp32 fallback, most fidelity regained per FLOP first, until the aims are met.
    if not meets(stats):
        names = [(i, n) for i in range(len(enc.layers)) for n in LINEARS]
        gains = {}
        for key in names:
            s = score(chosen, frozenset({key}))
            gains[key] = (s["cosine_mean"] - stats["cosine_mean"]) / linear_flops(enc, key[1])
        for key in sorted(names, key=gains.get, reverse=True):
            if meets(stats) or gains[key] <= 0:
                break
            keep = keep | {key}
            stats = score(chosen, keep)
    # 3. and 4. Measure on texts the search never saw, with each attention precision in turn, and gate.
    if not attention_order or any(a not in ATTENTION_DESCRIPTIONS for a in attention_order):
        raise ValueError(f"attention_order must list precisions of {sorted(ATTENTION_DESCRIPTIONS)}, "
                         f"got {attention_order!r}")
    tried_attention = {}
    for i, attention in enumerate(attention_order):
        last = i == len(attention_order) - 1
        model = emit(chosen, form, full_int8(chosen, keep, attention, int8_weights), gemm=gemm)
        measured = measure_and_gate(model, None, embed, gate, enforce=enforce and last, fp32_vectors=evaluation_ref)
        tried_attention[attention] = {k: round(v, 6) for k, v in measured["evaluation"].items()
                                      if k.startswith("cosine")}
        if measured["gate"]["passed"]:
            if enforce:
                measured["gate"]["enforced"] = True
            break
    log.info("int8 export's attention: %s", attention)
    report = {
        "weights": "int8, one scale per output column (QKV, attention output, FFN)" + (
            ", no two weights k = 2j, 2j + 1 of one sign past 128 together" if int8_weights == "pair-safe" else "")
                   + "; word and position embeddings int8 per row",
        "int8_weights": int8_weights,
        "activations": "u8 per row (token), range computed at run time (" + (
            "inside LinearInt8" if gemm == "ours" else "QuantizeRows → MatMulInteger") + ")",
        "attention": ATTENTION_DESCRIPTIONS[attention],
        "attention_precision": attention,
        "attention_tried": tried_attention,
        "smoothing_alpha": alpha,
        "fp32_linears": [f"layer {i} {n}" for i, n in sorted(keep)],
        "calibration": {"source": "user" if calibration_texts else "built-in", **stats,
                        "tried": {k: {"cosine_mean": round(v["cosine_mean"], 6), "cosine_p1": round(v["cosine_p1"], 6)}
                                  for k, v in tried.items()}},
        **measured,
    }
    return model, report


def measure_and_gate(model, fp32_model, embed: Embedder, gate: Gate, enforce: bool = True,
                     fp32_vectors: np.ndarray | None = None) -> dict:
    """Evaluation-text fidelity of `model` against `fp32_model` (or its vectors of the evaluation texts,
    `fp32_vectors`, already computed), batch consistency and the gate verdict; raises ValueError when under
    the gate (and `enforce`)."""
    _, evaluation = builtin_texts()
    reference = fp32_vectors if fp32_vectors is not None else embed(fp32_model, evaluation)
    stats = cosine_stats(embed(model, evaluation), reference)
    result = {"evaluation": {"source": "built-in", **stats},
              "batch_consistency": batch_consistency(model, evaluation, embed),
              "gate": {"max_drop": gate.max_drop, "min_cosine": gate.min_cosine, "mean_cosine": gate.mean_cosine,
                       "passed": gate.passes(stats), "enforced": enforce}}
    log.info("int8 fidelity on the evaluation texts: %s", stats)
    if enforce and not result["gate"]["passed"]:
        raise ValueError(f"int8 fidelity under the gate: evaluation cosine min {stats['cosine_min']:.4f} "
                         f"(need >= {gate.min_cosine:.4f}), mean {stats['cosine_mean']:.4f} (need >= "
                         f"{gate.mean_cosine:.4f}); the model was not written. Raise --max-drop to accept it, or "
                         "export fp32")
    return result


def quantize_plain_dynamic(src, dst) -> None:
    """onnxruntime's own dynamic quantization of a plain graph (--no-custom-ops --quantize int8): int8
    per-channel weights on every MatMul."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
