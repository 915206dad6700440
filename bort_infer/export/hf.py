"""Reading Hugging Face checkpoints: a local directory, or a hub id where the network allows.

Everything the exporter needs to know about a source comes from here: the encoder itself, its tokenizer,
its sentence-transformers pipeline (pooling, normalization, max length) and a checksum of its weights.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("bert",)
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def resolve_source(src: str | os.PathLike) -> Path:
    """A local checkpoint directory for `src`: the directory itself, or the hub snapshot of a hub id."""
    text = str(src)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"source {path} is a file; give a Hugging Face checkpoint directory (with config.json)")
        if not (path / "config.json").is_file():
            raise ValueError(f"source {path} is not a Hugging Face checkpoint: config.json is missing")
        return path
    looks_like_hub_id = (text.count("/") <= 1 and not text.startswith((".", "/", "~"))
                         and os.sep not in text.replace("/", "", 1))
    if not looks_like_hub_id:
        raise ValueError(f"source {path} does not exist")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text)
    except Exception as exc:  # offline, unknown repo, no auth: one clear message for all of them
        raise ValueError(f"source {text!r} is neither a local directory nor a hub model that can be fetched here "
                         f"({type(exc).__name__}: {exc}); give a local checkpoint directory") from None
    return resolve_source(local)


def read_config(directory: Path) -> dict:
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{directory / 'config.json'} is not readable JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{directory / 'config.json'} is not a JSON object (a Hugging Face config)")
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{directory}: model_type {model_type!r} is not supported; bort-infer exports "
                         f"BERT-architecture encoders (model_type {', '.join(map(repr, SUPPORTED_MODEL_TYPES))})")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{directory}: position_embedding_type {cfg['position_embedding_type']!r} is not supported "
                         "(absolute positions only)")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{directory}: hidden_act {cfg.get('hidden_act')!r} is not supported (exact erf GELU only)")
    return cfg


def load_encoder(src: str | os.PathLike, attn_implementation: str | None = None):
    """The checkpoint's encoder as a transformers BertModel in eval mode (float32, CPU)."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    directory = resolve_source(src)
    read_config(directory)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    # Without the pooler (embeddings come from token states), so a checkpoint's pooler weights go unused:
    # expected, and not worth transformers' three-line notice on every load.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = BertModel.from_pretrained(directory, add_pooling_layer=False, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.float().eval()


def weights_sha256(directory: Path) -> str:
    """SHA-256 over the checkpoint's weight files (name and bytes, in name order)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_FILE_SUFFIXES)
    if not files:
        raise ValueError(f"{directory} holds no weight file ({', '.join(WEIGHT_FILE_SUFFIXES)})")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PipelineDefaults:
    """How the checkpoint's own pipeline turns token states into a sentence vector."""

    pooling: str  # "cls" or "mean"
    normalize: bool
    max_length: int
    origin: str  # where these came from, for the metadata


_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def pipeline_defaults(directory: Path, config: dict, default_pooling: str = "cls") -> PipelineDefaults:
    """Pooling, normalization and max length from a sentence-transformers pipeline (modules.json) if the
    checkpoint has one, else `default_pooling`, no normalization and the tokenizer's / config's limit."""
    max_positions = int(config.get("max_position_embeddings", 512))
    tok_limit = _tokenizer_max_length(directory)
    max_length = min(max_positions, tok_limit) if tok_limit else max_positions
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return PipelineDefaults(default_pooling, False, max_length, "default (no sentence-transformers config)")
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise ValueError(f"{modules_file}: sentence-transformers modules {unsupported} are not supported "
                         "(bort-infer runs Transformer → Pooling → optional Normalize)")
    pooling = default_pooling
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg = json.loads((directory / m.get("path", "") / "config.json").read_text())
            modes = [name for flag, name in _POOLING_FLAGS.items() if cfg.get(flag)]
            if len(modes) != 1 or modes[0] not in ("cls", "mean"):
                raise ValueError(f"{directory / m.get('path', '')}: pooling {modes or 'none'} is not supported "
                                 "(exactly one of cls or mean)")
            pooling = modes[0]
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(seq, int) and 2 <= seq:
            max_length = min(seq, max_positions)
    return PipelineDefaults(pooling, "Normalize" in kinds, max_length, "sentence-transformers modules.json")


def _tokenizer_max_length(directory: Path) -> int | None:
    f = directory / "tokenizer_config.json"
    if not f.is_file():
        return None
    value = json.loads(f.read_text()).get("model_max_length")
    # transformers writes a huge sentinel (1e30) when there is no limit.
    return int(value) if isinstance(value, (int, float)) and 2 <= value < 1e9 else None


def load_fast_tokenizer(directory: Path, max_length: int):
    """The checkpoint's tokenizer as a `tokenizers.Tokenizer` (what the run time loads from tokenizer.json):
    no padding, truncation to `max_length` tokens including the special tokens."""
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(directory, use_fast=True)
    if not getattr(hf_tok, "is_fast", False):
        raise ValueError(f"{directory}: the tokenizer has no fast (tokenizers) implementation")
    tok = hf_tok.backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok, hf_tok
