#!/usr/bin/env python
"""Write docs/config.md from the pydantic schema in src/fxbench/config.py.

Usage:  python scripts/gen_config_docs.py            # (re)write docs/config.md
        python scripts/gen_config_docs.py --check    # exit 1 if docs/config.md is stale

Run it after any change to fxbench.config; tests/test_config_docs.py fails until you do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: docs/config.md)")
    args = parser.parse_args(argv)

    from fxbench.docs_gen import config_doc_path, render_config_reference
    from fxbench.io import write_text_atomic

    out = args.out or config_doc_path()
    text = render_config_reference()
    current = out.read_text(encoding="utf-8") if out.is_file() else None
    if args.check:
        if current != text:
            print(f"{out} is stale: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    if current == text:
        print(f"{out} already up to date")
        return 0
    write_text_atomic(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
