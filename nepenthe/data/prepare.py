"""Prepare a data root once, offline first: ``python -m nepenthe.data.prepare fashion_mnist --root data``."""

from __future__ import annotations

import argparse
import sys

from ..errors import DataError
from .fashion_mnist import DEBIAN_DIR, RAW_FILES, prepare_fashion_mnist


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=["fashion_mnist"])
    parser.add_argument("--root", default="data")
    parser.add_argument("--source-dir", default=str(DEBIAN_DIR), help="where Debian's gzip files lie")
    parser.add_argument("--download", action="store_true", help="fall back to torchvision's download")
    args = parser.parse_args(argv)
    try:
        raw = prepare_fashion_mnist(args.root, args.source_dir, args.download)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Fashion-MNIST ready in {raw} ({', '.join(RAW_FILES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
