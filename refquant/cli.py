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
    p = sub.add_parser(
        "demo",
        help="compress the bundled model (or PATH) under the ladder of presets: accuracy, "
        "bits per weight, bytes, SQNR, and a plot",
        description="Compress the bundled digits MLP (or the 2-D float tensors of the "
        "checkpoint PATH) with int8, fp8, the llama.cpp block types, int4, GPTQ, NF4, MXFP4 "
        "and 2:4 sparsity; print one table and plot accuracy (SQNR for PATH) against bits "
        "per weight.")
    p.add_argument("path", nargs="?", help="a checkpoint refquant.io reads (default: the "
                   "bundled model)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--plot", default="refquant-demo.png",
                   help="where the plot goes (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="write no plot")


def _run_demo(args) -> int:
    from .demo import checkpoint_rows, ladder_rows, plot_rows

    if args.path is None:
        rows, notes = ladder_rows(), []
        what = "the bundled digits MLP (6 weight matrices, " \
            f"{rows[0]['bytes'] // 4} weights; accuracy on 360 held-out digits)"
    else:
        rows, notes = checkpoint_rows(args.path)
        what = f"{args.path} ({rows[0]['bytes'] // 4} weights in 2-D float tensors)"
    plot = None if args.no_plot else args.plot
    if plot is not None:
        try:
            plot_rows(rows, plot, title=f"refquant demo: {what.split(' (')[0]}")
        except ImportError:
            notes.append("no plot: matplotlib is not installed (pip install matplotlib)")
            plot = None
        except OSError as e:
            raise RefquantError(f"--plot {plot!r}: cannot write the plot ({e})") from None
    if args.json:
        import json

        print(json.dumps({"rows": rows, "notes": notes, "plot": plot}, indent=1,
                         default=str).replace("Infinity", '"inf"'))
        return 0
    acc = "accuracy" in rows[0]
    print(f"refquant demo: {what}\n")
    head = (f"{'scheme':<16}{'family':<11}{'bits/w':>7}{'bytes':>9}{'SQNR dB':>9}"
            + (f"{'acc %':>8}" if acc else ""))
    print(head)
    print("-" * len(head))
    marks = {}
    for r in rows:
        mark = ""
        for note in r["notes"]:
            marks.setdefault(note, "*" * (len(marks) + 1))
            mark += marks[note]
        print(f"{r['scheme'] + mark:<16}{r['family']:<11}{r['bits_per_weight']:>7.3f}"
              f"{r['bytes']:>9d}{r['sqnr_db']:>9.2f}"
              + (f"{100 * r['accuracy']:>8.2f}" if acc else ""))
    print("\nbits/w: stored bits (codes, scales, zero points, indices) per weight; "
          "SQNR over all weights")
    if acc:
        print("gptq and sparsegpt minimise the layer's output error on x_calib, not the weight "
              "error: lower SQNR, higher accuracy")
    print("2:4: the kept half in float16 plus a 2-bit index each (9 bits per weight)")
    for note, mark in marks.items():
        print(f"{mark} {note}")
    for note in notes:
        print(note)
    if plot is not None:
        print(f"plot: {plot}")
    return 0


def _add_verify(sub):
    p = sub.add_parser(
        "verify",
        help="compare quantized results (.npy, .npz or any checkpoint) with expected ones and classify mismatches",
        description="Compare ACTUAL with EXPECTED (.npy, or .npz compared key by key). Integer "
        "arrays are compared as codes, float arrays as values. Exit status: 0 match, "
        "1 mismatch, 2 bad input.",
    )
    p.add_argument("actual", help="the results to check (.npy, .npz or any checkpoint)")
    p.add_argument("expected", help="the reference results (.npy, .npz or any checkpoint)")
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


def _add_vectors(sub):
    p = sub.add_parser("vectors", help="write golden vectors (npz + index.json) for other "
                       "implementations to test against")
    p.add_argument("outdir", help="folder to write (created if missing)")
    p.add_argument("--family", action="append", default=None,
                   help="family to write (repeatable; default all): integer, affine, tflite, "
                   "onnx, torch")
    p.add_argument("--check", action="store_true",
                   help="instead of writing, recompute the vectors in OUTDIR and report mismatches")


def _run_vectors(args) -> int:
    from .vectors import check_vectors, write_vectors

    if args.check:
        problems = check_vectors(args.outdir)
        for line in problems:
            print(line)
        print(f"{len(problems)} mismatch(es)")
        return 1 if problems else 0
    summary = write_vectors(args.outdir, args.family)
    for fam, n in summary["cases"].items():
        print(f"{fam:<10}{n:>4} case(s)")
    for fam, why in summary["skipped"].items():
        print(f"{fam:<10} skipped: {why}")
    print(f"index: {args.outdir}/index.json")
    return 0


def _add_identify(sub):
    p = sub.add_parser("identify", help="find which rounding / scale / clamp semantics "
                       "reproduce integer codes Q from inputs X (.npy / .npz files)")
    p.add_argument("x", help="file of the float inputs (.npy, .npz or any checkpoint)")
    p.add_argument("q", help="file of the integer codes to explain (.npy, .npz, ...)")
    p.add_argument("--scale", required=True,
                   help="a number, or a file of per-axis / per-block scales")
    p.add_argument("--zero-point", default="0", help="a number or a file (default 0)")
    p.add_argument("--key", help="the array to use when a file holds several")
    p.add_argument("--dtype", default=None, help="integer format (default: from Q's dtype)")
    p.add_argument("--axis", type=int, default=None)
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_identify(args) -> int:
    import os

    from .identify import identify
    from .testing import load_arrays

    def array(path, name):
        # X and Q are files as given (.npy, .npz or any checkpoint); one array each,
        # or the one --key names.
        arrays = load_arrays(path, name)
        if args.key is not None and "" not in arrays:
            if args.key not in arrays:
                raise RefquantError(f"{name} {path!r} has no array {args.key!r}; it has "
                                    f"{sorted(arrays)}")
            return arrays[args.key]
        if len(arrays) != 1:
            raise RefquantError(f"{name} {path!r} holds {len(arrays)} arrays "
                                f"({', '.join(sorted(arrays))}): pass --key to choose one")
        return next(iter(arrays.values()))

    def param(v, name):
        if os.path.isfile(v):
            return array(v, name)
        try:
            return float(v) if name == "scale" else int(v)
        except ValueError:
            raise RefquantError(f"{name} must be a number or an existing file (.npy, .npz), "
                                f"got {v!r}") from None

    rep = identify(array(args.x, "X"), array(args.q, "Q"), param(args.scale, "scale"),
                   param(args.zero_point, "zero_point"), dtype=args.dtype, axis=args.axis,
                   block_size=args.block_size)
    if args.json:
        import json

        print(json.dumps(rep.to_dict(), indent=1))
    else:
        print(rep)
    return 0 if rep.matches else 1


def _add_inspect(sub):
    p = sub.add_parser(
        "inspect",
        help="list a checkpoint's tensors (name, dtype, shape, bytes, quantization scheme) "
        "without its framework",
        description="Open PATH lazily (format detected from its content: safetensors, PyTorch "
        ".pt/.bin, npy/npz, GGUF, ONNX, Keras, Flax msgpack, TensorFlow, sharded indexes, Hugging "
        "Face folders) and print its tensors, totals and metadata. Reads headers only.",
    )
    p.add_argument("path", help="checkpoint file, index .json or model folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_inspect(args) -> int:
    import math

    from . import io as rio

    with rio.open(args.path) as ck:
        schemes = rio.quant_schemes(ck)
        # shape: of the numbers (block-quantized tensors: of what the blocks decode to)
        # dtype: one vocabulary for every format (NumPy / ml_dtypes names; a block-quantized
        # tensor shows its stored type, q4_0); stored_dtype: the file's own name for it
        # (F32, torch.float32, |i1, Q4_0).
        rows = [{"name": n, "dtype": i.stored_dtype.lower() if i.logical_shape else i.dtype.name,
                 "stored_dtype": i.stored_dtype,
                 "shape": list(i.logical_shape or i.shape), "bytes": i.nbytes, "scheme": schemes[n]}
                for n, i in ck.infos.items()]
        meta = dict(ck.metadata)
        fmt = ck.format
    total = sum(r["bytes"] for r in rows)
    numel = sum(math.prod(r["shape"]) for r in rows)
    if args.json:
        import json

        print(json.dumps({"path": args.path, "format": fmt, "tensors": rows, "total_bytes": total,
                          "total_elements": numel, "metadata": meta}, indent=1, default=str))
        return 0
    w = max([len(r["name"]) for r in rows] + [4])
    print(f"{args.path}: {fmt}, {len(rows)} tensors, {numel} elements, {total} bytes\n")
    head = f"{'name':<{w}}  {'dtype':<16}{'shape':<20}{'bytes':>12}  scheme"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"]) or "scalar"
        print(f"{r['name']:<{w}}  {r['dtype']:<16}{shape:<20}{r['bytes']:>12}  {r['scheme'] or '-'}")
    print("-" * len(head))
    print(f"{'total':<{w}}  {'':<16}{'':<20}{total:>12}")
    if meta:
        print("\nmetadata:")
        for k, v in meta.items():
            text = str(v)
            print(f"  {k}: {text[:100] + '...' if len(text) > 100 else text}")
    return 0


def _add_compress(sub):
    from .compress.hf import HF_SCHEMES
    from .compress.recipe import LLAMA_CPP_PRESETS, PRESETS

    p = sub.add_parser(
        "compress", help="compress every tensor of a checkpoint (streaming) and report the cost",
        description="Read IN (any format refquant reads), quantize its weights by --scheme or "
        "--recipe, and write OUT (.safetensors: refquant's self-describing layout; .gguf: "
        "llama.cpp's types) one tensor at a time. Norms, biases, embeddings and the output "
        "head are kept unless a recipe rule names them. Prints one line per tensor and the "
        f"totals. Presets: {', '.join(PRESETS)}; llama-quantize's mixes (the type per tensor "
        f"that llama.cpp chooses, and for GGUF output also q8_0 / q4_0 / q6_k): "
        f"{', '.join(LLAMA_CPP_PRESETS)}; 2:4 (magnitude pruning; 2:4-sparse stores the two "
        "kept of every four and a bitmask); mixed:B (a mixed-precision "
        "plan at B bits per weight; mixed:B:S1,S2,... chooses among the schemes named); "
        "int{b}-g{G}; hqq-int{b}-g{G} (HQQ); or any format name "
        "of the registry. Hugging Face "
        f"folders (-o OUTDIR; config.json and tokenizer files copied): {', '.join(HF_SCHEMES)}.",
    )
    p.add_argument("input", help="checkpoint file, index .json or model folder")
    p.add_argument("-o", "--output", required=True,
                   help="OUT.safetensors, OUT.gguf, or a folder / FOLDER/model.safetensors."
                   "index.json for sharded output (one shard per input shard, the index last)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--scheme", help="a preset or format name (int8, int4-g128, fp8, q4_0, ...)")
    g.add_argument("--recipe", help="a TOML recipe of rules by name pattern")
    p.add_argument("--report", action="append", default=[],
                   help="also write the report to FILE.json or FILE.csv (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--nonfinite", choices=("raise", "keep"), default="raise",
                   help="a tensor with NaN/Inf: refuse it (default) or keep it unquantized")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="sharded output: continue an interrupted run, keeping its finished shards")
    p.add_argument("--scheduler", default=None,
                   help="sharded output: 'local' (default), 'dask' (a Dask LocalCluster) or "
                   "tcp://HOST:PORT (an existing Dask scheduler); needs refquant[dask]")
    p.add_argument("--workers", type=int, default=None,
                   help="local runs: tensors (single file) or shards (sharded output) quantized "
                   "in parallel, identical bytes (default: every CPU this process may use); "
                   "--scheduler dask: workers of the LocalCluster (default 2)")
    p.add_argument("--calibration", default=None, metavar="ACTS.npz",
                   help="per-layer calibration inputs (an .npz keyed by tensor name) for "
                   "gptq / awq / wanda / sparsegpt rules, gptq-int4-g128, awq-int4-g128 and "
                   "mixed:B")
    p.add_argument("--save-plan", default=None, metavar="PLAN.toml",
                   help="--scheme mixed:B: also save the plan (.toml: a recipe for --recipe; "
                   ".json)")
    p.add_argument("--imatrix", default=None, metavar="FILE",
                   help="llama-quantize's --imatrix: an importance matrix (GGUF or .dat) for "
                   "the tensors quantized to ggml types (overrides the recipe's imatrix)")


def _write_reports(rep, paths):
    import os

    for path in paths:
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".json", ".csv"):
            raise RefquantError(f"--report {path!r}: name it .json or .csv")
        from .io._common import atomic_write

        text = rep.to_json() if ext == ".json" else rep.to_csv()
        atomic_write(path, lambda f, t=text: f.write(t.encode("utf-8")), overwrite=True)


