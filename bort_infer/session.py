"""Session: an exported model directory served by onnxruntime (run-time world: no torch, no transformers)."""
from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .model_dir import ModelDirectoryError, ModelMetadata, read_metadata
from .options import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, EncodeOptions, check_positive_int
from .pooling import l2_normalize, pool

# Tokens per model call on a packed (padding-free) model when max_tokens is not given. A call's activations
# grow with its tokens, so this bounds peak memory whatever the texts' lengths (Bort int8 streaming STS-B:
# ~290 MB for 2k or 20k texts); throughput measured flat from 1k to 8k tokens per call, and falls beyond.
DEFAULT_PACKED_TOKEN_BUDGET = 2048


class Session:
    """Encode texts into embeddings with an exported bort-infer model directory.

    ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's default, one per core);
    our fused kernels run on that same pool.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.metadata: ModelMetadata = read_metadata(self.path)
        meta = self.metadata
        check_positive_int("threads", threads, optional=True)
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
        self.packed = "cu_seqlens" in graph_inputs  # padding-free graph, see bort_infer/export/graph_rewrite.py
        self.truncated_count = 0
        self._lock = threading.Lock()

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

    def encode(self, texts: str | Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
               max_tokens: int | None = None, pooling: str | None = None, normalize: bool | None = None,
               show_progress_bar: bool | None = None, normalize_embeddings: bool | None = None) -> np.ndarray:
        """Embed texts: float32 (n, hidden) in input order; a single str gives shape (hidden,).

        The options are keyword-only and checked by bort_infer.options.EncodeOptions. pooling: None uses the
        model's default ("cls" or "mean", from export); normalize (or normalize_embeddings, as
        sentence-transformers spells it): None uses the model's default (True when the sentence-transformers
        pipeline ends in Normalize), else as given. batch_size bounds the texts per model call; max_tokens
        bounds the tokens per call: real tokens on a packed (padding-free) model (default
        DEFAULT_PACKED_TOKEN_BUDGET), rows x padded length on a padded one (default: no bound). A text longer
        than the budget still gets its own call. show_progress_bar: None or False shows none.
        """
        single = isinstance(texts, str)
        items = self._check_texts(texts)
        options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                                show_progress_bar=show_progress_bar, chunk_size=max(len(items), 1),
                                normalize_embeddings=normalize_embeddings)
        parts = list(self._encode_chunks(items, options))
        out = np.concatenate(parts) if parts else np.empty((0, self.hidden_size), dtype=np.float32)
        return out[0] if single else out

    def encode_iter(self, texts: Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_tokens: int | None = None, pooling: str | None = None, normalize: bool | None = None,
                    show_progress_bar: bool | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    normalize_embeddings: bool | None = None) -> Iterator[np.ndarray]:
        """Embed any iterable of texts (a generator over a huge file is fine), yielding float32 arrays of
        up to `chunk_size` rows in input order. Memory is bounded by the chunk, not the corpus; the next
        chunk is tokenized on a second thread while the current one runs. Options as for encode()."""
        if isinstance(texts, str):
            raise TypeError("encode_iter takes an iterable of str; use encode() for a single text")
        if texts is None or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be an iterable of str, got {type(texts).__name__}")
        options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                                show_progress_bar=show_progress_bar, chunk_size=chunk_size,
                                normalize_embeddings=normalize_embeddings)
        return self._encode_chunks(texts, options)

    def _encode_chunks(self, texts: Iterable[str], options: EncodeOptions) -> Iterator[np.ndarray]:
        how = options.pooling_for(self.metadata.pooling)
        do_normalize = options.normalize_for(self.metadata.normalize)
        bar = None
        if options.show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(desc="encode", unit="text")
        chunks = _chunked(texts, options.chunk_size)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bort-tokenize") as pool_:
            pending = None
            first = next(chunks, None)
            if first is not None:
                pending = pool_.submit(self._tokenize, *first)
            while pending is not None:
                encodings = pending.result()
                self._note_truncation(encodings)
                following = next(chunks, None)
                pending = pool_.submit(self._tokenize, *following) if following is not None else None
                out = self._embed_encodings(encodings, options.batch_size, how, options.max_tokens)
                if do_normalize and len(out):
                    out = l2_normalize(out)
                if bar is not None:
                    bar.update(len(out))
                yield out
        if bar is not None:
            bar.close()

    def _note_truncation(self, encodings: list) -> None:
        """Count and warn (once per chunk, from the caller's thread) about texts cut to the model's limit."""
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            with self._lock:
                self.truncated_count += truncated
            warnings.warn(f"{truncated} of {len(encodings)} texts exceed {self.metadata.max_length} tokens "
                          "and were truncated", stacklevel=3)

    def _tokenize(self, offset: int, chunk: list[str]) -> list:
        for i, t in enumerate(chunk):
            if not isinstance(t, str):
                raise TypeError(f"texts[{offset + i}] is {type(t).__name__}, expected str")
        try:
            encodings = self._tokenizer.encode_batch(chunk)
        except TypeError:
            # tokenizers rejects str holding lone surrogates (not encodable as UTF-8): such code points
            # become U+FFFD, as any UTF-8 decoder would render them; well-formed pairs are joined.
            chunk = [_replace_lone_surrogates(t) for t in chunk]
            encodings = self._tokenizer.encode_batch(chunk)
        return encodings

    def _embed_encodings(self, encodings: list, batch_size: int, how: str, max_tokens: int | None) -> np.ndarray:
        out = np.empty((len(encodings), self.hidden_size), dtype=np.float32)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Longest first: a padded batch pads to a length close to its members'; a packed batch fills its
        # token budget with few, similar texts.
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            if self.packed:
                # A packed batch holds up to batch_size texts and max_tokens real tokens (no padding).
                budget = max_tokens if max_tokens is not None else DEFAULT_PACKED_TOKEN_BUDGET
                rows = int(np.searchsorted(np.cumsum(lengths[order[start:start + batch_size]]), budget, "right"))
            else:
                longest = int(lengths[order[start]])
                rows = batch_size if max_tokens is None else min(batch_size, max_tokens // max(longest, 1))
            idx = order[start:start + max(rows, 1)]
            batch = [encodings[i] for i in idx]
            out[idx] = self._embed_packed(batch, how) if self.packed else self._embed_padded(batch, how)
            start += len(idx)
        return out

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token ids [B, S] with a 0/1 mask → last hidden states [B, S, hidden] (no tokenization, no
        pooling). A packed model needs right-padded masks and leaves padding positions at zero."""
        ids, mask = self._check_token_inputs(input_ids, attention_mask)
        if not self.packed:
            return self._run({"input_ids": ids, "attention_mask": mask})
        lengths, valid = self._right_padded_lengths(mask)
        hidden = np.zeros(ids.shape + (self.hidden_size,), dtype=np.float32)
        if lengths.sum():
            cu = _offsets(lengths)
            hidden[valid] = self._run_packed(ids[valid], lengths, cu, np.arange(cu[-1]))
        return hidden

    def embed_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray, *,
                     pooling: str | None = None) -> np.ndarray:
        """Pooled vectors [B, hidden] from token ids [B, S] and a mask, with no tokenization (no
        normalization). On a packed model CLS pooling runs the last layer on the CLS rows only."""
        how = EncodeOptions(pooling=pooling).pooling_for(self.metadata.pooling)
        ids, mask = self._check_token_inputs(input_ids, attention_mask)
        if not self.packed or how == "mean":
            return pool(self.forward(ids, mask), mask, how)
        lengths, valid = self._right_padded_lengths(mask)
        if lengths.min(initial=1) < 1:
            raise ValueError("CLS pooling needs at least one token in every row of attention_mask")
        cu = _offsets(lengths)
        return self._run_packed(ids[valid], lengths, cu, cu[:-1])

    def _check_token_inputs(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [batch, seq]; got {ids.shape} and "
                             f"{mask.shape}")
        if ids.shape[1] > self.metadata.max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's limit {self.metadata.max_length}")
        for name, a in (("input_ids", ids), ("attention_mask", mask)):
            if a.size and a.dtype.kind not in "iub":
                raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
        return ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False)

    @staticmethod
    def _right_padded_lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = (mask != 0).sum(axis=1)
        valid = np.arange(mask.shape[1])[None, :] < lengths[:, None]
        if not np.array_equal(valid, mask != 0):
            raise ValueError("attention_mask rows must be right-padded (ones, then zeros) for a packed model")
        return lengths, valid

    def _run(self, available: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: available[name] for name in self.metadata.inputs}
        try:
            return self._ort.run([self.metadata.output], feeds)[0]
        except Exception as exc:  # inputs are validated above, so a failure here is the model's
            if type(exc).__module__.startswith("onnxruntime"):
                raise ModelDirectoryError(f"{self.path / self.metadata.onnx_file}: the model failed to run: "
                                          f"{exc}") from None
            raise

    def _run_packed(self, ids: np.ndarray, lengths: np.ndarray, cu: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
        """Concatenated tokens of len(lengths) texts → the last layer's states at query_rows [Q, H]."""
        positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
        return self._run({"input_ids": ids, "position_ids": positions, "cu_seqlens": cu,
                          "query_rows": query_rows.astype(np.int64, copy=False)})

    def _embed_packed(self, encodings: list, how: str) -> np.ndarray:
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        cu = _offsets(lengths)
        if how == "cls":  # the last layer computes only each text's first row
            return self._run_packed(ids, lengths, cu, cu[:-1])
        states = self._run_packed(ids, lengths, cu, np.arange(cu[-1]))
        return (np.add.reduceat(states, cu[:-1], axis=0) / lengths[:, None]).astype(np.float32)

    def _embed_padded(self, encodings: list, how: str) -> np.ndarray:
        batch, seq = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((batch, seq), self.metadata.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
        hidden = self._run({"input_ids": ids, "attention_mask": mask})
        return pool(hidden, mask, how)

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


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """[0, l0, l0+l1, ...]: where each text starts in the concatenated tokens (cu_seqlens)."""
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    return cu


def _chunked(texts: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """(offset, list of up to `size` texts) from any iterable, without materialising it."""
    it = iter(texts)
    offset = 0
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield offset, chunk
        offset += len(chunk)


def _replace_lone_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
