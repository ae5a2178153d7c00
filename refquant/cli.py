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


def _add_verify(sub):
    p = sub.add_parser(
        "verify",
        help="compare quantized results (.npy / .npz) with expected ones and classify mismatches",
        description="Compare ACTUAL with EXPECTED (.npy, or .npz compared key by key). Integer "
        "arrays are compared as codes, float arrays as values. Exit status: 0 match, "
        "1 mismatch, 2 bad input.",
    )
    p.add_argument("actual", help="the results to check (.npy or .npz)")
    p.add_argument("expected", help="the reference results (.npy or .npz)")
    p.add_argument("--scale", help="scale: a number or a .npy file (enables step counting)")
    p.add_argument("--zero-point", help="zero point: an integer or a .npy file")
    p.add_argument("--axis", type=int, help="axis of per-axis or blocked parameters")
    p.add_argument("--block-size", type=int, help="block size along --axis")
    p.add_argument("--x", help="the quantized input (.npy or .npz): recognises exact ties")
    p.add_argument("--max-step-diff", type=int, default=0, help="accepted code difference")
    p.add_argument("--qmin", type=int, help="lowest code (default: the dtype's)")
    p.add_argument("--qmax", type=int, help="highest code (default: the dtype's)")
    p.add_argument("--rtol", type=float, default=1e-6, help="float arrays: relative tolerance")
    p.add_argument("--atol", type=float, default=0.0, help="float arrays: absolute tolerance")
    p.add_argument("--max-ulp", type=int, help="float arrays: accepted float32 ULP distance")
    p.add_argument("--key", help="compare only this array of the .npz file(s)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")


def _run_verify(args) -> int:
    from .testing import verify_files

    reports = verify_files(
        args.actual, args.expected, scale=args.scale, zero_point=args.zero_point,
        axis=args.axis, block_size=args.block_size, x=args.x,
        max_step_diff=args.max_step_diff, qmin=args.qmin, qmax=args.qmax, rtol=args.rtol,
        atol=args.atol, max_ulp=args.max_ulp, key=args.key,
    )
    if args.json:
        import json

        print(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=1, default=str))
    else:
        for key, rep in reports.items():
            name = key or args.actual
            if rep.ok:
                print(f"{name}: OK ({rep.n_elements} elements equal)")
            else:
                print(f"{name}: MISMATCH{rep.format()}")
    bad = [k for k, r in reports.items() if not r.ok]
    if not args.json:
        print(f"\nverify: {len(reports) - len(bad)} of {len(reports)} array(s) match")
    return 1 if bad else 0


COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "verify": (_add_verify, _run_verify),
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
