"""Long texts (bort_infer.long_texts, Session.encode(long_texts="chunk")): a text over the model's limit is
encoded as overlapping windows, pooled token-weighted; a text within it keeps its vector exactly."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from bort_infer.long_texts import pool_windows, token_windows, window_owners, windows

from .conftest import VARIED_TEXTS


class _Encoding:
    def __init__(self, n, overflowing=()):
        self.ids, self.overflowing = list(range(n)), list(overflowing)


def test_windows_flatten_each_text_with_its_overflow_in_order():
    encs = [_Encoding(4), _Encoding(8, [_Encoding(8), _Encoding(3)]), _Encoding(2)]
    flat, owners = windows(encs)
    assert [len(w.ids) for w in flat] == [4, 8, 8, 3, 2]
    assert owners.tolist() == [0, 1, 1, 1, 2]


def test_pool_windows_weights_by_tokens_and_keeps_single_windows_exact():
    encs = [_Encoding(4), _Encoding(8, [_Encoding(2)])]
    flat, owners = windows(encs)
    vectors = np.array([[1.0, 2.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    out = pool_windows(vectors, flat, owners, 2)
    np.testing.assert_array_equal(out[0], vectors[0])
    np.testing.assert_allclose(out[1], [0.8, 0.2])


def test_token_windows_cover_the_text_sharing_at_least_stride_tokens():
    assert token_windows(5, 8, 2) == [(0, 5)]
    assert token_windows(8, 8, 2) == [(0, 8)]
    spans = token_windows(20, 8, 2)
    assert spans == [(0, 8), (6, 14), (12, 20)]
    spans = token_windows(17, 8, 3)
    assert spans[0] == (0, 8) and spans[-1] == (9, 17)  # the last window is full-size, ending at the text's end
    assert all(b - a == 8 and a2 <= b - 3 for (a, b), (a2, _) in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="stride 8 must be in"):
        token_windows(20, 8, 8)


def test_window_owners_give_each_token_the_window_where_it_is_farthest_from_a_cut():
    spans = [(0, 8), (6, 14), (12, 20)]
    owners = window_owners(20, spans)
    assert owners.tolist() == [0] * 7 + [1] * 6 + [2] * 7
    for t, k in enumerate(owners):
        a, b = spans[k]
        assert a <= t < b
    assert window_owners(4, [(0, 4)]).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="do not cover token 5"):
        window_owners(8, [(0, 5)])


def _tokens(session, text):
    return len(session._tokenizer.encode(text).ids)


def test_chunk_leaves_texts_within_the_limit_unchanged(session):
    texts = [t for t in VARIED_TEXTS if _tokens(session, t) < session.metadata.max_length]
    np.testing.assert_array_equal(session.encode(texts, long_texts="chunk"), session.encode(texts))


def test_chunk_reads_all_of_a_long_text(session):
    head = "alpha beta gamma " * 200
    tail_a, tail_b = "the ending is about cats " * 40, "completely different finale on finance " * 40
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truncated = session.encode([head + tail_a, head + tail_b])
    np.testing.assert_allclose(truncated[0], truncated[1], atol=1e-6)  # the tails were cut off
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # chunking truncates nothing, so it warns of nothing
        chunked = session.encode([head + tail_a, head + tail_b, "short"], long_texts="chunk", stride=16)
    assert not np.allclose(chunked[0], chunked[1], atol=1e-3)
    np.testing.assert_array_equal(chunked[2], session.encode("short"))


def test_chunk_is_the_token_weighted_mean_of_its_windows(session):
    text = "word " * 1100
    tok = session._strided_tokenizer(8)
    enc = tok.encode(text)
    parts = [enc] + list(enc.overflowing)
    assert len(parts) >= 3
    window_texts = [tok.decode(p.ids) for p in parts]  # byte-level BPE decodes back to the same tokens
    assert [len(tok.encode(t).ids) for t in window_texts] == [len(p.ids) for p in parts]
    vectors = session.encode(window_texts, normalize=False)
    weights = np.array([len(p.ids) for p in parts], np.float64)
    expected = (vectors * weights[:, None]).sum(0) / weights.sum()
    got = session.encode(text, long_texts="chunk", stride=8, normalize=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_chunk_gives_the_same_vector_in_any_batch(session):
    text = "one two three four " * 300
    alone = session.encode(text, long_texts="chunk")
    mixed = session.encode(["x", text, "y " * 50], long_texts="chunk", batch_size=2, max_tokens=700)[1]
    np.testing.assert_allclose(alone, mixed, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"long_texts": "split"}, "long_texts must be one of truncate, chunk"),
    ({"long_texts": "chunk", "stride": -1}, "stride must be a non-negative integer"),
    ({"long_texts": "chunk", "stride": 510}, "stride 510 must be smaller than the model's window of 510"),
])
def test_bad_long_text_options_are_named(session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        session.encode("text", **kwargs)
