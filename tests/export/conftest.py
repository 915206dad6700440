"""Fixtures of the build-time tests: encoders as onnxruntime's BERT fusions see them, one model at a time."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ..conftest import VARIED_TEXTS, minilm_dir, sts_pairs

# Layers of the BERT-large-shaped encoder. Every layer shape is BERT-large's (models/bert-large.json), but a
# full 24-layer export is a 1.3 GB graph that must stay out of tests; two layers (~225 MB) still exercise
# an inner layer and the last one, which the packed form computes differently (query rows only).
BERT_LARGE_SHAPED_LAYERS = 2


@dataclass
class RewriteCase:
    """One encoder for the graph-rewrite tests: its HF config, PyTorch weights and ONNX graphs."""

    name: str
    config: dict
    weights: dict[str, np.ndarray]  # the PyTorch state dict, as numpy
    plain_onnx: Path  # torch.onnx export: the plain graph onnxruntime users run
    fused: object  # onnx.ModelProto: the plain graph after onnxruntime's BERT fusions


def bert_large_shaped_config() -> dict:
    """BERT-large's HF configuration with BERT_LARGE_SHAPED_LAYERS layers."""
    from bort_infer.registry import model_spec

    return dict(model_spec("bert-large")["hf_config"], num_hidden_layers=BERT_LARGE_SHAPED_LAYERS)


def bert_large_shaped_encoder():
    """A random-init BertModel of bert_large_shaped_config()."""
    import torch
    from transformers import BertConfig, BertModel

    from bort_infer.export.random_checkpoint import _randomize_affine_parameters

    config = bert_large_shaped_config()
    config.pop("model_type")
    torch.manual_seed(0)
    model = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
    _randomize_affine_parameters(model, seed=0)  # non-trivial biases and LayerNorms, as in our checkpoints
    return model


def _checkpoint_case(name: str, source: Path, plain_onnx: Path) -> RewriteCase:
    from safetensors.numpy import load_file

    from bort_infer.export.graph_rewrite import fuse_with_onnxruntime

    config = json.loads((source / "config.json").read_text())
    return RewriteCase(name, config, load_file(str(source / "model.safetensors")), plain_onnx,
                       fuse_with_onnxruntime(plain_onnx, config["num_attention_heads"], config["hidden_size"]))


def _bert_large_shaped_case(directory: Path) -> RewriteCase:
    from bort_infer.export.graph_rewrite import fuse_with_onnxruntime
    from bort_infer.export.onnx_export import export_plain_onnx

    model = bert_large_shaped_encoder()
    config = model.config.to_dict()
    plain = export_plain_onnx(model, directory / "plain.onnx")
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    return RewriteCase("bert-large-shaped", config, weights, plain,
                       fuse_with_onnxruntime(plain, config["num_attention_heads"], config["hidden_size"]))


@pytest.fixture(scope="module", params=["tiny-bort", "bert-large-shaped", "minilm",
                                        pytest.param("bort", marks=pytest.mark.slow)])
def rewrite_case(request, checkpoints, exports, tmp_path_factory) -> RewriteCase:
    """Each encoder in turn (module scope: one large graph in memory at a time). The real checkpoints'
    plain graphs are the shared `exports(name, custom_ops=False)` directories, built once per session."""
    name = request.param
    if name == "bert-large-shaped":
        return _bert_large_shaped_case(tmp_path_factory.mktemp("bert-large-shaped"))
    plain = exports(name, custom_ops=False) / "model.onnx"  # skips when MiniLM is not installed
    source = minilm_dir() if name == "minilm" else checkpoints(name)
    return _checkpoint_case(name, source, plain)


@pytest.fixture(scope="session")
def tiny_bort_fused(checkpoints, exports):
    """onnxruntime's fusion of tiny-bort's plain graph (tests copy it before breaking it)."""
    from bort_infer.export.graph_rewrite import fuse_with_onnxruntime

    config = json.loads((checkpoints("tiny-bort") / "config.json").read_text())
    return fuse_with_onnxruntime(exports("tiny-bort", custom_ops=False) / "model.onnx",
                                 config["num_attention_heads"], config["hidden_size"])


@dataclass
class StsDev:
    """all-MiniLM-L6-v2 fp32 on STS-B dev: the sentences (pairs flattened a0, b0, a1, b1, ...), gold scores and
    the fp32 export's vectors, the reference every reduced-precision export is held to."""

    texts: list[str]
    gold: np.ndarray
    fp32: np.ndarray


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x[np.r_[False, np.diff(np.sort(x)) == 0]]):  # ties share their mean rank
            r[x == value] = r[x == value].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def sts_spearman(vectors: np.ndarray, gold: np.ndarray) -> float:
    """Spearman x100 of the pairs' dot products (vectors are normalized: cosines) against the gold scores."""
    return spearman((vectors[0::2] * vectors[1::2]).sum(1), gold) * 100


@pytest.fixture(scope="session")
def minilm_sts_dev(exports) -> StsDev:
    """Encoded once for the int8 and bf16 fidelity tests (skips without MiniLM or the STS-B data)."""
    from bort_infer import Session

    texts, gold = sts_pairs("dev")
    return StsDev(texts, gold, Session(exports("minilm"), threads=2).encode(texts, batch_size=64))


@pytest.fixture(scope="session")
def tiny_bort_varied_fp32(exports) -> np.ndarray:
    """tiny-bort fp32 (default export) vectors of VARIED_TEXTS, the reference of its int8 and bf16 exports."""
    from bort_infer import Session

    with pytest.warns(UserWarning, match="truncated"):
        return Session(exports("tiny-bort"), threads=2).encode(VARIED_TEXTS)


def encode_varied(directory: Path) -> np.ndarray:
    """VARIED_TEXTS through a two-thread Session of `directory` (one of them is past the length limit: warned)."""
    from bort_infer import Session

    with pytest.warns(UserWarning, match="truncated"):
        return Session(directory, threads=2).encode(VARIED_TEXTS)
