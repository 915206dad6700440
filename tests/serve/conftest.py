"""A real server on a free loopback port (uvicorn in a thread) around the tiny-bort session, and a session
whose model calls wait at a gate, so that tests can hold requests in the queue."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

MODEL_NAME = "tiny-bort"


class GatedSession:
    """A Session whose model calls wait until ``gate`` is set (and record what each call held)."""

    def __init__(self, session):
        self._session = session
        self.gate = threading.Event()
        self.calls: list[list[int]] = []  # token count of each text, per model call
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._session, name)

    def embed_ids(self, sequences, **kwargs):
        self.entered.set()
        self.gate.wait(30)
        self.calls.append([len(s) for s in sequences])
        return self._session.embed_ids(sequences, **kwargs)


@contextmanager
def running_server(session, **options):
    """Serve ``session`` on 127.0.0.1:<free port>; yields (base URL, the app)."""
    import uvicorn

    from bort_infer.serve import ServeOptions, create_app
    from bort_infer.serve.server import bind

    opts = ServeOptions(model=str(session.path), port=0, model_name=MODEL_NAME, **options)
    app = create_app(session, opts)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def server(session):
    """(base URL, app) of a server of the tiny-bort session with the default options."""
    with running_server(session) as served:
        yield served


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
