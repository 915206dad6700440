"""Encode options (bort_infer.options): one place checks them for Session, the file encoder and Ray; the
sentence-transformers spelling of normalize; keyword-only options; the progress-bar switch."""
from __future__ import annotations

import numpy as np
import pytest

from bort_infer.options import EncodeOptions, check_positive_int, progress_bar_disabled


@pytest.mark.parametrize("kwargs, names", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"), ({"chunk_size": -1}, "chunk_size"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"), ({"pooling": "max"}, "unknown pooling"),
])
def test_each_bad_option_is_a_value_error_naming_it(kwargs, names):
    with pytest.raises(ValueError, match=names):
        EncodeOptions(**kwargs)


def test_defaults_leave_pooling_and_normalize_to_the_model():
    options = EncodeOptions()
    assert (options.batch_size, options.max_tokens, options.chunk_size) == (32, None, 1024)
    assert options.pooling_for("mean") == "mean" and options.normalize_for(True) is True
    assert EncodeOptions(pooling="cls", normalize=False).pooling_for("mean") == "cls"
    assert EncodeOptions(normalize=False).normalize_for(True) is False


def test_normalize_embeddings_is_normalize_as_sentence_transformers_spells_it():
    assert EncodeOptions(normalize_embeddings=True).normalize is True
    assert EncodeOptions(normalize=True, normalize_embeddings=True).normalize is True
    with pytest.raises(ValueError, match="disagree"):
        EncodeOptions(normalize=False, normalize_embeddings=True)


def test_positive_integers():
    check_positive_int("n", 1)
    check_positive_int("n", None, optional=True)
    for bad in (0, -1, 1.0, True, "2", None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            check_positive_int("n", bad)


def test_progress_bar_switch(monkeypatch):
    monkeypatch.setenv("BORT_INFER_PROGRESS", "0")
    assert progress_bar_disabled(None) is True and progress_bar_disabled(True) is False
    monkeypatch.delenv("BORT_INFER_PROGRESS")
    assert progress_bar_disabled(None) is None and progress_bar_disabled(False) is True


def test_session_takes_the_sentence_transformers_keyword(session):
    texts = ["a horse", "a pony in a field"]
    plain = session.encode(texts, normalize=False)
    np.testing.assert_allclose(session.encode(texts, normalize_embeddings=False), plain, atol=1e-6)
    unit = session.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(ValueError, match="disagree"):
        session.encode(texts, normalize=True, normalize_embeddings=False)
    chunks = list(session.encode_iter(iter(texts), normalize_embeddings=True, chunk_size=1))
    np.testing.assert_allclose(np.concatenate(chunks), unit, atol=1e-6)


def test_session_options_are_keyword_only(session):
    with pytest.raises(TypeError):
        session.encode(["a"], 8)
    with pytest.raises(TypeError):
        session.encode_iter(["a"], 8)
    ids, mask = np.array([[0, 5, 2]]), np.ones((1, 3), np.int64)
    with pytest.raises(TypeError):
        session.embed_tokens(ids, mask, "cls")
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        session.embed_tokens(ids, mask, pooling="max")
