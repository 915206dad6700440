"""Checkpoints and exports that bort-bench measures, built once and cached under the user's cache dir.

Each artifact is a directory `<cache>/<model>/<name>` made from other artifacts (ARTIFACTS names what
each needs); a stamp records the code, library versions and sources it was made from, so an artifact
made by other code or from another source is rebuilt, not reused. Every artifact is written to a
temporary directory and renamed into place: a killed build never leaves one that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..registry import model_spec

CACHE_LAYOUT_VERSION = 2
STAMP = ".bort-bench-stamp.json"


def cache_root() -> Path:
    base = os.environ.get("BORT_INFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bort-infer")
    return Path(base) / f"bench-v{CACHE_LAYOUT_VERSION}"


def path(model: str, name: str) -> Path:
    """Where artifact `name` of `model` lives (whether or not it is built)."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    return cache_root() / model / name


# ---------------------------------------------------------------------------------------------- builders
# Each writes artifact `name` of `model` into the empty directory `out`; what it needs is already built.

def _checkpoint(model: str, out: Path) -> None:
    """Random-init HF checkpoint of a known model (exact config)."""
    from ..export.random_checkpoint import create_random_checkpoint

    create_random_checkpoint(model, out, seed=0)


def _export(**options) -> Callable[[str, Path], None]:
    """`bort-infer export` of the checkpoint; ours start from the plain export's torch.onnx graph (exporting
    BERT-large through torch.onnx again would cost a minute and 5 GB for the same graph)."""
    def build(model: str, out: Path) -> None:
        from ..export.export import export_model

        plain = {"plain_onnx": path(model, "plain-fp32") / "model.onnx"} if options.get("custom_ops") else {}
        export_model(str(path(model, "checkpoint")), out, overwrite=True, **options, **plain)
    return build


def _ort_int8(model: str, out: Path) -> None:
    """The plain export quantized as onnxruntime documents it: quantize_dynamic, QInt8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(path(model, "plain-fp32") / "model.onnx"), str(out / "model.onnx"),
                     weight_type=QuantType.QInt8)


def drop_noop_shape_reshapes(model) -> int:
    """Remove each Reshape to [-1] of a Shape node's output (already rank 1: a no-op), its consumers reading
    the Shape output instead; returns how many. onnxruntime's BERT optimizer removes exactly these with its
    symbolic shape inference (remove_useless_reshape_nodes)."""
    from onnx import numpy_helper

    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    dropped = 0
    for node in list(g.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "Shape" or node.output[0] in {o.name for o in g.output}:
            continue
        if numpy_helper.to_array(inits[node.input[1]]).tolist() != [-1]:
            continue
        for other in g.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = node.input[0]
        g.node.remove(node)
        if not any(node.input[1] in n.input for n in g.node):
            g.initializer.remove(inits[node.input[1]])
        dropped += 1
    return dropped


def _ort_fused_fp32(model: str, out: Path) -> None:
    """The plain export after onnxruntime's transformers optimizer (its fused Attention, SkipLayerNormalization,
    BiasGelu, EmbedLayerNormalization): onnxruntime's own best fp32 graph for BERT, as its users make it
    (optimize_model(path, model_type="bert", num_heads=..., hidden_size=...)), except that the optimizer's
    symbolic shape inference is off: it holds several copies of the weights (BERT-large: 11.7 GiB peak with it,
    5.3 GiB without, measured on an AMD EPYC Zen 4, 6 Dec 2026). What it changes here is one no-op Reshape
    of a shape vector that it would have removed, removed here instead (drop_noop_shape_reshapes): the file
    is byte for byte the default one (checked on BERT-large and Bort; tests/bench/test_artifacts.py on the
    tiny models). A graph whose fusions need the inferred shapes is optimized again with them."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model_spec(model)["hf_config"]
    options = FusionOptions("bert")
    options.enable_shape_inference = False
    source = str(path(model, "plain-fp32") / "model.onnx")
    optimized = optimize_model(source, model_type="bert", num_heads=cfg["num_attention_heads"],
                               hidden_size=cfg["hidden_size"], optimization_options=options)
    ops = [n.op_type for n in optimized.model.graph.node]
    if ops.count("EmbedLayerNormalization") != 1 or ops.count("Attention") != cfg["num_hidden_layers"]:
        del optimized
        optimized = optimize_model(source, model_type="bert", num_heads=cfg["num_attention_heads"],
                                   hidden_size=cfg["hidden_size"])
    else:
        drop_noop_shape_reshapes(optimized.model)
    optimized.save_model_to_file(str(out / "model.onnx"))


