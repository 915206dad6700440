"""bort-bench: Bort vs BERT-large on every runtime, measured side by side (build-time world)."""
