"""Build-time world: random checkpoints, tokenizer training, ONNX export, graph rewrite, quantization.

Modules here may import torch, transformers, optimum and onnx. The run-time modules (``bort_infer.session``
and friends) never import this package.
"""
