"""The command lines: ``bort-infer`` (``bort_infer.cli.main``: create-random, export, encode) and ``bort-bench``
(``bort_infer.cli.bench``). Argument parsing only; the work is done by the modules they call."""
