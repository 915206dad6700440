"""ServeOptions: every server option checked in one place, a bad value named."""
from __future__ import annotations

import pytest

from bort_infer.serve.options import API_KEY_ENV, DEFAULT_HOST, ServeOptions


def test_defaults_bind_loopback_only():
    options = ServeOptions(model="models/x")
    assert options.host == DEFAULT_HOST == "127.0.0.1" and options.api_key is None
    assert options.served_model_name == "x"


@pytest.mark.parametrize("field, value", [
    ("port", -1), ("port", 70000), ("port", "80"), ("threads", 0), ("max_batch_tokens", 0), ("max_queue", -5),
    ("max_input_texts", 1.5), ("max_body_bytes", True), ("api_key", ""), ("api_key", "has space"),
    ("host", ""), ("model_name", " "), ("drain_seconds", 0), ("drain_seconds", float("inf")),
])
def test_a_bad_value_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        ServeOptions(model="m", **{field: value})


def test_a_request_larger_than_the_queue_could_never_be_admitted():
    with pytest.raises(ValueError, match="max_input_texts .* must not exceed max_queue"):
        ServeOptions(model="m", max_input_texts=10, max_queue=5)


def test_the_api_key_may_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeOptions.api_key_from_env() == "from-env"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert ServeOptions.api_key_from_env() is None