def _ctranslate2_int8(model: str, out: Path) -> None:
    """The checkpoint converted by CTranslate2's own converter with int8 weights."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(path(model, "checkpoint"))).convert(str(out), quantization="int8", force=True)


def _openvino_int8(model: str, out: Path) -> None:
    """NNCF post-training quantization of the plain export as OpenVINO documents it for transformers
    (`nncf.quantize(model, nncf.Dataset(...), model_type=nncf.ModelType.TRANSFORMER)`), calibrated on the
    same texts as bort-infer's int8 export (the built-in set's calibration half, one tokenized text per
    item); saved as OpenVINO IR without fp16 compression of the rest."""
    import nncf
    import numpy as np
    import openvino as ov
    from tokenizers import Tokenizer

    from ..export.quantize import builtin_texts

    tokenizer = Tokenizer.from_file(str(path(model, "plain-fp32") / "tokenizer.json"))
    tokenizer.no_padding()
    items = []
    for e in tokenizer.encode_batch(builtin_texts()[0]):
        ids = np.array([e.ids], dtype=np.int64)
        items.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    ov_model = ov.Core().read_model(str(path(model, "plain-fp32") / "model.onnx"))
    quantized = nncf.quantize(ov_model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER)
    del ov_model
    ov.save_model(quantized, str(out / "model.xml"), compress_to_fp16=False)


def _fidelity_reference(model: str, out: Path) -> None:
    """The fidelity texts tokenized in batches and the plain fp32 export's token states for them."""
    import numpy as np
    import onnxruntime as ort

    from . import fidelity

    plain = path(model, "plain-fp32")
    pad_id = int(json.loads((path(model, "checkpoint") / "config.json").read_text()).get("pad_token_id") or 0)
    batches = fidelity.Batches.tokenize(plain / "tokenizer.json", fidelity.texts(), pad_id)
    session = ort.InferenceSession(str(plain / "model.onnx"), providers=["CPUExecutionProvider"])
    states = [session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
              for ids, mask in zip(batches.ids, batches.masks)]
    batches.save(out / "reference.npz", [np.asarray(s) for s in states])


@dataclass(frozen=True)
class Artifact:
    name: str
    needs: tuple[str, ...]  # artifacts it is made from
    build: Callable[[str, Path], None]
    modules: tuple[str, ...] = ()  # libraries whose versions it depends on (recorded in its stamp)
    # Peak memory of its build process as a multiple of the model's fp32 weight bytes (plus the fixed
    # suite.BASE_BYTES for the interpreter and libraries): what the build scheduler reserves for it. Each
    # is (peak - BASE_BYTES) / weight bytes of its BERT-large build as bort-bench reported it (run.resources),
    # 6 Dec 2026 on an AMD EPYC Zen 4 (2 cores, load 5-7), rounded up.
    memory: float = 4.3
    # Files and folders of the package (besides the builder itself) whose code makes it.
    code: tuple[str, ...] = ()


ARTIFACTS: dict[str, Artifact] = {a.name: a for a in (
    # Measured BERT-large peaks (GiB): checkpoint 1.83, plain-fp32 5.69, bort-infer-fp32 4.59, bort-infer-int8
    # 5.82, bort-infer-bf16 5.79, ort-int8 4.12, ort-fused-fp32 5.34, ctranslate2-int8 2.39, openvino-int8 5.05,
    # fidelity-reference 1.44 and 2.11 in two runs (the int8 exports on either GEMM are the same export).
    Artifact("checkpoint", (), _checkpoint, ("torch", "transformers", "tokenizers"), memory=1.1,
             code=("export/random_checkpoint.py", "export/tokenizer_training.py", "registry.py")),
    Artifact("plain-fp32", ("checkpoint",), _export(custom_ops=False), ("torch", "onnx", "onnxruntime"), memory=4.2,
             code=("export/",)),
    Artifact("bort-infer-fp32", ("checkpoint", "plain-fp32"), _export(custom_ops=True),
             ("torch", "onnx", "onnxruntime"), memory=3.35, code=("export/",)),
    Artifact("bort-infer-int8", ("checkpoint", "plain-fp32"), _export(custom_ops=True, quantize="int8"),
             ("torch", "onnx", "onnxruntime"), memory=4.3, code=("export/",)),
    Artifact("bort-infer-bf16", ("checkpoint", "plain-fp32"), _export(custom_ops=True, quantize="bf16"),
             ("torch", "onnx", "onnxruntime"), memory=4.3, code=("export/",)),
    # The int8 export on each int8 GEMM, whatever this CPU's default (benchmarks/bench_gemm.py compares them).
    Artifact("bort-infer-int8-ours", ("checkpoint", "plain-fp32"),
             _export(custom_ops=True, quantize="int8", gemm="ours"), ("torch", "onnx", "onnxruntime"),
             code=("export/",)),
    Artifact("bort-infer-int8-mlas", ("checkpoint", "plain-fp32"),
             _export(custom_ops=True, quantize="int8", gemm="mlas"), ("torch", "onnx", "onnxruntime"),
             code=("export/",)),
    Artifact("ort-int8", ("plain-fp32",), _ort_int8, ("onnx", "onnxruntime"), memory=2.95),
    Artifact("ort-fused-fp32", ("plain-fp32",), _ort_fused_fp32, ("onnx", "onnxruntime"), memory=3.95),
    Artifact("ctranslate2-int8", ("checkpoint",), _ctranslate2_int8, ("ctranslate2", "transformers"), memory=1.55),
    Artifact("openvino-int8", ("plain-fp32",), _openvino_int8, ("openvino", "nncf"), memory=3.7,
             code=("export/data/", "export/quantize.py")),
    Artifact("fidelity-reference", ("plain-fp32", "checkpoint"), _fidelity_reference, ("onnxruntime", "tokenizers"),
             memory=1.35, code=("bench/fidelity.py", "export/data/", "export/quantize.py")),
)}