def _run_compress(args) -> int:
    from .compress.pipeline import compress, tqdm_progress

    for path in args.report:  # refuse a bad report name before any work
        if not path.lower().endswith((".json", ".csv")):
            raise RefquantError(f"--report {path!r}: name it .json or .csv")
    if args.save_plan and not (args.scheme or "").startswith("mixed:"):
        raise RefquantError("--save-plan saves the plan of --scheme mixed:B")
    if args.save_plan and not args.save_plan.endswith((".toml", ".json")):
        raise RefquantError(f"--save-plan {args.save_plan!r}: name it .toml or .json")
    rep = compress(args.input, args.output, scheme=args.scheme, recipe=args.recipe,
                   overwrite=args.overwrite, nonfinite=args.nonfinite,
                   progress=None if args.quiet else tqdm_progress(), resume=args.resume,
                   scheduler=args.scheduler,
                   n_workers=args.workers if args.scheduler == "dask" else None,
                   workers=None if args.scheduler == "dask" else args.workers,
                   calibration=args.calibration, imatrix=args.imatrix)
    _write_reports(rep, args.report)
    plan = getattr(rep, "plan", None)
    if plan is not None and args.save_plan:
        plan.save(args.save_plan)
    if plan is not None and not args.json and not args.quiet:
        print(plan.table())
    if args.json:
        print(rep.to_json())
    elif not args.quiet:
        print(rep.table())
        print(f"wrote {args.output}")
    return 0


