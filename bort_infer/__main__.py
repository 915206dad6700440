"""``python -m bort_infer --ops-lib | --include-dir | --version``: where the installed package keeps its
custom-op library and C header, for build systems of non-Python apps (e.g. ``-I$(python -m bort_infer
--include-dir)``)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bort_infer", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ops-lib", action="store_true",
                      help="print the path of libbort_infer_ops.so (the onnxruntime custom-op library)")
    what.add_argument("--include-dir", action="store_true", help="print the directory holding bort_infer_ops.h")
    what.add_argument("--version", action="store_true", help="print the package version")
    args = parser.parse_args(argv)
    import bort_infer

    if args.ops_lib:
        try:
            print(bort_infer.custom_op_library())
        except FileNotFoundError as exc:
            print(f"python -m bort_infer: {exc}", file=sys.stderr)
            return 1
    elif args.include_dir:
        print(bort_infer.include_dir())
    else:
        print(bort_infer.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
