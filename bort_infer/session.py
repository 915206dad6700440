"""Session: an exported model directory served by onnxruntime (run-time world: no torch, no transformers)."""
from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import heads, long_texts
from .batching import plan_batches
from .model_dir import (
    EMBEDDING,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    ModelDirectoryError,
    ModelMetadata,
    read_metadata,
)
from .options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_STRIDE,
    EncodeOptions,
    HeadOptions,
    check_positive_int,
)
from .pooling import l2_normalize, pool


class Session:
    """Encode texts into embeddings with an exported bort-infer model directory.

    ``threads`` sets onnxruntime's intra-op thread count (None: onnxruntime's default, one per core);
    our fused kernels run on that same pool. ``allow_spinning=False`` lets that pool's threads sleep between
    calls instead of spinning (onnxruntime's default): for a process whose other threads need the cores
    between model calls, such as a server's event loop.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, allow_spinning: bool = True):
        self.path = Path(path)
        self.metadata: ModelMetadata = read_metadata(self.path)
        meta = self.metadata
        check_positive_int("threads", threads, optional=True)
        self.threads = threads

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        if not isinstance(allow_spinning, bool):
            raise ValueError(f"allow_spinning must be True or False, got {allow_spinning!r}")
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        # Read once: tokenizers builds the whole vocabulary map to answer it (~10 ms for Bort's 50k tokens), and
        # every forward() checks its ids against it.
        self._vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.packed = "cu_seqlens" in graph_inputs  # padding-free graph, see bort_infer/export/graph_rewrite.py
        self.truncated_count = 0
        self._lock = threading.Lock()
        self._strided_tokenizers: dict[int, Tokenizer] = {}  # long_texts="chunk": one per stride
        self._whole_tokenizer: Tokenizer | None = None  # tag() of a text over the limit

    @property
    def hidden_size(self) -> int:
        return self.metadata.hidden_size

    @property
    def vocab_size(self) -> int:
        """Token ids this model's tokenizer can give: 0 .. vocab_size - 1 (added tokens included)."""
        return self._vocab_size

    @property
    def info(self) -> dict[str, Any]:
        """What this session serves: architecture, precision, pooling, custom ops, fidelity figures."""
        meta = self.metadata.to_json()
        meta["path"] = str(self.path)
        meta["threads"] = self.threads
        return meta

    def encode(self, texts: str | Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
               max_tokens: int | None = None, pooling: str | None = None, normalize: bool | None = None,
               show_progress_bar: bool | None = None, normalize_embeddings: bool | None = None,
               long_texts: str = "truncate", stride: int = DEFAULT_STRIDE) -> np.ndarray:
        """Embed texts: float32 (n, hidden) in input order; a single str gives shape (hidden,).

        The options are keyword-only and checked by bort_infer.options.EncodeOptions. pooling: None uses the
        model's default ("cls" or "mean", from export); normalize (or normalize_embeddings, as
        sentence-transformers spells it): None uses the model's default (True when the sentence-transformers
        pipeline ends in Normalize), else as given. batch_size bounds the texts per model call; max_tokens
        bounds the tokens per call: real tokens on a packed (padding-free) model (default
        DEFAULT_PACKED_TOKEN_BUDGET), rows x padded length on a padded one (default: no bound). A text longer
        than the budget still gets its own call. show_progress_bar: None or False shows none.
        long_texts: "truncate" cuts a text to the model's limit (with a warning); "chunk" encodes it as windows
        of the limit sharing `stride` tokens and averages them, token-weighted (see bort_infer.long_texts).
        """
        single = isinstance(texts, str)
        items = self._check_texts(texts)
        options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                                show_progress_bar=show_progress_bar, chunk_size=max(len(items), 1),
                                normalize_embeddings=normalize_embeddings, long_texts=long_texts, stride=stride)
        parts = list(self._encode_chunks(items, options))
        out = np.concatenate(parts) if parts else np.empty((0, self.hidden_size), dtype=np.float32)
        return out[0] if single else out

    def encode_iter(self, texts: Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_tokens: int | None = None, pooling: str | None = None, normalize: bool | None = None,
                    show_progress_bar: bool | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    normalize_embeddings: bool | None = None, long_texts: str = "truncate",
                    stride: int = DEFAULT_STRIDE) -> Iterator[np.ndarray]:
        """Embed any iterable of texts (a generator over a huge file is fine), yielding float32 arrays of
        up to `chunk_size` rows in input order. Memory is bounded by the chunk, not the corpus; the next
        chunk is tokenized on a second thread while the current one runs. Options as for encode()."""
        if isinstance(texts, str):
            raise TypeError("encode_iter takes an iterable of str; use encode() for a single text")
        if texts is None or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be an iterable of str, got {type(texts).__name__}")
        options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling, normalize=normalize,
                                show_progress_bar=show_progress_bar, chunk_size=chunk_size,
                                normalize_embeddings=normalize_embeddings, long_texts=long_texts, stride=stride)
        return self._encode_chunks(texts, options)

    def tokenize(self, texts: Sequence[str]) -> list:
        """tokenizers Encodings of texts as encode() sees them: special tokens added, cut to the model's
        max_length (an Encoding whose ``overflowing`` is not empty was cut). A non-str item is a TypeError
        naming its index."""
        if isinstance(texts, str):
            raise TypeError("tokenize takes a sequence of str; wrap a single text in a list")
        return self._tokenize(0, list(texts))

    def embed_ids(self, sequences: Sequence[Sequence[int]], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  max_tokens: int | None = None, pooling: str | None = None) -> np.ndarray:
        """Pooled, not normalized, float32 vectors (n, hidden) in input order from token id sequences, each
        one text's whole model input as tokenize() gives it (special tokens included), batched as encode()
        batches. Each sequence needs 1 to max_length ids in [0, vocab_size); else a ValueError naming it."""
        options = EncodeOptions(batch_size=batch_size, max_tokens=max_tokens, pooling=pooling)
        heads.check_task(self.metadata, EMBEDDING, "embed_ids()")
        sequences = list(sequences)
        limit, vocab = self.metadata.max_length, self.vocab_size
        for i, ids in enumerate(sequences):
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise ValueError(f"sequences[{i}] must be a sequence of token ids, got {type(ids).__name__}")
            if not 1 <= len(ids) <= limit:
                raise ValueError(f"sequences[{i}] has {len(ids)} token ids; this model takes 1 to {limit}")
        flat = np.asarray(list(itertools.chain.from_iterable(sequences)))
        if flat.size and (flat.ndim != 1 or flat.dtype.kind not in "iu"):
            raise ValueError(f"token ids must be integers (got {flat.dtype} values)")
        if flat.size and (flat.min() < 0 or flat.max() >= vocab):
            bad = next(i for i, ids in enumerate(sequences) if min(ids) < 0 or max(ids) >= vocab)
            raise ValueError(f"sequences[{bad}] holds a token id outside this model's vocabulary [0, {vocab})")
        if not sequences:
            return np.empty((0, self.hidden_size), dtype=np.float32)
        return self._embed_ids(sequences, options.batch_size, options.pooling_for(self.metadata.pooling),
                               options.max_tokens)

    def _encode_chunks(self, texts: Iterable[str], options: EncodeOptions) -> Iterator[np.ndarray]:
        heads.check_task(self.metadata, EMBEDDING, "encode()")
        chunking = options.long_texts == "chunk"
        if chunking:
            options.check_stride(self.metadata.max_length - self._tokenizer.num_special_tokens_to_add(False))
        tokenizer = self._strided_tokenizer(options.stride) if chunking else self._tokenizer
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
                pending = pool_.submit(self._tokenize, *first, tokenizer)
            while pending is not None:
                encodings = pending.result()
                if not chunking:
                    self._note_truncation(encodings)
                following = next(chunks, None)
                pending = pool_.submit(self._tokenize, *following, tokenizer) if following is not None else None
                if chunking:
                    parts, owners = long_texts.windows(encodings)
                    vectors = self._embed_ids([e.ids for e in parts], options.batch_size, how, options.max_tokens)
                    out = long_texts.pool_windows(vectors, parts, owners, len(encodings))
                else:
                    out = self._embed_ids([e.ids for e in encodings], options.batch_size, how, options.max_tokens)
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

    def _tokenize(self, offset: int, chunk: list[str], tokenizer: Tokenizer | None = None) -> list:
        for i, t in enumerate(chunk):
            if not isinstance(t, str):
                raise TypeError(f"texts[{offset + i}] is {type(t).__name__}, expected str")
        return _encode_batch(tokenizer or self._tokenizer, chunk)

    def _strided_tokenizer(self, stride: int) -> Tokenizer:
        """A copy of the tokenizer whose truncation keeps the rest of a long text as overflowing windows that
        share `stride` tokens (the session's own tokenizer is shared by threads and never reconfigured)."""
        with self._lock:
            if stride not in self._strided_tokenizers:
                tok = Tokenizer.from_str(self._tokenizer.to_str())
                tok.no_padding()
                tok.enable_truncation(max_length=self.metadata.max_length, stride=stride)
                self._strided_tokenizers[stride] = tok
            return self._strided_tokenizers[stride]

    def _embed_ids(self, sequences: Sequence[Sequence[int]], batch_size: int, how: str,
                   max_tokens: int | None) -> np.ndarray:
        out = np.empty((len(sequences), self.hidden_size), dtype=np.float32)
        lengths = np.fromiter((len(ids) for ids in sequences), dtype=np.int64, count=len(sequences))
        for idx in plan_batches(lengths, batch_size=batch_size, max_tokens=max_tokens, packed=self.packed):
            batch = [sequences[i] for i in idx]
            out[idx] = self._embed_packed(batch, how) if self.packed else self._embed_padded(batch, how)
        return out

    def _batches(self, encodings: list, batch_size: int, max_tokens: int | None) -> Iterator[np.ndarray]:
        """Indices of `encodings` for each model call (bort_infer.batching's rule)."""
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        return plan_batches(lengths, batch_size=batch_size, max_tokens=max_tokens, packed=self.packed)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token ids [B, S] with a 0/1 mask → last hidden states [B, S, hidden] (no tokenization, no
        pooling). A packed model needs right-padded masks and leaves padding positions at zero."""
        heads.check_task(self.metadata, EMBEDDING, "forward()")
        ids, mask = self._check_token_inputs(input_ids, attention_mask)
        if not self.packed:
            return self._run({"input_ids": ids, "attention_mask": mask}, ids.shape + (self.hidden_size,))
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
        heads.check_task(self.metadata, EMBEDDING, "embed_tokens()")
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
        if ids.size:  # a negative id would index the embedding table from its end, silently
            outside = (ids < 0) | (ids >= self.vocab_size)
            if outside.any():
                at = tuple(int(i) for i in np.argwhere(outside)[0])
                raise ValueError(f"input_ids[{', '.join(map(str, at))}] is {ids[at]}, outside this model's vocabulary "
                                 f"[0, {self.vocab_size})")
            odd = (mask != 0) & (mask != 1)
            if odd.any():
                raise ValueError(f"attention_mask must hold 0 and 1 only, got {mask[odd][0]}")
        return ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False)

    @staticmethod
    def _right_padded_lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = (mask != 0).sum(axis=1)
        valid = np.arange(mask.shape[1])[None, :] < lengths[:, None]
        if not np.array_equal(valid, mask != 0):
            raise ValueError("attention_mask rows must be right-padded (ones, then zeros) for a packed model")
        return lengths, valid

    def _run(self, available: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """The graph's output for these inputs, checked to be float32 of ``shape`` (what the metadata and the
        inputs imply): a model whose output has, say, one row would otherwise give every text one vector."""
        feeds = {name: available[name] for name in self.metadata.inputs}
        onnx_path = self.path / self.metadata.onnx_file
        try:
            out = self._ort.run([self.metadata.output], feeds)[0]
        except Exception as exc:  # inputs are validated above, so a failure here is the model's
            if type(exc).__module__.startswith("onnxruntime"):
                raise ModelDirectoryError(f"{onnx_path}: the model failed to run: {exc}") from None
            raise
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
            got = f"{out.dtype} values of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ModelDirectoryError(f"{onnx_path}: the model's output {self.metadata.output!r} has {got}; expected "
                                      f"float32 values of shape {shape} (hidden_size {self.hidden_size}); the graph "
                                      "does not match its metadata")
        return out

    def _run_packed(self, ids: np.ndarray, lengths: np.ndarray, cu: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
        """Concatenated tokens of len(lengths) texts → the last layer's states at query_rows [Q, H]."""
        positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
        return self._run({"input_ids": ids, "position_ids": positions, "cu_seqlens": cu,
                          "query_rows": query_rows.astype(np.int64, copy=False)}, (len(query_rows), self.hidden_size))

    def _embed_packed(self, sequences: list, how: str) -> np.ndarray:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        ids = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64)
        cu = _offsets(lengths)
        if how == "cls":  # the last layer computes only each text's first row
            return self._run_packed(ids, lengths, cu, cu[:-1])
        states = self._run_packed(ids, lengths, cu, np.arange(cu[-1]))
        return (np.add.reduceat(states, cu[:-1], axis=0) / lengths[:, None]).astype(np.float32)

    def _embed_padded(self, sequences: list, how: str) -> np.ndarray:
        batch, seq = len(sequences), max(len(s) for s in sequences)
        ids = np.full((batch, seq), self.metadata.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        for row, s in enumerate(sequences):
            n = len(s)
            ids[row, :n] = s
            mask[row, :n] = 1
        hidden = self._run({"input_ids": ids, "attention_mask": mask}, (batch, seq, self.hidden_size))
        return pool(hidden, mask, how)

    # ------------------------------------------------------------------------------------------ task heads

    def predict(self, inputs: str | tuple[str, str] | Iterable[str | tuple[str, str]], *,
                batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int | None = None, top_k: int | None = None,
                return_logits: bool = False, raw_scores: bool = False, truncate: bool = True) -> list:
        """Classify (or score) texts or (text, text) pairs with a sequence-classification model.

        Per input, a list of {"label", "score"} sorted by score, best first: the top_k best labels, or every
        label when top_k is None (transformers' text-classification pipeline with top_k=None); scores are the
        logits through the model's activation (softmax, sigmoid or none, from the export), or the logits
        themselves with raw_scores=True. return_logits: the raw float32 logits [labels] per input instead. A
        single input (a str or a (str, str) tuple) gives its result alone; a list gives a list. An input over
        the model's limit is truncated (with a warning), or with truncate=False refused: InputTooLongError
        naming ``inputs[i]``. See bort_infer.heads."""
        options = HeadOptions(batch_size=batch_size, max_tokens=max_tokens, top_k=top_k, return_logits=return_logits,
                              raw_scores=raw_scores, truncate=truncate)
        heads.check_task(self.metadata, SEQUENCE_CLASSIFICATION, "predict()")
        items, single = heads.prediction_inputs(inputs, self.metadata.pairs)
        logits = self._sequence_logits(items, options, "inputs")
        out = heads.predictions(logits, self.metadata, options.top_k, options.return_logits, options.raw_scores)
        return out[0] if single else out

    def rerank(self, query: str, documents: Iterable[str], *, top_k: int | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int | None = None,
               return_documents: bool = False, raw_scores: bool = False, truncate: bool = True) -> list[dict]:
        """Score every (query, document) pair with a one-score sequence-classification model (a cross-encoder)
        and return [{"index", "score"[, "document"]}] sorted by score, best first (ties keep document order),
        the top_k best or all. Scores are the logit through the model's activation (sigmoid for a
        sentence-transformers CrossEncoder), or the logit itself with raw_scores=True. A pair over the model's
        limit is truncated, or with truncate=False refused: InputTooLongError naming ``documents[i]``."""
        options = HeadOptions(batch_size=batch_size, max_tokens=max_tokens, top_k=top_k, raw_scores=raw_scores,
                              truncate=truncate)
        heads.check_rerank(self.metadata)
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        docs = heads.rerank_documents(documents)
        logits = self._sequence_logits([(query, d) for d in docs], options, "documents")
        return heads.ranking(logits, self.metadata, docs, options.top_k, bool(return_documents), options.raw_scores)

    def tag(self, texts: str | Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
            max_tokens: int | None = None, aggregation: str = "simple", stride: int = DEFAULT_STRIDE) -> list:
        """Entities of each text from a token-classification model: a list of {"entity_group", "score",
        "word", "start", "end"} per text, as transformers' token-classification pipeline gives with
        aggregation_strategy="simple" (start / end: character offsets into the text). A single str gives its
        list alone. A text over the model's limit is read whole, as overlapping windows sharing ``stride``
        tokens: every token gets exactly one prediction, from the window that reads it with the most context
        (see token_logits), so entities span the whole text and their offsets are into the original text."""
        options = HeadOptions(batch_size=batch_size, max_tokens=max_tokens, aggregation=aggregation, stride=stride)
        heads.check_task(self.metadata, TOKEN_CLASSIFICATION, "tag()")
        single = isinstance(texts, str)
        items = self._check_texts(texts)
        encodings, logits = self._tagged_tokens(items, options)
        decoder = heads.EntityDecoder(self._tokenizer)
        out = [heads.entities(text, e, x, self.metadata.labels, decoder)
               for text, e, x in zip(items, encodings, logits)]
        return out[0] if single else out

    def token_logits(self, texts: str | Iterable[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                     max_tokens: int | None = None, stride: int = DEFAULT_STRIDE) -> list[np.ndarray]:
        """A token-classification model's raw float32 logits [tokens, labels] per text, special tokens included
        (what tag() reads), one row per token of the tokenizer's whole (untruncated) encoding of the text. A
        text over the model's limit runs as windows of the limit sharing ``stride`` tokens
        (bort_infer.long_texts.token_windows), each with the text's special tokens; a token's row comes from
        the window where it is farthest from a cut (window_owners), the special tokens' from the first and
        last windows."""
        options = HeadOptions(batch_size=batch_size, max_tokens=max_tokens, stride=stride)
        heads.check_task(self.metadata, TOKEN_CLASSIFICATION, "token_logits()")
        single = isinstance(texts, str)
        out = self._tagged_tokens(self._check_texts(texts), options)[1]
        return out[0] if single else out

    def _tagged_tokens(self, items: list[str], options: HeadOptions) -> tuple[list, list[np.ndarray]]:
        """Each text's whole encoding and its tokens' logits (see token_logits)."""
        limit = self.metadata.max_length
        options.check_stride(limit - self._tokenizer.num_special_tokens_to_add(False))
        encodings = _encode_batch(self._tokenizer, items)
        long = [i for i, e in enumerate(encodings) if e.overflowing]
        if long:
            for i, e in zip(long, _encode_batch(self._untruncated_tokenizer(), [items[i] for i in long])):
                encodings[i] = e
        runs: list = []
        plans: list = []  # per text: (its first run, None) or (its first run, (lead, trail, spans)) for windows
        for e in encodings:
            if len(e.ids) <= limit:
                plans.append((len(runs), None))
                runs.append(e)
                continue
            sequence = e.sequence_ids  # None for the special tokens the template adds around the text
            lead = next(k for k, s in enumerate(sequence) if s is not None)
            trail = next(k for k, s in enumerate(reversed(sequence)) if s is not None)
            n = len(e.ids) - lead - trail
            spans = long_texts.token_windows(n, limit - lead - trail, options.stride)
            plans.append((len(runs), (lead, trail, spans)))
            for a, b in spans:
                runs.append(_Tokens(e.ids[:lead] + e.ids[lead + a:lead + b] + e.ids[n + lead:],
                                    e.type_ids[:lead] + e.type_ids[lead + a:lead + b] + e.type_ids[n + lead:]))
        run_logits = self._token_logits(runs, options)
        out = []
        for e, (first, windowed) in zip(encodings, plans):
            if windowed is None:
                out.append(run_logits[first])
                continue
            lead, trail, spans = windowed
            n = len(e.ids) - lead - trail
            merged = np.empty((len(e.ids), len(self.metadata.labels)), dtype=np.float32)
            windows_ = run_logits[first:first + len(spans)]
            merged[:lead] = windows_[0][:lead]
            merged[lead + n:] = windows_[-1][len(windows_[-1]) - trail:]
            owners = long_texts.window_owners(n, spans)
            for k, (a, b) in enumerate(spans):
                mine = np.flatnonzero(owners[a:b] == k)
                merged[lead + a + mine] = windows_[k][lead + mine]
            out.append(merged)
        return encodings, out

    def _untruncated_tokenizer(self) -> Tokenizer:
        """A copy of the tokenizer that never truncates (tag() windows a long text itself)."""
        with self._lock:
            if self._whole_tokenizer is None:
                tok = Tokenizer.from_str(self._tokenizer.to_str())
                tok.no_padding()
                tok.no_truncation()
                self._whole_tokenizer = tok
            return self._whole_tokenizer

    def _tokenize_inputs(self, items: list, truncate: bool = True, field: str = "inputs") -> list:
        encodings = _encode_batch(self._tokenizer, items)
        if not truncate:
            heads.refuse_overlong(encodings, field, self.metadata.max_length)
        self._note_truncation(encodings)
        return encodings

    def _sequence_logits(self, items: list, options: HeadOptions, field: str) -> np.ndarray:
        """[inputs, labels] float32 logits of a sequence head (its graph reads each input's first row)."""
        encodings = self._tokenize_inputs(items, options.truncate, field)
        out = np.empty((len(encodings), len(self.metadata.labels)), dtype=np.float32)
        for idx in self._batches(encodings, options.batch_size, options.max_tokens):
            batch = [encodings[i] for i in idx]
            ids, positions, cu, types = self._packed_feeds(batch)
            out[idx] = self._run_head(ids, positions, cu, types, cu[:-1])
        return out

    def _token_logits(self, encodings: list, options: HeadOptions) -> list[np.ndarray]:
        """Per encoding, its tokens' float32 logits [tokens, labels] from a token head."""
        out: list[np.ndarray] = [np.empty((0, len(self.metadata.labels)), np.float32)] * len(encodings)
        for idx in self._batches(encodings, options.batch_size, options.max_tokens):
            batch = [encodings[i] for i in idx]
            ids, positions, cu, types = self._packed_feeds(batch)
            logits = self._run_head(ids, positions, cu, types, np.arange(cu[-1], dtype=np.int64))
            for row, i in enumerate(idx):
                out[i] = logits[cu[row]:cu[row + 1]]
        return out

    @staticmethod
    def _packed_feeds(encodings: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, positions, cu_seqlens and token type ids of encodings laid back to back."""
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64)
        types = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64)
        cu = _offsets(lengths)
        positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
        return ids, positions, cu, types

    def _run_head(self, ids, positions, cu, types, query_rows) -> np.ndarray:
        """A head's logits [query rows, labels] (_run checks the shape against the metadata's labels)."""
        feeds = {"input_ids": ids, "position_ids": positions, "cu_seqlens": cu, "query_rows": query_rows,
                 "token_type_ids": types}
        return self._run(feeds, (len(query_rows), len(self.metadata.labels)))

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


class _Tokens(NamedTuple):
    """One model input's token ids and token type ids (a window of a long text, for tag())."""

    ids: list[int]
    type_ids: list[int]


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


def _encode_batch(tokenizer: Tokenizer, items: list) -> list:
    """tokenizers' encode_batch of texts or (text, text) pairs."""
    try:
        return tokenizer.encode_batch(items)
    except TypeError:
        # tokenizers rejects str holding lone surrogates (not encodable as UTF-8): such code points
        # become U+FFFD, as any UTF-8 decoder would render them; well-formed pairs are joined.
        return tokenizer.encode_batch([_replace_lone_surrogates(t) if isinstance(t, str)
                                       else tuple(map(_replace_lone_surrogates, t)) for t in items])


def _replace_lone_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
