"""bf16 precision with a measured fidelity gate.

What changes from fp32: every linear (QKV, attention output, FFN input with its bias and GELU, FFN output,
and the last layer's query / key-value split of the CLS path) runs on LinearBf16: its weights are stored as
BFLOAT16 initializers (2 bytes each), its input rows are rounded to bf16 on the fly, products and sums stay
fp32, and the bias and GELU are applied to the fp32 accumulators. The word and position embedding tables are
stored as bf16 too and widened after the lookup, so the file is about half the fp32 one. Attention's two
products (Q K^T, P V) take bf16 operands with fp32 accumulation (where the CPU has AVX512-BF16; fp32 elsewhere).
Everything else (softmax, LayerNorms, residuals) stays fp32. Rounding is per element, so a text's vector does not depend
on its batch.

The export measures the bf16 graph against the fp32 one on the built-in evaluation texts (the odd lines of
the int8 text set) and fails under MIN_COSINE.
"""
from __future__ import annotations

import logging

from .graph_rewrite import LINEARS, Bf16Linear, Bf16Table, Encoder, Precision, emit, to_bf16_bits
from .quantize import Embedder, batch_consistency, builtin_texts, cosine_stats

log = logging.getLogger(__name__)

# Every evaluation text's bf16 vector keeps at least this cosine to its fp32 vector, or the export fails.
MIN_COSINE = 0.9999


def bf16_precision(enc: Encoder, tables: bool = True) -> Precision:
    """Every linear in bf16; the embedding tables too unless tables=False."""
    linears = {(i, n): Bf16Linear(to_bf16_bits(getattr(layer, n))) for i, layer in enumerate(enc.layers)
               for n in LINEARS}
    if not tables:
        return Precision(linears, attention="bf16")
    return Precision(linears, Bf16Table(to_bf16_bits(enc.word)), Bf16Table(to_bf16_bits(enc.position)),
                     attention="bf16")


def convert_encoder(enc: Encoder, form: str, embed: Embedder, fp32_vectors=None) -> tuple[object, dict]:
    """The bf16 graph of `enc` in `form` and its fidelity report; raises ValueError under the gate.
    fp32_vectors: the fp32 graph's vectors of the evaluation texts (builtin_texts()[1]) when the caller has
    them (the exporter reads them from the fp32 model it wrote); otherwise the fp32 graph is emitted again
    here to compute them, which holds a second full fp32 copy of the weights beside the bf16 graph."""
    _, evaluation = builtin_texts()
    if fp32_vectors is None:
        fp32_vectors = embed(emit(enc, form), evaluation)
    model = emit(enc, form, bf16_precision(enc))
    stats = cosine_stats(embed(model, evaluation), fp32_vectors)
    passed = stats["cosine_min"] >= MIN_COSINE
    report = {
        "weights": "bf16 (round to nearest even): QKV, attention output, FFN in and out; word and position "
                   "embeddings",
        "activations": "rounded to bf16 at each linear's input and as attention's Q K^T and P V operands; fp32 "
                       "accumulation, bias, GELU, softmax, LayerNorm and residuals",
        "evaluation": {"source": "built-in", **stats},
        "batch_consistency": batch_consistency(model, evaluation, embed),
        "gate": {"min_cosine": MIN_COSINE, "passed": passed},
    }
    log.info("bf16 fidelity on the evaluation texts: %s", stats)
    if not passed:
        raise ValueError(f"bf16 fidelity under the gate: evaluation cosine min {stats['cosine_min']:.6f} (need >= "
                         f"{MIN_COSINE}); the model was not written. Export fp32 instead")
    return model, report
