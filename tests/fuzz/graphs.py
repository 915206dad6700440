"""Fuzzed one-node ai.bort_infer graphs as JSON specs (see tests/fuzz/runner.py for the format).

graph_spec(op, seed, mutations, threads, isa) is deterministic: a valid graph of `op` drawn from `seed` (small
shapes that still reach the vector widths and scalar tails), then each (kind, seed) mutation applied in turn: an
input dropped, emptied, of another rank, size, huge-but-empty shape or dtype, hostile values, an attribute dropped,
of the wrong type or absurd, odd output lists, trailing absent inputs left out. Hypothesis chooses op, seeds and
mutations (and shrinks them); a seeded PRNG fills in the details, which keeps each example cheap to draw.
"""
from __future__ import annotations

import math
import random

OPS = ["BiasGelu", "DequantizeRows", "EmbedLayerNormBf16", "EmbedLayerNormInt8", "FusedAttention", "LinearBf16",
       "LinearInt8", "PackedAttention", "QuantizeRows", "SkipLayerNorm"]
HEAD_DIMS = [1, 2, 3, 4, 5, 8, 16, 32]
WIDTHS = [0, 1, 3, 7, 8, 15, 16, 17, 33, 64]
ATTRIBUTES = {  # each op's attributes and their kinds
    "FusedAttention": {"num_heads": int, "scale": float, "precision": str},
    "PackedAttention": {"num_heads": int, "scale": float, "precision": str},
    "SkipLayerNorm": {"epsilon": float},
    "EmbedLayerNormInt8": {"epsilon": float},
    "EmbedLayerNormBf16": {"epsilon": float},
    "DequantizeRows": {"activation": str, "epsilon": float},
    "LinearBf16": {"activation": str},
    "LinearInt8": {"activation": str, "epsilon": float},
    "BiasGelu": {},
    "QuantizeRows": {},
}
MUTATIONS = ["drop", "empty", "rank", "resize", "huge", "dtype", "values", "attr_drop", "attr_type", "attr_absurd",
             "outputs", "trim"]