# ---------------------------------------------------------------------------------------------- stamps

def _code_digest(art: Artifact) -> str:
    """SHA-256 of the code that makes `art` (its builder's source and the package files it names): an
    artifact made by other code is rebuilt, not reused, and one whose code did not change is kept."""
    import inspect

    package = Path(__file__).resolve().parent.parent
    files: list[Path] = []
    for entry in art.code:
        where = package / entry
        files += sorted(p for p in where.rglob("*") if p.is_file() and p.suffix in (".py", ".txt")) \
            if where.is_dir() else [where]
    h = hashlib.sha256(inspect.getsource(art.build).encode())
    for f in files:
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _versions(modules: tuple[str, ...]) -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for m in modules:
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            out[m] = None
    return out


def _stamp(model: str, name: str) -> dict:
    """What artifact `name` of `model` is made from: config, code, library versions and its sources' stamps."""
    from .. import __version__

    art = ARTIFACTS[name]
    stamp = {"artifact": name, "model": model_spec(model), "bort_infer": __version__, "code": _code_digest(art),
             "versions": _versions(art.modules)}
    stamp["sources"] = {dep: _read_stamp(path(model, dep)) for dep in art.needs}
    return stamp


def _read_stamp(directory: Path) -> dict | None:
    f = directory / STAMP
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def is_built(model: str, name: str) -> bool:
    """Is artifact `name` of `model` in the cache, made by this code from its current sources?"""
    art = ARTIFACTS[name]
    if not all(is_built(model, dep) for dep in art.needs):
        return False
    stamp = _read_stamp(path(model, name))
    return stamp is not None and stamp == _stamp(model, name)


def build(model: str, name: str) -> Path:
    """Build artifact `name` of `model` (what it needs must be built already); returns its directory."""
    art = ARTIFACTS[name]
    missing = [dep for dep in art.needs if not is_built(model, dep)]
    if missing:
        raise RuntimeError(f"{model} {name} needs {', '.join(missing)} built first")
    out = path(model, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out.parent))
    try:
        work = tmp / "out"
        work.mkdir()
        art.build(model, work)
        (work / STAMP).write_text(json.dumps(_stamp(model, name)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def plan(model: str, names) -> list[str]:
    """`names` and everything they need, each once, in an order that builds what is needed first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in ARTIFACTS[name].needs:
            visit(dep)
        order.append(name)

    for n in names:
        visit(n)
    return order


def ensure(model: str, name: str) -> Path:
    """Artifact `name` of `model`, built in this process (with what it needs) unless cached: for the
    pytest-benchmark suites; bort-bench builds in child processes (bench.suite)."""
    for step in plan(model, [name]):
        if not is_built(model, step):
            build(model, step)
    return path(model, name)


def checkpoint(model: str) -> Path:
    """The random-init checkpoint of a known model (built in this process unless cached)."""
    return ensure(model, "checkpoint")


def export(model: str, variant: str) -> Path:
    """A model directory of one of the exports: plain-fp32, bort-infer-fp32, bort-infer-int8 or bort-infer-bf16."""
    if variant not in ("plain-fp32", "bort-infer-fp32", "bort-infer-int8", "bort-infer-bf16"):
        raise ValueError(f"unknown export variant {variant!r}")
    return ensure(model, variant)


def ort_dynamic_int8(model: str) -> Path:
    """onnxruntime's quantize_dynamic of the plain export: the model.onnx path."""
    return ensure(model, "ort-int8") / "model.onnx"


def weight_bytes(model: str) -> int:
    """fp32 bytes of the model's weights (embeddings and encoder), from its config."""
    c = model_spec(model)["hf_config"]
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c.get("type_vocab_size", 2)) * h
    per_layer = 4 * h * h + 2 * h * i + 9 * h + i
    return 4 * (embeddings + n * per_layer)
