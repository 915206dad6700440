"""Session: an exported model directory served by onnxruntime (run-time world: no torch, no transformers)."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .model_dir import ModelDirectoryError, ModelMetadata, read_metadata
from .pooling import POOLINGS, l2_normalize, pool


class Session:
    """Encode texts into embeddings with an exported bort-infer model directory.

    ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's default, one per core);
    our fused kernels run on that same pool.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.metadata: ModelMetadata = read_metadata(self.path)
        meta = self.metadata
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        if meta.custom_ops:
            from . import custom_op_library

            options.register_custom_ops_library(custom_op_library())
        onnx_path = self.path / meta.onnx_file
        try:
            self._ort = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelDirectoryError(f"{onnx_path}: onnxruntime cannot load this model: {exc}") from None
        graph_inputs = {i.name for i in self._ort.get_inputs()}
        graph_outputs = {o.name for o in self._ort.get_outputs()}
        if graph_inputs != set(meta.inputs) or meta.output not in graph_outputs:
            raise ModelDirectoryError(
                f"{onnx_path}: graph inputs {sorted(graph_inputs)} / outputs {sorted(graph_outputs)} do not match "
                f"the metadata (inputs {list(meta.inputs)}, output {meta.output!r})")

        tok_path = self.path / meta.tokenizer_file
        try:
            self._tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
            raise ModelDirectoryError(f"{tok_path}: not a valid tokenizers file: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=meta.max_length)
        self.truncated_count = 0

    @property
    def hidden_size(self) -> int:
        return self.metadata.hidden_size

    @property
    def info(self) -> dict[str, Any]:
        """What this session serves: architecture, precision, pooling, custom ops, fidelity figures."""
        meta = self.metadata.to_json()
        meta["path"] = str(self.path)
        meta["threads"] = self.threads
        return meta

    def encode(self, texts: str | Iterable[str], batch_size: int = 32, pooling: str | None = None,
               normalize: bool | None = None, show_progress_bar: bool | None = None) -> np.ndarray:
        """Embed texts: float32 (n, hidden) in input order; a single str gives shape (hidden,).

        pooling: None uses the model's default ("cls" or "mean", from export); normalize: None uses the
        model's default (True when the sentence-transformers pipeline ends in Normalize), else as given.
        """
        single = isinstance(texts, str)
        items = self._check_texts(texts)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        how = self.metadata.pooling if pooling is None else pooling
        if how not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)} (or None)")
        do_normalize = self.metadata.normalize if normalize is None else bool(normalize)

        out = np.empty((len(items), self.hidden_size), dtype=np.float32)
        if items:
            encodings = self._tokenizer.encode_batch(items)
            truncated = sum(1 for e in encodings if e.overflowing)
            if truncated:
                self.truncated_count += truncated
                warnings.warn(f"{truncated} of {len(items)} texts exceed {self.metadata.max_length} tokens "
                              "and were truncated", stacklevel=2)
            lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
            # Longest first, so each batch pads to a length close to its own members'.
            order = np.argsort(-lengths, kind="stable")
            starts = range(0, len(order), batch_size)
            if show_progress_bar:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc="encode", unit="batch")
            for start in starts:
                idx = order[start:start + batch_size]
                hidden, mask = self._run([encodings[i] for i in idx])
                out[idx] = pool(hidden, mask, how)
        if do_normalize and len(out):
            out = l2_normalize(out)
        return out[0] if single else out

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Token ids [B, S] → last hidden states [B, S, hidden] (no tokenization, no pooling)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [batch, seq]; got {ids.shape} and {mask.shape}")
        if ids.shape[1] > self.metadata.max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's limit {self.metadata.max_length}")
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: available[name] for name in self.metadata.inputs}
        return self._ort.run([self.metadata.output], feeds)[0]

    def _run(self, encodings: list) -> tuple[np.ndarray, np.ndarray]:
        batch, seq = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((batch, seq), self.metadata.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        types = np.zeros((batch, seq), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        return self.forward(ids, mask, types), mask

    @staticmethod
    def _check_texts(texts: Any) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if texts is None or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        return items