DTYPES = ["float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "int8", "bool", "str"]
WRONG_TYPED = [2, 2.0, "2", [2, 3], [2.0], {"tensor": [2]}, ["a", "b"]]
ABSURD = {
    int: [0, -1, 2**31, 2**62, -(2**63), 2**63 - 1, 7, 1 << 20],
    float: [math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e-45, 1e38, 3.4e38, 1e300, 1e6],
    str: ["", "GELU", "gelu ", "relu", "none\u00e9", "n" * 1000],
}
# Empty tensors may claim huge dimensions; 2**24 rows still get real (small) outputs; from 2**61 on numpy cannot
# represent the shape and the graph makes the tensor (ConstantOfShape).
HUGE = [2**20, 2**22, 2**24, 2**40, 2**56, 2**61, 2**62, 2**63 // 3 + 1, 2**63 - 1]
MAX_ELEMENTS = 1 << 20


def tensor(r: random.Random, shape, dtype="float32", fill=None, values=None):
    if fill is None:
        fill = "hostile" if r.random() < 0.15 else "normal"
    desc = {"shape": list(shape), "dtype": dtype, "fill": fill, "seed": r.getrandbits(31)}
    if values is not None:
        desc["values"] = [int(v) for v in values]
    return desc


def maybe(r: random.Random, value):
    return value if r.random() < 0.5 else None


def int_dtype(r: random.Random) -> str:
    return r.choice(["int32", "int64"])


def leading(r: random.Random) -> list[int]:
    return [r.randint(0, 3) for _ in range(r.randint(0, 2))]


# ----------------------------------------------------------------------------------------------
# Valid graphs

def fused_attention(r):
    heads, head_dim = r.randint(1, 4), r.choice(HEAD_DIMS)
    batch, seq = r.randint(0, 3), r.randint(0, 6)
    three_h = 3 * heads * head_dim
    mask = None
    kind = r.choice(["none", "keys", "lengths"])
    if kind == "keys":
        mask = tensor(r, [batch, seq], int_dtype(r), "ints")
    elif kind == "lengths":
        mask = tensor(r, [batch], int_dtype(r), values=[r.randint(-3, seq + 3) for _ in range(batch)])
    attrs = {"num_heads": heads}
    if r.random() < 0.5:
        attrs["scale"] = round(r.uniform(-2, 2), 3)
    if r.random() < 0.5:
        attrs["precision"] = r.choice(["fp32", "bf16", "int8"])
    inputs = [["qkv", tensor(r, [batch, seq, three_h])], ["bias", maybe(r, tensor(r, [three_h]))], ["mask", mask]]
    return inputs, attrs, ["out"]


def packed_attention(r):
    heads, head_dim = r.randint(1, 4), r.choice(HEAD_DIMS)
    hidden = heads * head_dim
    cu = [0]
    for _ in range(r.randint(0, 4)):
        cu.append(cu[-1] + r.randint(0, 5))
    tokens = cu[-1]
    rows = None
    if r.random() < 0.5:
        rows = [r.randrange(tokens) for _ in range(r.randint(0, 5))] if tokens else []
    separate = rows is not None and r.random() < 0.5
    inputs = [["qkv", tensor(r, [tokens, (2 if separate else 3) * hidden])],
              ["bias", maybe(r, tensor(r, [3 * hidden]))],
              ["cu_seqlens", tensor(r, [len(cu)], int_dtype(r), values=cu)],
              ["query_rows", None if rows is None else tensor(r, [len(rows)], int_dtype(r), values=rows)],
              ["query", tensor(r, [len(rows), hidden]) if separate else None]]
    attrs = {"num_heads": heads}
    if r.random() < 0.5:
        attrs["scale"] = round(r.uniform(-2, 2), 3)
    if r.random() < 0.5:
        attrs["precision"] = r.choice(["fp32", "bf16", "int8"])
    return inputs, attrs, ["out"]


def bias_gelu(r):
    n = r.choice(WIDTHS)
    return [["x", tensor(r, [*leading(r), n])], ["bias", tensor(r, [n])]], {}, ["out"]


def skip_layernorm(r):
    n = r.choice(WIDTHS)
    shape = [*leading(r), n]
    inputs = [["x", tensor(r, shape)], ["skip", tensor(r, shape)], ["gamma", tensor(r, [n])]]
    inputs += [[name, maybe(r, tensor(r, [n]))] for name in ("beta", "bias", "skip_scale")]
    attrs = {"epsilon": r.choice([1e-12, 1e-5, 0.0, 1.0])} if r.random() < 0.5 else {}
    return inputs, attrs, ["out"]


def embed_layernorm(r, scaled: bool):
    """EmbedLayerNormInt8's inputs (scaled: int8 tables with row scales) or EmbedLayerNormBf16's (bf16 tables)."""
    n, vocab, positions, tokens = r.choice(WIDTHS), r.randint(1, 9), r.randint(1, 6), r.randint(0, 12)
    ids = tensor(r, [tokens], int_dtype(r), values=[r.randrange(vocab) for _ in range(tokens)])
    pos = tensor(r, [tokens], int_dtype(r), values=[r.randrange(positions) for _ in range(tokens)])
    if scaled:
        tables = [["word", tensor(r, [vocab, n], "int8", "bytes")],
                  ["word_scale", tensor(r, [vocab], "float32", "positive")],
                  ["position", tensor(r, [positions, n], "int8", "bytes")],
                  ["position_scale", tensor(r, [positions], "float32", "positive")]]
    else:
        tables = [["word", tensor(r, [vocab, n], "bfloat16")], ["position", tensor(r, [positions, n], "bfloat16")]]
    inputs = [["input_ids", ids], ["position_ids", pos], *tables, ["gamma", tensor(r, [n])],
              ["beta", maybe(r, tensor(r, [n]))]]
    attrs = {"epsilon": r.choice([1e-12, 1e-5, 0.0, 1.0])} if r.random() < 0.5 else {}
    return inputs, attrs, ["out"]


def embed_layernorm_int8(r):
    return embed_layernorm(r, scaled=True)


def embed_layernorm_bf16(r):
    return embed_layernorm(r, scaled=False)


def quantize_rows(r):
    return [["x", tensor(r, [*leading(r), r.choice(WIDTHS)])]], {}, ["q", "scale", "zero_point"]


def epilogue(r, shape, n):
    """DequantizeRows' and LinearInt8's bias, epilogue inputs, attributes and outputs, valid together."""
    inputs = [["bias", maybe(r, tensor(r, [n]))]]
    attrs = {}
    kind = r.choice(["none", "gelu", "layernorm"])
    if kind == "layernorm":
        inputs += [["skip", tensor(r, shape)], ["gamma", tensor(r, [n])]]
        inputs += [[name, maybe(r, tensor(r, [n]))] for name in ("beta", "skip_scale")]
        if r.random() < 0.5:
            attrs["epsilon"] = r.choice([1e-12, 1e-5, 0.0])
    else:
        inputs += [[name, None] for name in ("skip", "gamma", "beta", "skip_scale")]
        if kind == "gelu" or r.random() < 0.5:
            attrs["activation"] = kind
    outputs = r.choice([["y"], ["y", "q", "scale", "zero_point"], ["", "q", "scale", "zero_point"]])
    return inputs, attrs, outputs


def dequantize_rows(r):
    n, lead = r.choice(WIDTHS), leading(r)
    shape = [*lead, n]
    inputs = [["acc", tensor(r, shape, "int32", "ints")],
              ["row_scale", tensor(r, lead, "float32", "positive")],
              ["row_zero_point", tensor(r, lead, "uint8", "ints")],
              ["weight_scale", tensor(r, [n], "float32", "positive")],
              ["weight_colsum", tensor(r, [n], "int32", "ints")]]
    tail, attrs, outputs = epilogue(r, shape, n)
    return inputs + tail, attrs, outputs


def linear_int8(r):
    k, n, lead = r.choice(WIDTHS), r.choice(WIDTHS), leading(r)
    if r.random() < 0.5:  # float rows, quantized by the op
        rows = [["x", tensor(r, [*lead, k])], ["x_quantized", None], ["x_scale", None], ["x_zero_point", None]]
    else:  # rows already quantized
        rows = [["x", None], ["x_quantized", tensor(r, [*lead, k], "uint8", "bytes")],
                ["x_scale", tensor(r, lead, "float32", "positive")],
                ["x_zero_point", tensor(r, lead, "uint8", "bytes")]]
    weight = tensor(r, [k, n], "int8", "bytes")
    if r.random() < 0.5:
        weight["constant"] = True  # an initializer, packed when the session creates the kernel
    tail, attrs, outputs = epilogue(r, [*lead, n], n)
    return rows + [["weight", weight], ["weight_scale", tensor(r, [n], "float32", "positive")]] + tail, attrs, outputs


def linear_bf16(r):
    k, n = r.choice(WIDTHS), r.choice(WIDTHS)
    weight = tensor(r, [k, n], "bfloat16")
    if r.random() < 0.5:
        weight["constant"] = True  # an initializer, packed when the session creates the kernel
    attrs = {"activation": r.choice(["none", "gelu"])} if r.random() < 0.5 else {}
    return [["x", tensor(r, [*leading(r), k])], ["weight", weight], ["bias", maybe(r, tensor(r, [n]))]], attrs, ["y"]


VALID = {"FusedAttention": fused_attention, "PackedAttention": packed_attention, "BiasGelu": bias_gelu,
         "SkipLayerNorm": skip_layernorm, "EmbedLayerNormInt8": embed_layernorm_int8,
         "EmbedLayerNormBf16": embed_layernorm_bf16, "QuantizeRows": quantize_rows,
         "DequantizeRows": dequantize_rows, "LinearBf16": linear_bf16, "LinearInt8": linear_int8}


# ----------------------------------------------------------------------------------------------
# Mutations

def refill(desc):
    """After a shape change, explicit values that no longer fit become random small integers."""
    if "values" in desc and len(desc["values"]) != math.prod(desc["shape"]):
        del desc["values"]
        desc["fill"] = "ints"


def hostile_int(r: random.Random) -> int:
    return r.choice([r.randint(-3, 12), r.randint(-(2**31), 2**31 - 1), r.randint(-(2**63), 2**63 - 1)])


def mutate_input(r, desc, kind):
    shape = desc["shape"]
    if kind == "empty" and shape:
        shape[r.randrange(len(shape))] = 0
    elif kind == "rank":
        if shape and r.random() < 0.5:
            del shape[r.randrange(len(shape))]
        else:
            shape.insert(r.randint(0, len(shape)), r.randint(0, 3))
    elif kind == "resize" and shape:
        shape[r.randrange(len(shape))] = r.randint(0, 9)
    elif kind == "huge" and len(shape) >= 2:
        i, j = r.sample(range(len(shape)), 2)
        shape[i], shape[j] = r.choice(HUGE), 0
    elif kind == "dtype":
        desc["dtype"] = r.choice(DTYPES)
    elif kind == "values":
        if desc["dtype"].startswith("float"):
            desc["fill"] = "hostile"
        elif math.prod(shape) <= 64:
            values = [hostile_int(r) for _ in range(math.prod(shape))]
            if desc["dtype"] == "int32":
                values = [(v + 2**31) % 2**32 - 2**31 for v in values]
            elif desc["dtype"] == "uint8":
                values = [v % 256 for v in values]
            desc["values"] = values
    refill(desc)


def mutate(r, op, inputs, attrs, outputs, kind):
    present = [d for _, d in inputs if d is not None]
    if kind == "drop" and present:
        i = r.choice([i for i, (_, d) in enumerate(inputs) if d is not None])
        inputs[i][1] = None
    elif kind in ("empty", "rank", "resize", "huge", "dtype", "values") and present:
        mutate_input(r, r.choice(present), kind)
    elif kind.startswith("attr"):
        known = ATTRIBUTES[op]
        names = sorted(set(known) | set(attrs))
        if kind == "attr_drop" and attrs:
            del attrs[r.choice(sorted(attrs))]
        elif kind == "attr_type" and names:
            name = r.choice(names)
            attrs[name] = r.choice([v for v in WRONG_TYPED if type(v) is not known.get(name)])
        elif kind == "attr_absurd" and names:
            name = r.choice(names)
            attrs[name] = r.choice(ABSURD[known.get(name, int)])
        elif kind == "attr_type":  # an op without attributes gets one it does not know
            attrs["epsilon"] = 1.0
    elif kind == "outputs":
        outputs[:] = [f"out{i}" if r.random() < 0.6 else "" for i in range(r.randint(0, 5))] or [""]


def graph_spec(op: str, seed: int, mutations=(), threads: int = 1, isa: str = "auto") -> dict:
    r = random.Random(seed)
    inputs, attrs, outputs = VALID[op](r)
    spec = {"op": op, "inputs": inputs, "attrs": attrs, "outputs": outputs, "threads": threads, "isa": isa}
    for kind, mutation_seed in mutations:
        if kind == "trim":
            spec["trim"] = True
        else:
            mutate(random.Random(mutation_seed), op, inputs, attrs, outputs, kind)
    return spec


def materializable(spec: dict) -> bool:
    """False when a later mutation removed a huge dimension's zero partner (too many elements to make), or for an
    empty string tensor numpy cannot hold (the others are made in the graph)."""
    return all(d is None or (math.prod(d["shape"]) <= MAX_ELEMENTS and
                             (d["dtype"] != "str" or 8 * math.prod(x for x in d["shape"] if x) < 2**63))
               for _, d in spec["inputs"])
