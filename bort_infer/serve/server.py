"""Running the app: load the model, bind the socket, serve with uvicorn until SIGTERM or SIGINT, drain the
requests in flight (up to drain_seconds), exit 0."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading

import uvicorn

from .options import ServeOptions

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _EarlyStop:
    """Records SIGTERM from the start of serve() until uvicorn handles signals (the model may be loading)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._record)

    def _record(self, sig, frame) -> None:
        self.signal = sig


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, except that after a graceful shutdown on SIGTERM/SIGINT it does not raise the
    signal again: uvicorn would, which ends a drained server as killed (exit 143) instead of exit 0."""

    def __init__(self, config: uvicorn.Config, early: _EarlyStop):
        super().__init__(config)
        self._early = early

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        if self._early.signal is not None:  # arrived before these handlers: stop as soon as started
            self._on_signal(self._early.signal, None)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def requests_in_flight(self) -> int:
        """Requests read and not yet answered in full: uvicorn's own test, at shutdown, of a connection still
        serving. (Its request tasks would also count a request whose answer is already out while its task
        winds down: a client's answered /health, say.)"""
        cycles = (getattr(connection, "cycle", None) for connection in self.server_state.connections)
        return sum(1 for cycle in cycles if cycle is not None and not cycle.response_complete)

    def _announce_exit(self, sig: int) -> None:
        in_flight = self.requests_in_flight()
        print(f"bort-infer serve: {signal.Signals(sig).name}: no new connections; answering the {in_flight} "
              f"request(s) in flight, then exiting", file=sys.stderr, flush=True)

    def _on_signal(self, sig, frame) -> None:
        if not self.should_exit:
            # Counted from the event loop, between its callbacks: a signal handler may run in the middle of one,
            # after an answer's last bytes are written and before its connection records it as complete.
            try:
                asyncio.get_running_loop().call_soon_threadsafe(self._announce_exit, sig)
            except RuntimeError:  # not serving yet (the model still loading): nothing is in flight
                self._announce_exit(sig)
        self.handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), IPv4 or IPv6 as the host resolves."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


def serve(options: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 once the requests in flight are answered."""
    from ..session import Session
    from .app import create_app

    early = _EarlyStop()
    # Spinning pool threads would take the cores the event loop and the tokenizer need between model calls.
    session = Session(options.model, threads=options.threads, allow_spinning=False)
    app = create_app(session, options)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    # No WebSocket protocol: the app has no WebSocket route, and every connection is then an HTTP one.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="none",
                            timeout_graceful_shutdown=options.drain_seconds)
    server = _DrainingServer(config, early)
    meta = session.metadata
    auth = "API key required" if options.api_key else "no API key"
    print(f"bort-infer serve: {options.served_model_name} ({meta.architecture}, {meta.precision}, hidden "
          f"{meta.hidden_size}, max {meta.max_length} tokens) on http://{shown}:{port} ({auth}; "
          f"max {options.max_batch_tokens} tokens per batch, {options.max_queue} texts queued)", flush=True)
    server.run(sockets=[sock])
    print("bort-infer serve: stopped", flush=True)
    return 0
