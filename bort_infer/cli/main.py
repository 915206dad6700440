"""`bort-infer` command line: create-random, export, encode, predict, serve.

Each subcommand imports its modules only when it runs: `encode`, `predict` and `serve` stay in the run-time
world (no torch, transformers or onnx; Ray only with --ray; the web stack only for serve), create-random and
export load the build-time stack.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .. import __version__
from ..model_dir import INT8_GEMMS, INT8_WEIGHTS, TASKS
from ..registry import known_models
from . import encode, predict, serve


def _create_random(args: argparse.Namespace) -> int:
    from ..export.random_checkpoint import create_random_checkpoint

    out = create_random_checkpoint(args.model, args.out, seed=args.seed)
    print(f"wrote random-init {args.model} checkpoint to {out}")
    return 0


def _read_evaluation(path: str) -> list:
    """--evaluation FILE: one held-out input per line; a line with a tab is a (text, text) pair."""
    try:
        lines = [line for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--evaluation {path}: {exc}") from None
    if not lines:
        raise ValueError(f"--evaluation {path} holds no input (one text, or TEXT<tab>TEXT, per line)")
    return [tuple(line.split("\t", 1)) if "\t" in line else line for line in lines]


def _export(args: argparse.Namespace) -> int:
    from ..export.export import export_model

    calibration = None
    if args.calibration:
        try:
            text = open(args.calibration, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--calibration {args.calibration}: {exc}") from None
        calibration = [line for line in text.splitlines() if line.strip()]
        if not calibration:
            raise ValueError(f"--calibration {args.calibration} holds no text (one text per line)")
    if args.quantize and args.precision not in (None, args.quantize):
        raise ValueError(f"--quantize {args.quantize} contradicts --precision {args.precision}")
    precision = args.precision or args.quantize or "fp32"
    evaluation = _read_evaluation(args.evaluation) if args.evaluation else None
    meta = export_model(args.src, args.out, quantize=None if precision == "fp32" else precision,
                        custom_ops=not args.no_custom_ops,
                        overwrite=args.overwrite, form=args.form, max_drop=args.max_drop,
                        calibration_texts=calibration, ort_format=args.ort_format, gemm=args.gemm,
                        int8_weights=args.int8_weights,
                        task=args.task, evaluation_inputs=evaluation, min_agreement=args.min_agreement,
                        min_spearman=args.min_spearman)
    ops = ", ".join(meta.custom_ops) or "none"
    gemm = f", int8 GEMM: {meta.int8_gemm}" if meta.int8_gemm else ""
    labels = ", ".join(meta.labels[:6]) + (f" (+{len(meta.labels) - 6})" if len(meta.labels) > 6 else "")
    what = (f"{meta.task}, labels {labels}, activation {meta.activation}"
            + (", text pairs" if meta.pairs else "")) if meta.is_head else f"pooling {meta.pooling}"
    print(f"exported {args.src} → {args.out} ({meta.precision}, {what}, custom ops: {ops}{gemm})")
    if meta.ort_file:
        print(f"ORT format: {meta.ort_file} (same token states as {meta.onnx_file})")
    parity = meta.source.get("parity_vs_pytorch") or {}
    if meta.is_head:
        print(f"fp32 logits vs PyTorch: max abs diff {parity['max_abs_logit_diff']:.2g} over {parity['inputs']} "
              "inputs")
        head = (meta.fidelity or {}).get("head")
        if head:
            gate = head["gate"]
            print(f"int8 vs fp32 on {head['inputs']} held-out inputs ({head['source']}): {gate['metric']} "
                  f"{head[gate['metric']]:.5f} (gate >= {gate['min']}: passed)")
        return 0
    if parity:
        print(f"fp32 graph vs PyTorch: min cosine {parity['min_cosine']:.7f}, max abs diff "
              f"{parity['max_abs_diff']:.2g} over {parity['tokens']} tokens")
    if meta.fidelity:
        f, p = meta.fidelity, meta.precision
        ev, batch, gate = f["evaluation"], f["batch_consistency"], f["gate"]
        sizes = f["size_bytes"]
        required = f"min >= {gate['min_cosine']}" + (f", mean >= {gate['mean_cosine']:.3f}" if "mean_cosine" in gate
                                                      else "")
        print(f"{p} vs fp32 on {ev['texts']} held-out texts: cosine min {ev['cosine_min']:.6f}, "
              f"p1 {ev['cosine_p1']:.6f}, mean {ev['cosine_mean']:.6f} (gate: {required}: passed)")
        print(f"same text alone vs in a batch of {batch['batch_size']}: cosine min {batch['cosine_min']:.6f}; "
              f"model {sizes['fp32_model'] / 1e6:.1f} MB fp32 → {sizes[f'{p}_model'] / 1e6:.1f} MB {p}")
        if f.get("smoothing_alpha") is not None or f.get("fp32_linears"):
            print(f"activation smoothing alpha {f.get('smoothing_alpha')}; kept in fp32: "
                  f"{', '.join(f.get('fp32_linears') or []) or 'nothing'}")
    return 0


def _ops_config(args: argparse.Namespace) -> int:
    from ..export.ort_format import write_ops_config

    out = write_ops_config(args.models, args.output, type_reduction=args.type_reduction)
    print(f"wrote {out}: the operators {len(args.models)} model(s) need, for onnxruntime's "
          "build.sh --minimal_build custom_ops --include_ops_by_config")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bort-infer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bort-infer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create-random", help="write a random-init HF checkpoint of a known model config")
    p.add_argument("model", choices=known_models())
    p.add_argument("out", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_create_random)

    p = sub.add_parser("export", help="export a HF checkpoint to a bort-infer model directory")
    p.add_argument("src", help="local Hugging Face checkpoint directory, or a hub id where online")
    p.add_argument("out", help="output model directory")
    p.add_argument("--precision", choices=["fp32", "int8", "bf16"], default=None,
                   help="fp32 (default); int8 weights and per-token activations; or bf16 weights and GEMM inputs "
                        "with fp32 accumulation (fast on CPUs with AVX512-BF16 or AMX). int8 and bf16 are gated on "
                        "their fidelity to fp32")
    p.add_argument("--quantize", choices=["int8", "bf16"], default=None, help="the same as --precision")
    p.add_argument("--no-custom-ops", action="store_true",
                   help="keep the plain onnxruntime graph (no bort-infer fused kernels)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--form", choices=["packed", "padded"], default=None,
                   help="graph form with custom ops: packed (default: padding-free, CLS-only last layer) or padded")
    p.add_argument("--max-drop", type=float, default=None, metavar="D",
                   help="int8 gate: fail unless every held-out text keeps cosine >= 1 - D to fp32 and the mean "
                        ">= 1 - D/4 (default 0.02: min 0.98, mean 0.995)")
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="int8: texts (one per line) to calibrate on (default: the built-in calibration set)")
    p.add_argument("--ort-format", action="store_true",
                   help="also write model.ort, the graph in onnxruntime's ORT format (mobile and minimal builds)")
    p.add_argument("--gemm", choices=list(INT8_GEMMS), default=None,
                   help="int8: run the linears on bort-infer's GEMM (ours: one LinearInt8 op each, the default) or on "
                        "onnxruntime's MLAS (QuantizeRows → MatMulInteger → DequantizeRows); the same numbers, but on "
                        "AVX2-only CPUs MLAS's int16 pair sums can saturate on full-range weights")
    p.add_argument("--int8-weights", choices=list(INT8_WEIGHTS), default=None,
                   help="int8: scale each weight column to its largest weight (full) or so that no two neighbouring "
                        "weights k = 2j, 2j+1 of one sign pass 128 together (pair-safe: the GEMM is exact at twice the "
                        "speed on AVX2-only CPUs, at a slightly coarser step; the default)")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="what to export: default from the checkpoint config's architectures (BertForSequence"
                        "Classification, BertForTokenClassification; anything else: embedding)")
    p.add_argument("--evaluation", metavar="FILE", default=None,
                   help="int8 task head: held-out inputs for its gate, one per line, TEXT<tab>TEXT for a pair "
                        "(default: the built-in evaluation texts)")
    p.add_argument("--min-agreement", type=float, default=None, metavar="A",
                   help="int8 task head: least label agreement (classification) or entity F1 agreement "
                        "(tagging) with fp32 (default 0.995)")
    p.add_argument("--min-spearman", type=float, default=None, metavar="R",
                   help="int8 one-score head (regression, reranking): least Spearman correlation of its scores "
                        "with fp32's (default 0.995)")
    p.set_defaults(func=_export)

    p = sub.add_parser("ops-config", help="write the operator config a minimal onnxruntime build needs for models",
                       description="Write the reduced-operator config (onnxruntime's build.sh --include_ops_by_config) "
                                   "listing every operator the model directories use, read from their ORT-format "
                                   "models (converted on the fly where a directory has no model.ort).")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model directories")
    p.add_argument("-o", "--output", default="required_operators.config", help="config file to write "
                   "(default: %(default)s)")
    p.add_argument("--type-reduction", action="store_true",
                   help="also list each operator's element types (for --enable_reduced_operator_type_support)")
    p.set_defaults(func=_ops_config)

    p = sub.add_parser("encode", help="embed a text file (one text per line) into a .npy; --ray: files on a cluster",
                       description="Embed every line of INPUT (a file, or - for stdin) into OUT, a float32 "
                                   "(lines, hidden) .npy in input order. OUT appears only when complete; an "
                                   "interrupted run continues with --resume. With --ray, text or Parquet files "
                                   "are embedded on a Ray cluster into a directory of Parquet files.")
    encode.add_arguments(p)
    p.set_defaults(func=encode.run)

    p = sub.add_parser("predict", help="run a classification or tagging model over a text file into JSON Lines",
                       description=predict.__doc__.split("\n\n")[1])
    predict.add_arguments(p)
    p.set_defaults(func=predict.run)

    p = sub.add_parser("serve", help="serve a model over HTTP: OpenAI /v1/embeddings, TEI /embed, /metrics",
                       description="Serve MODEL over HTTP with dynamic batching across requests: POST /v1/embeddings "
                                   "(OpenAI), POST /embed (TEI), GET /v1/models, /health, /metrics (Prometheus). "
                                   "Listens on 127.0.0.1 unless --host says otherwise; SIGTERM answers the requests "
                                   "in flight, then exits 0.")
    serve.add_arguments(p)
    p.set_defaults(func=serve.run)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread like KeyboardInterrupt so that every ``finally`` runs
    (an export removes its work directory, an encode keeps its finished rows) before the exit."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_on_termination(signum: int, frame) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command in ("create-random", "export", "encode"):  # `serve` drains on SIGTERM in its own way
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_on_termination)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130  # what has been done was reported where it was done (e.g. encode keeps OUT.partial)
    except Terminated as exc:
        return 128 + exc.signum
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        print(f"bort-infer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
