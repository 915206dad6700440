"""The server's options, checked in one place (as bort_infer.options checks the encoding options): the CLI,
create_app and the tests all build a ServeOptions, and a bad value is a ValueError naming the option."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..batching import DEFAULT_PACKED_TOKEN_BUDGET
from ..options import check_positive_int

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: exposing a model is the operator's decision
DEFAULT_PORT = 8080
DEFAULT_MAX_QUEUE = 2048  # texts admitted and not yet answered (tokenizing, waiting or in the model)
DEFAULT_MAX_INPUT_TEXTS = 512  # texts in one request
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_DRAIN_SECONDS = 30.0
API_KEY_ENV = "BORT_INFER_API_KEY"  # keeps the key out of the process list (ps shows --api-key's value)


@dataclass(frozen=True)
class ServeOptions:
    """What `bort-infer serve` runs. Every field is checked on construction (a ValueError names it).

    model: an exported model directory. host/port: where to listen (port 0: any free port). threads:
    onnxruntime intra-op threads (None: one per core). max_batch_tokens: real tokens per model call, the
    budget the batching worker fills from concurrent requests. max_queue: texts admitted and not yet
    answered; a request that would pass it gets 429 (memory stays bounded). max_input_texts: texts per
    request (422 past it). max_body_bytes: request body size (413 past it). api_key: when set, every route but
    /health needs ``Authorization: Bearer KEY``. model_name: the id clients name (default: the directory's
    name). drain_seconds: how long SIGTERM waits for in-flight requests before closing them.
    """

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    threads: int | None = None
    max_batch_tokens: int = DEFAULT_PACKED_TOKEN_BUDGET
    max_queue: int = DEFAULT_MAX_QUEUE
    max_input_texts: int = DEFAULT_MAX_INPUT_TEXTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_key: str | None = None
    model_name: str | None = None
    drain_seconds: float = DEFAULT_DRAIN_SECONDS

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise ValueError(f"model must be a model directory path, got {self.model!r}")
        object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be a host name or address, got {self.host!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer from 0 (any free port) to 65535, got {self.port!r}")
        check_positive_int("threads", self.threads, optional=True)
        for name in ("max_batch_tokens", "max_queue", "max_input_texts", "max_body_bytes"):
            check_positive_int(name, getattr(self, name))
        if self.max_input_texts > self.max_queue:
            raise ValueError(f"max_input_texts ({self.max_input_texts}) must not exceed max_queue "
                             f"({self.max_queue}): such a request could never be admitted")
        if self.api_key is not None:
            if not isinstance(self.api_key, str) or not self.api_key or any(c.isspace() for c in self.api_key):
                raise ValueError("api_key must be a non-empty string without whitespace")
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name.strip()):
            raise ValueError(f"model_name must be a non-empty string, got {self.model_name!r}")
        seconds = self.drain_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
            raise ValueError(f"drain_seconds must be a positive number of seconds, got {seconds!r}")

    @property
    def served_model_name(self) -> str:
        return self.model_name or Path(self.model).resolve().name

    @classmethod
    def api_key_from_env(cls) -> str | None:
        """The key from BORT_INFER_API_KEY (empty or unset: none)."""
        return os.environ.get(API_KEY_ENV) or None
