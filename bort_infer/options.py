"""The options of encoding texts, checked in one place for every way in: Session.encode / encode_iter /
embed_tokens, the file encoder, the Ray integration (and any server in front of a Session).

Run-time world: the standard library only (and bort_infer.pooling's names).
"""
from __future__ import annotations

import os
from dataclasses import InitVar, dataclass

from .pooling import check_pooling

DEFAULT_BATCH_SIZE = 32
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_FILE_CHUNK_SIZE = 4096  # the file encoder's: lines read, embedded and flushed to disk at a time
PROGRESS_ENV = "BORT_INFER_PROGRESS"
LONG_TEXTS = ("truncate", "chunk")
# Tokens shared by consecutive windows of a chunked long text: context for the tokens near a window's edge.
DEFAULT_STRIDE = 32
AGGREGATIONS = ("simple",)


def check_positive_int(name: str, value, *, optional: bool = False) -> None:
    """``value`` must be an int >= 1 (a bool is not), or None when ``optional``; else a ValueError naming it."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


def check_non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def progress_bar_disabled(show: bool | None) -> bool | None:
    """tqdm's ``disable`` for a bar the caller asked for (True / False) or left to the environment (None):
    ``BORT_INFER_PROGRESS=0`` hides it, otherwise tqdm shows it on a terminal."""
    if show is not None:
        return not show
    return True if os.environ.get(PROGRESS_ENV) == "0" else None


@dataclass(frozen=True)
class EncodeOptions:
    """How texts become vectors. Every field is checked on construction (a ValueError names it).

    batch_size: texts per model call. max_tokens: tokens per model call (None: the session's default budget
    on a packed model, no bound on a padded one). pooling: "cls", "mean" or None (the model's default).
    normalize: L2-normalize the vectors: True, False or None (the model's default); ``normalize_embeddings``
    is the same option as sentence-transformers spells it (giving both, different, is an error).
    show_progress_bar: True / False, or None (the front end's default). chunk_size: texts tokenized and
    embedded at a time (memory is bounded by it, not by the corpus).
    long_texts: a text over the model's token limit is cut to it ("truncate", the default) or split into
    windows of the limit that share ``stride`` tokens, each window encoded in the same packed batches as the
    other texts, and the window vectors averaged weighted by their tokens ("chunk"; see check_stride).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    show_progress_bar: bool | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    long_texts: str = "truncate"
    stride: int = DEFAULT_STRIDE
    normalize_embeddings: InitVar[bool | None] = None

    def __post_init__(self, normalize_embeddings: bool | None) -> None:
        check_positive_int("batch_size", self.batch_size)
        if self.long_texts not in LONG_TEXTS:
            raise ValueError(f"long_texts must be one of {', '.join(LONG_TEXTS)}, got {self.long_texts!r}")
        check_non_negative_int("stride", self.stride)
        check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("max_tokens", self.max_tokens, optional=True)
        check_pooling(self.pooling, allow_none=True)
        if normalize_embeddings is not None:
            if self.normalize is not None and bool(self.normalize) != bool(normalize_embeddings):
                raise ValueError(f"normalize={self.normalize!r} and normalize_embeddings={normalize_embeddings!r} "
                                 "(the same option, as sentence-transformers spells it) disagree: give one")
            object.__setattr__(self, "normalize", bool(normalize_embeddings))
        elif self.normalize is not None:
            object.__setattr__(self, "normalize", bool(self.normalize))

    def check_stride(self, window_tokens: int) -> None:
        """With long_texts="chunk", a window of ``window_tokens`` text tokens (the model's limit less its
        special tokens) must advance: stride < window_tokens."""
        if self.long_texts == "chunk" and self.stride >= window_tokens:
            raise ValueError(f"stride {self.stride} must be smaller than the model's window of {window_tokens} "
                             "text tokens (its max_length less the special tokens)")

    def pooling_for(self, default: str) -> str:
        """The pooling to run: this option, else the model's ``default``."""
        return default if self.pooling is None else self.pooling

    def normalize_for(self, default: bool) -> bool:
        """Whether to L2-normalize: this option, else the model's ``default``."""
        return bool(default) if self.normalize is None else self.normalize

    def session_kwargs(self) -> dict:
        """These options as ``Session.encode`` keywords (chunk_size is encode_iter's only)."""
        return {"batch_size": self.batch_size, "max_tokens": self.max_tokens, "pooling": self.pooling,
                "normalize": self.normalize, "show_progress_bar": self.show_progress_bar,
                "long_texts": self.long_texts, "stride": self.stride}


@dataclass(frozen=True)
class HeadOptions:
    """How a task head's outputs are read (Session.predict / rerank / tag). Every field is checked on
    construction (a ValueError names it).

    batch_size: inputs per model call; max_tokens: real tokens per model call (None: the session's default
    budget). top_k: the k best labels (predict) or documents (rerank); None: all of them. aggregation: how
    tag() merges tokens into entities ("simple": transformers' aggregation_strategy="simple"). raw_scores:
    predict / rerank scores are the logits themselves, not through the model's activation (TEI's raw_scores).
    truncate: an input over the model's limit is cut (True) or refused with InputTooLongError (False).
    stride: tag() / token_logits() read a text over the limit as windows sharing ``stride`` tokens.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens: int | None = None
    top_k: int | None = None
    return_logits: bool = False
    aggregation: str = "simple"
    raw_scores: bool = False
    truncate: bool = True
    stride: int = DEFAULT_STRIDE

    def __post_init__(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        check_non_negative_int("stride", self.stride)
        check_positive_int("max_tokens", self.max_tokens, optional=True)
        check_positive_int("top_k", self.top_k, optional=True)
        for name in ("return_logits", "raw_scores", "truncate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")

    def check_stride(self, window_tokens: int) -> None:
        """A window of ``window_tokens`` text tokens (the model's limit less its special tokens) must advance."""
        if self.stride >= window_tokens:
            raise ValueError(f"stride {self.stride} must be smaller than the model's window of {window_tokens} "
                             "text tokens (its max_length less the special tokens)")
