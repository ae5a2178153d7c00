"""The ``refquant`` command: parses arguments and calls the library.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments,
``_run_<name>(args)`` calls the library and prints. The table ``COMMANDS`` lists
them in the order ``refquant --help`` shows.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import RefquantError

__all__ = ["main"]


def _add_demo(sub):
    p = sub.add_parser("demo", help="quantize the bundled model's weights with every scheme")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def _run_demo(args) -> int:
    from .demo import integer_scheme_rows

    rows = integer_scheme_rows()
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    print("refquant demo: the bundled digits MLP (6 weight matrices, "
          f"{rows[0]['bytes'] // 4} weights), every integer scheme\n")
    head = f"{'scheme':<14}{'bits':>5}  {'kind':<10}{'SQNR dB':>9}{'max err':>9}{'bytes':>9}{'acc %':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        kind = "-" if r["symmetric"] is None else ("symmetric" if r["symmetric"] else "affine")
        print(f"{r['scheme']:<14}{r['bits']:>5}  {kind:<10}{r['sqnr_db']:>9.2f}"
              f"{r['max_err_steps']:>9.3f}{r['bytes']:>9d}{100 * r['accuracy']:>8.2f}")
    print("\nmax err: largest |w - dequantize(quantize(w))| in quantization steps (<= 0.5 when "
          "nothing clips)")
    return 0


COMMANDS = {
    "demo": (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refquant",
        description="Reference arithmetic of model compression: quantize, prune, verify.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except RefquantError as e:
        print(f"refquant {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