def _add_decompress(sub):
    p = sub.add_parser("decompress", help="restore float tensors from a compressed checkpoint",
                       description="Dequantize every tensor of IN (refquant's compressed "
                       "safetensors, or any GGUF) and write them as float32 safetensors.")
    p.add_argument("input", help="a refquant-compressed .safetensors or a .gguf")
    p.add_argument("-o", "--output", required=True, help="OUT.safetensors")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or float64")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _run_decompress(args) -> int:
    from .compress.pipeline import decompress

    n = decompress(args.input, args.output, overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote {n} tensors to {args.output}")
    return 0


def _add_diff(sub):
    p = sub.add_parser(
        "diff", help="compare a quantized checkpoint with its original, tensor by tensor",
        description="Match the float tensors of ORIGINAL to their counterparts in QUANTIZED "
        "(by name; Hugging Face names to GGUF names through gguf-py's map), dequantize, and "
        "print per tensor the scheme, SQNR in dB, max absolute error, the error in "
        "quantization steps where the scheme has steps, and bytes; worst tensors first. "
        "One tensor pair in memory at a time.",
    )
    p.add_argument("original", help="the float checkpoint")
    p.add_argument("quantized", help="the quantized checkpoint (refquant compress output, GGUF, ...)")
    p.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    p.add_argument("--plot", help="also save SQNR by tensor to this image file")


def _run_diff(args) -> int:
    from .compress.diff import compare_checkpoints, diff_json, diff_plot, diff_table

    rows = compare_checkpoints(args.original, args.quantized)
    print(diff_table(rows))
    if args.json_out:
        from .io._common import atomic_write

        text = diff_json(rows)
        atomic_write(args.json_out, lambda f: f.write(text.encode("utf-8")), overwrite=True)
    if args.plot:
        diff_plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


COMMANDS = {
    "diff": (_add_diff, _run_diff),
    "compress": (_add_compress, _run_compress),
    "decompress": (_add_decompress, _run_decompress),
    "demo": (_add_demo, _run_demo),
    "verify": (_add_verify, _run_verify),
    "vectors": (_add_vectors, _run_vectors),
    "identify": (_add_identify, _run_identify),
    "inspect": (_add_inspect, _run_inspect),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="refquant",
        description="Reference arithmetic of model compression: quantize, prune, verify.",
    )
    parser.add_argument("--version", action="version", version=f"refquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def tune_allocator() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse: what the ``refquant`` command does
    before it runs (not the library, whose callers own their process).

    A compression allocates and frees a few arrays the size of each tensor; by default glibc
    hands blocks above its (dynamic) mmap threshold back to the kernel and trims the heap,
    so every tensor's arrays are fresh pages, faulted in and zeroed again (about 16 ms of a
    42 ms int8 run of a 30 MB checkpoint, bench_compress.py). Blocks up to 32 MiB (glibc's
    limit) now come from the heap, which is trimmed only above 1 GiB free and grows by
    64 MiB at a time. Peak memory is unchanged; memory is returned when the process ends.
    Returns whether the settings took (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    return all(mallopt(k, v) == 1 for k, v in ((m_mmap_threshold, 32 << 20),
                                                (m_trim_threshold, 1 << 30),
                                                (m_top_pad, 64 << 20)))


def console_main() -> int:
    """The ``refquant`` command: :func:`tune_allocator`, then :func:`main`."""
    tune_allocator()
    return main()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `refquant`: what it can do, not an error
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][1](args)
    except RefquantError as e:
        print(f"refquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `refquant inspect big.gguf | head`: the reader left, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(console_main())
