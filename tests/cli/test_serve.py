"""`bort-infer serve`: its options reach ServeOptions, and bad ones are clear errors (exit 2), not tracebacks.
The running server is tested in tests/serve/."""
from __future__ import annotations

import pytest

from bort_infer.cli.main import build_parser, main

pytest.importorskip("starlette")


def test_the_arguments_become_serve_options(monkeypatch):
    import bort_infer.serve.server as server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda options: seen.setdefault("options", options) and 0)
    monkeypatch.setenv("BORT_INFER_API_KEY", "env-key")
    args = build_parser().parse_args(["serve", "m", "--port", "9000", "--threads", "2", "--max-batch-tokens", "512",
                                      "--max-queue", "64", "--max-input-texts", "32", "--max-body-bytes", "1000",
                                      "--model-name", "bort", "--drain-seconds", "5"])
    assert args.func(args) == 0
    o = seen["options"]
    assert (o.model, o.host, o.port, o.threads, o.max_batch_tokens, o.max_queue, o.max_input_texts,
            o.max_body_bytes, o.api_key, o.model_name, o.drain_seconds) == \
        ("m", "127.0.0.1", 9000, 2, 512, 64, 32, 1000, "env-key", "bort", 5.0)


@pytest.mark.parametrize("argv, message", [
    (["--max-input-texts", "100", "--max-queue", "10"], "must not exceed max_queue"),
    (["--port", "70000"], "port must be"),
    (["--drain-seconds", "0"], "drain_seconds"),
])
def test_bad_options_are_errors_naming_them(tmp_path, capsys, argv, message):
    assert main(["serve", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_model_is_an_error(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_taken_port_is_an_error(model, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["serve", str(model), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
