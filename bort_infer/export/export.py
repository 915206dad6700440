"""`bort-infer export SRC OUT`: a Hugging Face checkpoint → a self-describing bort-infer model directory.

Steps: read the checkpoint (local directory or hub id) → torch.onnx export of the plain graph →
(custom ops) onnxruntime's BERT fusions, then the rewrite onto bort-infer's kernels in packed or padded
form (a task head appended, see bort_infer.export.heads) → parity against PyTorch → (int8) quantization or
(bf16) bf16 linears, each with a measured fidelity gate → model.onnx, tokenizer.json and bort_infer.json,
written to a work directory beside OUT and renamed into place, so a killed export never leaves a directory
that looks complete. The work directory is locked (flock) while its export runs; the next export to the
same OUT removes those whose export was killed.
"""
from __future__ import annotations

import dataclasses
import fcntl
import gc
import glob
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..model_dir import FORMAT_NAME, INT8_WEIGHTS, METADATA_FILE, ModelMetadata
from ..options import progress_bar_disabled
from . import head_gate, heads, hf
from .graph_rewrite import (
    FORMS,
    GEMMS,
    PACKED_INPUTS,
    PADDED_INPUTS,
    emit,
    fuse_with_onnxruntime,
    ops_used,
    recognize,
)
from .onnx_export import INPUTS as PLAIN_INPUTS
from .onnx_export import OUTPUT, export_plain_onnx
from .quantize import builtin_texts, make_gate

log = logging.getLogger(__name__)
QUANTIZATIONS = ("int8", "bf16")

# The exporter refuses a graph whose fp32 output strays further than this from PyTorch's on its own
# parity texts: such a model is wrong, whatever caused it.
PARITY_MIN_COSINE = 0.9999
PARITY_MAX_ABS = 1e-3
# A head's logits against PyTorch's (the tests hold fp32 to 1e-4; this refuses a broken graph).
HEAD_PARITY_MAX_ABS = 1e-3

def default_int8_gemm() -> str:
    """The int8 GEMM an export uses unless told: ours (LinearInt8), which measured at least level with onnxruntime's
    MLAS on CPUs with AVX-512 VNNI (AMD Zen 4) or AMX (Intel Xeon; see benchmarks/bench_gemm.py), and on AVX2-only
    CPUs with pair-safe weights (quantize.DEFAULT_INT8_WEIGHTS; AMD EPYC Zen 3). The two give the same numbers,
    except on an AVX2-only CPU with full-range weights, where MLAS's int16 pair sums (vpmaddubsw) can saturate."""
    return "ours"


def int8_attention_order() -> tuple[str, ...]:
    """The attention precisions an int8 export tries, first choice first (the first that passes the fidelity
    gate is kept): on AMX CPUs bf16 alone (both products on AMX tiles: 2.4-3.1x the int8 Q·Kᵀ path at s512 on an
    Intel Xeon, and closer to fp32); elsewhere int8 Q·Kᵀ (vpdpbusd), then bf16."""
    from .. import _C

    return ("bf16",) if _C.best_isa() == "amx" else ("int8", "bf16")


PARITY_TEXTS = [
    "", "a", "Hello world.", "The quick brown fox jumps over the lazy dog!", "Ünïcödé têxt, 日本語, emoji 😀🚀.",
    "A much longer text that keeps going so that the padded batch has rows of very different lengths " * 3,
    "Numbers 1234567890 and symbols #$%^&*()", "tabs\tand\nnewlines",
]


def _progress(steps: list[str]):
    from tqdm.auto import tqdm

    return tqdm(total=len(steps), desc="export", unit="step", disable=progress_bar_disabled(None), leave=False)


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"output {out} exists and is not a directory")
        contents = list(out.iterdir())
        if contents and not overwrite:
            raise ValueError(f"output directory {out} is not empty; pass --overwrite to replace it")
        if contents and not _is_model_directory(out):
            raise ValueError(f"output directory {out} holds files that are not a bort-infer model "
                             f"({', '.join(sorted(p.name for p in contents)[:5])}); refusing to replace it")
        subdirectories = sorted(p.name for p in contents if p.is_dir() and not p.is_symlink())
        if subdirectories:
            raise ValueError(f"output directory {out} holds directories bort-infer never writes "
                             f"({', '.join(subdirectories[:5])}); refusing to replace it")
    elif not out.parent.is_dir():
        raise ValueError(f"output directory's parent {out.parent} does not exist")


