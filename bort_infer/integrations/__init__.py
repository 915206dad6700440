"""Integrations of bort-infer with other systems, each behind an optional extra.

- ``bort_infer.integrations.ray`` (``pip install 'bort-infer[ray]'``): embed a Ray Data dataset on a
  cluster (``EmbedBatch``, ``embed_dataset``) and ``bort-infer encode --ray``.

Importing this package imports nothing beyond the standard library; each submodule imports its own
system (Ray only inside ``bort_infer.integrations.ray``).
"""
