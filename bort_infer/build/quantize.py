"""int8 quantization (placeholder module being written)."""