def _is_model_directory(directory: Path) -> bool:
    """Whether --overwrite may delete `directory`: it holds our metadata file (of any format version)."""
    try:
        return json.loads((directory / METADATA_FILE).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


_WORK_INFIX = ".partial-"


def _claim_work_directory(out: Path) -> tuple[Path, int]:
    """A new work directory beside `out` (the same filesystem, for the final rename) and the descriptor that
    holds its lock, after removing the work directories of exports to `out` that were killed."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}{_WORK_INFIX}*"):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its export is running
            os.close(fd)
            continue
        shutil.rmtree(stale, ignore_errors=True)
        os.close(fd)
    # Created under another name and locked before it is renamed to one the sweep above looks at.
    fresh = Path(tempfile.mkdtemp(prefix=f".{out.name}.starting-", dir=out.parent))
    fd = os.open(fresh, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    work = fresh.with_name(f".{out.name}{_WORK_INFIX}{fresh.name.rsplit('-', 1)[1]}")
    os.rename(fresh, work)
    return work, fd


def export_model(src: str, out: str | Path, quantize: str | None = None, custom_ops: bool = True,
                 overwrite: bool = False, form: str | None = None, max_drop: float | None = None,
                 calibration_texts: list[str] | None = None, ort_format: bool = False,
                 gemm: str | None = None, task: str | None = None, evaluation_inputs: list | None = None,
                 min_agreement: float | None = None, min_spearman: float | None = None,
                 plain_onnx: str | Path | None = None, int8_weights: str | None = None) -> ModelMetadata:
    """Export checkpoint `src` to model directory `out`; returns the metadata written there.

    custom_ops: rewrite onto bort-infer's fused kernels (default) or keep onnxruntime's plain graph.
    form: "packed" (default with custom ops: padding-free, CLS-only last layer) or "padded".
    quantize: None (fp32), "int8" or "bf16". max_drop: the int8 fidelity gate (default
    bort_infer.export.quantize.DEFAULT_MAX_DROP); calibration_texts: texts for the int8 search (default:
    the built-in calibration set). See bort_infer.export.quantize; bf16 (bort_infer.export.bf16) has a fixed
    gate and needs custom ops. ort_format: also write model.ort, the same graph in onnxruntime's ORT format
    (bort_infer.export.ort_format), checked to give the same token states. gemm: how int8 linears run with
    custom ops, "ours" (LinearInt8) or "mlas" (onnxruntime's MatMulInteger between our quantize and dequantize
    ops); default default_int8_gemm(); bort_infer.json records it as "int8_gemm". int8_weights: how the int8
    linears' weights are scaled, "pair-safe" (the default, quantize.DEFAULT_INT8_WEIGHTS) or "full".
    task: None (from the checkpoint config's architectures) or one of bort_infer.model_dir.TASKS. A task
    head exports on the packed graph with custom ops, fp32 or int8 (for a head, max_drop is the int8 search's
    aim only). Its int8 gate (bort_infer.export.head_gate) runs on evaluation_inputs (texts, or (text, text)
    pairs; default: the built-in evaluation texts) against min_agreement / min_spearman. plain_onnx: the plain
    torch.onnx export of this same checkpoint's encoder (the model.onnx of a `custom_ops=False` fp32 export),
    to start from instead of exporting again; the parity check against PyTorch still guards the result.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if form is None:
        form = "packed" if custom_ops else "padded"
    if form not in FORMS:
        raise ValueError(f"unknown graph form {form!r}; choose one of {', '.join(FORMS)}")
    if form == "packed" and not custom_ops:
        raise ValueError("the packed graph form runs on bort-infer's ops; it needs custom ops")
    if quantize != "int8" and (max_drop is not None or calibration_texts):
        raise ValueError("--max-drop and calibration texts apply to an int8 export (--precision int8)")
    if quantize == "bf16" and not custom_ops:
        raise ValueError("the bf16 export runs its linears on bort-infer's LinearBf16 op; it needs custom ops")
    if gemm is not None and gemm not in GEMMS:
        raise ValueError(f"unknown int8 GEMM {gemm!r}; choose one of {', '.join(GEMMS)}")
    if gemm is not None and not (quantize == "int8" and custom_ops):
        raise ValueError("--gemm chooses how int8 linears run on bort-infer's ops: it needs --precision int8 and "
                         "custom ops")
    if int8_weights is not None and int8_weights not in INT8_WEIGHTS:
        raise ValueError(f"unknown int8 weights {int8_weights!r}; choose one of {', '.join(INT8_WEIGHTS)}")
    if int8_weights is not None and not (quantize == "int8" and custom_ops):
        raise ValueError("--int8-weights chooses how bort-infer's int8 export scales its weights: it needs "
                         "--precision int8 and custom ops")
    gate = make_gate(max_drop) if quantize == "int8" else None
    if quantize != "int8" and (min_agreement is not None or min_spearman is not None or evaluation_inputs):
        raise ValueError("--min-agreement, --min-spearman and evaluation inputs apply to an int8 export "
                         "(--precision int8)")
    task_gate = head_gate.make_head_gate(min_agreement, min_spearman)
    out = Path(out)
    _prepare_output(out, overwrite)
    directory = hf.resolve_source(src)
    config = hf.read_config(directory)
    spec = heads.detect_task(directory, config, task)
    if spec.is_head and form != "packed":
        raise ValueError(f"a {spec.task} model exports on the packed graph with bort-infer's ops; --form padded "
                         "and --no-custom-ops are for embedding models")
    if spec.is_head and (quantize == "bf16" or ort_format):
        raise ValueError(f"a {spec.task} model exports fp32 or int8 in the ONNX format; --precision bf16 and "
                         "--ort-format are for embedding models")

    bar = _progress(["load", "export", "rewrite", "parity", "quantize", "write"])
    tmp, lock = _claim_work_directory(out)
    try:
        bar.set_postfix_str("loading the checkpoint")
        defaults = hf.pipeline_defaults(directory, config)
        tokenizer, _ = hf.load_fast_tokenizer(directory, defaults.max_length)
        head_weights = None
        if spec.is_head:
            head_model = heads.load_head_model(directory, spec.task)
            head_weights = heads.head_weights(head_model, spec.task)
            head_inputs = heads.parity_inputs(PARITY_TEXTS, spec)
            reference = heads.torch_logits(head_model, tokenizer, head_inputs)
            encoder = head_model.bert
            encoder.pooler = None  # read into head_weights; the encoder graph ends at the token states
            del head_model
        else:
            encoder = hf.load_encoder(directory, attn_implementation="eager")
        tokenizer.save(str(tmp / "tokenizer.json"), pretty=False)
        bar.update()

        bar.set_postfix_str("torch.onnx export")
        pad_token_id = int(config.get("pad_token_id") or 0)
        if not spec.is_head:
            reference = parity_reference(encoder, tokenizer, pad_token_id)
        if plain_onnx is None:
            plain_path = export_plain_onnx(encoder, tmp / "plain.onnx")
        else:  # read, never moved or deleted: it belongs to the caller
            plain_path = tmp / "plain.onnx"
            shutil.copyfile(plain_onnx, plain_path)
        del encoder  # PyTorch's part is done: its reference outputs are kept, not its weights
        _release()
        bar.update()

        import onnx

        bar.set_postfix_str("graph rewrite onto bort-infer ops" if custom_ops else "plain graph")
        if custom_ops:
            enc = recognize(fuse_with_onnxruntime(plain_path, config["num_attention_heads"], config["hidden_size"]))
            _release()
            fp32_model = emit(enc, form)
            if quantize is None:
                del enc  # only the int8 search and the bf16 conversion read it again
            if head_weights is not None:
                fp32_model = heads.attach_head(fp32_model, head_weights)
            plain_path.unlink()
            onnx.save(fp32_model, str(tmp / "model.onnx"))
            fp32_ops, fp32_inputs = ops_used(fp32_model), tuple(i.name for i in fp32_model.graph.input)
            del fp32_model  # written: parity reads the file; int8 and bf16 emit their own graphs from `enc`
            _release()
        else:  # the plain graph is the torch export itself: moved into place, not loaded and saved again
            os.replace(plain_path, tmp / "model.onnx")
            fp32_ops, fp32_inputs = [], PLAIN_INPUTS
        inputs = (PACKED_INPUTS if form == "packed" else PADDED_INPUTS) if custom_ops else PLAIN_INPUTS
        fp32_bytes = (tmp / "model.onnx").stat().st_size
        # What the encoder alone is (the int8 search probes it as an embedding model, pooled as the head reads
        # it: a sequence head its CLS row, a token head every row); a head's model adds to it.
        pooling = {"sequence-classification": "cls", "token-classification": "mean"}.get(spec.task, defaults.pooling)
        encoder_meta = ModelMetadata(
            architecture=(config.get("architectures") or ["BertModel"])[0], hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
            max_length=defaults.max_length, pooling=pooling, normalize=defaults.normalize and not spec.is_head,
            precision="fp32", pad_token_id=pad_token_id, inputs=tuple(inputs), output=OUTPUT,
            custom_ops=tuple(fp32_ops), versions=_versions(),
            source={"path": str(directory), "sha256": hf.weights_sha256(directory), "model_type": config["model_type"],
                    "defaults_from": defaults.origin})
        meta = encoder_meta
        if spec.is_head:
            meta = dataclasses.replace(
                encoder_meta, inputs=fp32_inputs, output=heads.LOGITS,
                task=spec.task, labels=spec.labels, problem_type=spec.problem_type, activation=spec.activation,
                pairs=spec.pairs)
        meta.write(tmp)
        bar.update()

        bar.set_postfix_str("parity against PyTorch")
        parity = check_head_parity(tmp, head_inputs, reference) if spec.is_head else check_parity(tmp, reference)
        meta = dataclasses.replace(meta, source={**meta.source, "parity_vs_pytorch": parity})
        bar.update()

        if quantize == "int8":
            from . import quantize as q

            bar.set_postfix_str("int8 quantization and fidelity")
            probe = _Probe(tmp / ".probe", tmp / "tokenizer.json", encoder_meta)
            if spec.is_head:  # the fp32 head model, to gate the int8 one against
                fp32_dir = tmp / ".fp32"
                fp32_dir.mkdir()
                shutil.copy(tmp / "tokenizer.json", fp32_dir)
                shutil.copy(tmp / METADATA_FILE, fp32_dir)
                os.replace(tmp / "model.onnx", fp32_dir / "model.onnx")
            if custom_ops:
                gemm = gemm or default_int8_gemm()
                int8_weights = int8_weights or q.DEFAULT_INT8_WEIGHTS
                # The fp32 side from the fp32 model written above (an encoder's is emit(enc, form); a head's
                # file has its head too, so its encoder graph is emitted again).
                fp32_embed = None if spec.is_head else (lambda texts: probe.embed_directory(tmp, texts))
                model, report = q.quantize_encoder(enc, form, probe.embed, probe.run_packed_graph, calibration_texts,
                                                   gate, gemm=gemm, enforce=not spec.is_head, fp32_embed=fp32_embed,
                                                   attention_order=int8_attention_order(),
                                                   int8_weights=int8_weights)
                del enc
                if head_weights is not None:
                    model = heads.attach_head(model, head_weights)
                onnx.save(model, str(tmp / "model.onnx"))
            else:
                fp32_path = tmp / "plain.onnx"
                os.replace(tmp / "model.onnx", fp32_path)
                q.quantize_plain_dynamic(fp32_path, tmp / "model.onnx")
                model, fp32_model = onnx.load(str(tmp / "model.onnx")), onnx.load(str(fp32_path))
                fp32_path.unlink()
                report = {"weights": "int8 per channel (onnxruntime quantize_dynamic)",
                          "activations": "u8, per-tensor range computed per batch",
                          **q.measure_and_gate(model, fp32_model, probe.embed, gate)}
                del fp32_model
            probe.close()
            shutil.rmtree(probe.directory, ignore_errors=True)
            report["size_bytes"] = {"fp32_model": fp32_bytes, "int8_model": (tmp / "model.onnx").stat().st_size}
            meta = dataclasses.replace(meta, precision="int8", custom_ops=tuple(ops_used(model)), fidelity=report,
                                       int8_gemm=gemm if custom_ops else None)
            if spec.is_head:
                meta.write(tmp)
                report["head"] = _gate_head(tmp, fp32_dir, spec, evaluation_inputs, task_gate)
                shutil.rmtree(fp32_dir, ignore_errors=True)
        elif quantize == "bf16":
            from . import bf16

            bar.set_postfix_str("bf16 linears and fidelity")
            probe = _Probe(tmp / ".probe", tmp / "tokenizer.json", meta)
            # The fp32 side of the fidelity gate from the fp32 graph written above (emit(enc, form), no head),
            # before the bf16 graph exists: a second fp32 graph in memory beside it would add 2.6 GB at
            # BERT-large (the fp32 proto and its serialization).
            fp32_vectors = probe.embed_directory(tmp, builtin_texts()[1])
            _release()
            model, report = bf16.convert_encoder(enc, form, probe.embed, fp32_vectors)
            del enc
            onnx.save(model, str(tmp / "model.onnx"))
            probe.close()
            shutil.rmtree(probe.directory, ignore_errors=True)
            report["size_bytes"] = {"fp32_model": fp32_bytes, "bf16_model": (tmp / "model.onnx").stat().st_size}
            meta = dataclasses.replace(meta, precision="bf16", custom_ops=tuple(ops_used(model)), fidelity=report)
        bar.update()

        if ort_format:
            bar.set_postfix_str("ORT format")
            meta = _write_ort_format(tmp, meta, reference)
        bar.set_postfix_str("writing")
        meta.write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        bar.update()
    finally:
        bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)
    log.info("exported %s → %s (%s, %s)", src, out, meta.precision, ", ".join(meta.custom_ops) or "no custom ops")
    return meta


def _write_ort_format(directory: Path, meta: ModelMetadata, reference) -> ModelMetadata:
    """model.ort beside model.onnx, refused unless Session gives the same token states from either file."""
    from ..session import Session
    from .ort_format import ORT_FILE, write_ort_model

    write_ort_model(directory / meta.onnx_file, directory / ORT_FILE)
    meta.write(directory)  # what the model now is (int8 changes it), for the Session below
    probe = directory / ".ort-probe"  # the same directory but for its model file
    probe.mkdir()
    for name in (ORT_FILE, meta.tokenizer_file):
        try:
            os.link(directory / name, probe / name)
        except OSError:  # no hard links on this file system
            shutil.copy(directory / name, probe / name)
    dataclasses.replace(meta, onnx_file=ORT_FILE).write(probe)
    ids, mask, _ = reference
    same = np.array_equal(Session(directory).forward(ids, mask), Session(probe).forward(ids, mask))
    shutil.rmtree(probe)
    if not same:
        raise RuntimeError(f"{ORT_FILE} gives other token states than {meta.onnx_file}; the model was not written")
    return dataclasses.replace(meta, ort_file=ORT_FILE)


def _gate_head(int8_dir: Path, fp32_dir: Path, spec: heads.TaskSpec, inputs: list | None,
               gate: head_gate.HeadGate) -> dict:
    """The head's int8-vs-fp32 figures on held-out inputs (default: the built-in evaluation texts; a pair model
    pairs each with the next); raises ValueError under the gate."""
    from ..session import Session

    source = "user"
    if not inputs:
        _, texts = builtin_texts()
        inputs = list(zip(texts, texts[1:] + texts[:1])) if spec.pairs else texts
        source = "built-in"
    with warnings.catch_warnings():  # truncation of long held-out inputs is expected, not news
        warnings.simplefilter("ignore")
        return head_gate.head_fidelity(Session(int8_dir), Session(fp32_dir), list(inputs), gate, source)


def _release() -> None:
    """Collect garbage now: torch.onnx's and onnxruntime's optimizer's object graphs hold reference cycles
    over whole copies of the weights (several GB for BERT-large), which the export would otherwise carry
    into its next steps until Python happens to run a full collection."""
    gc.collect()


class _Probe:
    """Runs candidate graphs during the int8 search through the real run time (a scratch model directory
    and a Session), so what is measured is what users get."""

    def __init__(self, directory: Path, tokenizer_file: Path, meta: ModelMetadata):
        self.directory, self.meta = directory, meta
        directory.mkdir(exist_ok=True)
        shutil.copy(tokenizer_file, directory / "tokenizer.json")
        self.tokenizer_file = tokenizer_file
        self._model = self._session = None

    def embed(self, model, texts: list[str]) -> np.ndarray:
        """Pooled (model default), unnormalized vectors of `texts` under `model`. Consecutive calls with the
        same graph (the batch-consistency check makes 64) reuse one Session instead of saving and loading
        the graph each time."""
        import onnx

        from ..session import Session

        if self._model is not model:
            self.close()  # the previous graph's session goes before the next one loads
            inputs = tuple(i.name for i in model.graph.input)
            onnx.save(model, str(self.directory / "model.onnx"))
            dataclasses.replace(self.meta, inputs=inputs, custom_ops=tuple(ops_used(model))).write(self.directory)
            self._model, self._session = model, Session(self.directory)
        with warnings.catch_warnings():  # truncation of the probe's own long texts is expected, not news
            warnings.simplefilter("ignore")
            return self._session.encode(texts, batch_size=64, normalize=False)

    def embed_directory(self, directory: Path, texts: list[str]) -> np.ndarray:
        """What embed gives for the model already written in model directory `directory` (its own graph
        and metadata), read from its file instead of from a graph in memory: no second copy of the weights
        in this process besides the session's."""
        from ..session import Session

        if not (isinstance(self._model, Path) and self._model == directory):
            self.close()
            self._model, self._session = directory, Session(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._session.encode(texts, batch_size=64, normalize=False)

    def close(self) -> None:
        self._model = self._session = None

    def run_packed_graph(self, model, outputs: list[str], texts: list[str]):
        """(output name, value) for each of `outputs` of a packed graph, over batches of `texts`."""
        import onnx
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from .. import custom_op_library

        options = ort.SessionOptions()
        options.register_custom_ops_library(custom_op_library())
        path = self.directory / "graph.onnx"  # from a file: no second in-memory copy of the weights
        onnx.save(model, str(path))
        del model  # this generator's reference: a caller that dropped its own frees the graph before the session loads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        path.unlink()
        tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        for start in range(0, len(texts), 64):
            encodings = tokenizer.encode_batch(texts[start:start + 64])
            lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
            cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            feeds = {"input_ids": np.concatenate([e.ids for e in encodings]).astype(np.int64),
                     "position_ids": np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
                     "cu_seqlens": cu, "query_rows": np.arange(cu[-1], dtype=np.int64)}
            yield from zip(outputs, session.run(outputs, feeds))


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return {"bort_infer": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def torch_token_states(encoder, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoder(input_ids=torch.from_numpy(input_ids),
                       attention_mask=torch.from_numpy(attention_mask)).last_hidden_state.numpy()


def parity_reference(encoder, tokenizer, pad_token_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's token states for PARITY_TEXTS in one padded batch: (input ids, mask, states)."""
    encodings = tokenizer.encode_batch(PARITY_TEXTS)
    seq = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), seq), pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    return ids, mask, torch_token_states(encoder, ids, mask)


def check_head_parity(model_dir: Path, inputs: list, reference: list[np.ndarray]) -> dict:
    """fp32 head export vs PyTorch's logits on the same inputs (see bort_infer.export.heads.parity_inputs)."""
    from ..session import Session

    with warnings.catch_warnings():  # the parity inputs include one past the length limit, on purpose
        warnings.simplefilter("ignore")
        got = heads.session_logits(Session(model_dir, threads=None), inputs)
    parity = {"inputs": len(inputs), "max_abs_logit_diff": heads.max_abs_diff(got, reference)}
    if parity["max_abs_logit_diff"] > HEAD_PARITY_MAX_ABS:
        raise RuntimeError(f"exported head disagrees with PyTorch: max abs logit diff "
                           f"{parity['max_abs_logit_diff']:.3g} (need <= {HEAD_PARITY_MAX_ABS}); the model was not "
                           "written")
    return parity


def check_parity(model_dir: Path, reference: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """fp32 export vs PyTorch (see parity_reference): every real token's state."""
    from ..session import Session

    ids, mask, ref = reference
    got = Session(model_dir, threads=None).forward(ids, mask)
    valid = mask.astype(bool)
    a, b = got[valid].astype(np.float64), ref[valid].astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    parity = {"texts": len(PARITY_TEXTS), "tokens": int(valid.sum()), "min_cosine": float(cos.min()),
              "max_abs_diff": float(np.abs(a - b).max())}
    if parity["min_cosine"] < PARITY_MIN_COSINE or parity["max_abs_diff"] > PARITY_MAX_ABS:
        raise RuntimeError(f"exported graph disagrees with PyTorch: min cosine {parity['min_cosine']:.6f} "
                           f"(need >= {PARITY_MIN_COSINE}), max abs diff {parity['max_abs_diff']:.3g} "
                           f"(need <= {PARITY_MAX_ABS}); the model was not written")
    return parity
