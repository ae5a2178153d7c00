"""``refquant compress --scheme gptq-int4-g128 ...``: Hugging Face folders other tools load.

Schemes (``HF_SCHEMES``) and what they write in ``OUTDIR`` (``model.safetensors`` +
``config.json`` with ``quantization_config``; the input folder's ``config.json``
keys and its other non-weight files, tokenizer files included, copied)::

    gptq-int4-g128   GPTQ v1 (checkpoint_format "gptq"), 4 bits, group 128, float16 scales
    awq-int4-g128    AutoAWQ GEMM, 4 bits, group 128, zero point, float16 scales
    ct-int4-g128     compressed-tensors pack-quantized, int4 asymmetric, group 128,
                     float32 scales
    ct-int8          compressed-tensors int-quantized, int8 symmetric per channel,
                     float32 scales (N, 1)
    hf-fp8-block     quant_method fp8, weight_block_size [128, 128] (DeepSeek-V3 /
                     transformers FineGrainedFP8), e4m3 codes, float32 weight_scale_inv
    nvfp4            compressed-tensors nvfp4-pack-quantized (llm-compressor's NVFP4A16):
                     e2m1 codes, e4m3 scales per 16, float32 weight_global_scale, the
                     arithmetic of compressed-tensors 0.20 (refquant.formats.nvfp4);
                     dequantizes (in bfloat16, as its decompressor) to refquant's nvfp4

The int4 codes of all three int4 layouts are those of refquant's ``int4-g128``
scheme (:mod:`refquant.compress.schemes`): round to nearest even with min-max
asymmetric uint4 qparams per group of 128 along the input
(:func:`refquant.choose_qparams`, the arithmetic of AutoGPTQ's RTN with
``sym=False``); ``ct-int8`` those of refquant's ``int8`` (symmetric ``amax / 127``
per output channel); ``hf-fp8-block`` those of
:func:`refquant.io.layouts.fp8.fp8_block_tensors` (= refquant's ``fp8-block``).
GPTQ / AWQ store the scale in float16 as their kernels read it, so their weights
are ``f16((q - z) * f16(scale))``; the compressed-tensors and fp8 outputs
dequantize to refquant's schemes exactly.

Tensors quantized: 2-D ``*.weight`` tensors the preset defaults do not keep
(norms, biases, embeddings and the output head are kept, see
:mod:`refquant.compress.recipe`) and whose shape the layout stores (groups of 128
dividing the input width; GPTQ / AWQ: output width a multiple of 8); every other
tensor is copied as it is, and its module is listed in the config's ``ignore`` /
``modules_to_not_convert``.

Memory: the input is read one tensor at a time, but the layout writers
(``gptq_tensors`` ..., :func:`refquant.io.save` with ``layout=``) take all of a
folder's tensors at once, so the *compressed* tensors of the model (and the kept
ones) are held until the one ``model.safetensors`` is written. Output goes to a
temporary folder beside ``OUTDIR`` renamed into place at the end.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from .recipe import Recipe
from .report import CompressReport, TensorRow
from .schemes import KEEP, get_scheme

__all__ = ["HF_SCHEMES", "compress_hf"]

#: scheme name -> (refquant scheme giving the codes, layout of refquant.io.save)
HF_SCHEMES = {
    "gptq-int4-g128": ("int4-g128", "gptq"),
    "awq-int4-g128": ("int4-g128", "awq"),
    "ct-int4-g128": ("int4-g128", "pack-quantized"),
    "ct-int8": ("int8", "int-quantized"),
    "hf-fp8-block": ("fp8-block", "fp8-block"),
    "nvfp4": ("nvfp4", "nvfp4-pack-quantized"),
}

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz", ".h5", ".msgpack")
_GROUP = 128


def _unsupported(scheme: str, shape) -> str | None:
    if len(shape) != 2:
        return f"{scheme} stores 2-D weights"
    n, k = shape
    if scheme == "nvfp4":
        return None if k % 16 == 0 else f"in_features {k} is not a multiple of the NVFP4 block of 16"
    if scheme != "ct-int8" and scheme != "hf-fp8-block" and k % _GROUP:
        return f"in_features {k} is not a multiple of the group size {_GROUP}"
    if scheme in ("gptq-int4-g128", "awq-int4-g128") and n % 8:
        return f"out_features {n} is not a multiple of 8 (4-bit codes packed 8 to an int32)"
    return None


def _int4_codes(sch, w):
    """(codes uint (n, k), scale float32 (n, G), zero uint (n, G)) of refquant's int4-g128."""
    parts = sch.quantize(w)
    q = sch._codes(parts, w.shape)
    return q, parts["_scale"], parts["_zero_point"].astype(np.int64)


def _f16_dequant(q, scale16, zero, shape):
    """GPTQ / AWQ weights: ``f16((q - z) * s)`` with ``s`` the stored float16 scale."""
    k = shape[1]
    cols = np.arange(k) // _GROUP
    prod = (q - zero[:, cols]).astype(np.float64) * scale16[:, cols].astype(np.float64)
    return prod.astype(np.float16).astype(np.float32)


def _calibrated_int4(scheme, sch, name, w, calib):
    """(codes, scale, zero) of GPTQ (gptq-int4-g128) or AWQ's clipping (awq-int4-g128)."""
    from .methods import Treatment, apply

    t = Treatment("gptq" if scheme.startswith("gptq") else "awq", None, "magnitude",
                  f"--scheme {scheme}")
    parts = apply(sch, w, t, calib, name)
    return sch._codes(parts, w.shape), parts["_scale"], parts["_zero_point"].astype(np.int64)


def _quantize_one(scheme: str, base: str, w: np.ndarray, calib=None):
    """The layout's raw tensors of one weight and the weights they dequantize to."""
    from ..io.layouts.ctensors import ct_tensors
    from ..io.layouts.fp8 import fp8_block_tensors
    from ..io.layouts.gptq import awq_tensors, gptq_tensors

    sname, _ = HF_SCHEMES[scheme]
    sch = get_scheme(sname)
    if scheme == "nvfp4":
        from ..formats.nvfp4 import dequantize_nvfp4, quantize_nvfp4
        from ..io.layouts.ctensors import ct_fp_tensors

        c, s, g = quantize_nvfp4(w)
        return (ct_fp_tensors(base, c, s, "nvfp4-pack-quantized", g),
                dequantize_nvfp4(c, s, g, dtype="bfloat16"))
    if scheme == "hf-fp8-block":
        raw = fp8_block_tensors(base, w)
        w_hat = sch.dequantize({"": raw[base + ".weight"], "_scale": raw[base + ".weight_scale_inv"]},
                               w.shape)
        return raw, w_hat
    if scheme == "ct-int8":
        parts = sch.quantize(w)
        raw = ct_tensors(base, parts[""], parts["_scale"].reshape(-1, 1), "int-quantized", 8,
                         strategy="channel")
        return raw, sch.dequantize(parts, w.shape)
    if calib is not None and scheme in ("gptq-int4-g128", "awq-int4-g128"):
        q, scale, zero = _calibrated_int4(scheme, sch, base + ".weight", w, calib)
    else:
        q, scale, zero = _int4_codes(sch, w)
    if scheme == "ct-int4-g128":
        raw = ct_tensors(base, q - 8, scale, "pack-quantized", 4, zero=zero - 8, strategy="group")
        return raw, sch.dequantize(sch.quantize(w), w.shape)
    with np.errstate(over="ignore"):
        s16 = scale.astype(np.float16)
    if not np.isfinite(s16).all():
        raise RefquantError(f"tensor {base + '.weight'!r}: a group's scale "
                            f"{float(scale.max())!r} overflows the float16 scale of {scheme}")
    if scheme == "gptq-int4-g128":
        if (zero == 0).any():
            g = tuple(int(i) for i in np.argwhere(zero == 0)[0])
            raise RefquantError(f"tensor {base + '.weight'!r}: group {g} has zero point 0 (no "
                                "negative weight), which GPTQ's v1 format cannot store (it "
                                "stores zero - 1); use awq-int4-g128 or ct-int4-g128")
        raw = gptq_tensors(base, q, s16, zero, 4)
    else:
        raw = awq_tensors(base, q, s16, zero)
    return raw, _f16_dequant(q, s16, zero, w.shape)


def _config_and_files(src: Path):
    """(config.json of the input folder or {}, the other non-weight files to copy)."""
    folder = src if src.is_dir() else src.parent if src.name.endswith(".index.json") else None
    if folder is None:
        return {}, []
    cfg = {}
    cj = folder / "config.json"
    if cj.is_file():
        try:
            cfg = json.loads(cj.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RefquantError(f"{os.fspath(cj)}: not readable JSON: {e}") from None
        cfg.pop("quantization_config", None)
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != "config.json"
             and not p.name.endswith(_WEIGHT_SUFFIXES) and not p.name.endswith(".index.json")]
    return cfg, files


def compress_hf(src, outdir, scheme: str, *, overwrite=False, progress=None,
                calibration=None) -> CompressReport:
    """Write ``outdir``, a Hugging Face folder in ``scheme``'s layout (see the module docstring).

    Parameters
    ----------
    src : path
        Any checkpoint :func:`refquant.io.open` reads; from a model folder (or its
        index) ``config.json`` and the non-weight files are carried over.
    outdir : path
        The folder to write; an existing non-empty folder is refused unless
        ``overwrite``.
    scheme : str
        One of :data:`HF_SCHEMES`.
    calibration : path, optional
        Per-layer inputs (``.npz`` keyed by tensor or module name,
        :mod:`refquant.compress.methods`). ``gptq-int4-g128`` then runs GPTQ
        (:func:`refquant.quant.gptq.gptq`: asymmetric, group 128, static groups,
        damping 0.01) and ``awq-int4-g128`` AWQ's clipping search before rounding;
        every quantized weight needs its inputs. Without it both are round to
        nearest, with a ``UserWarning`` saying so (the layouts are still valid
        GPTQ / AWQ checkpoints, only the codes are not calibrated).

    Notes
    -----
    **Formula**: see the module docstring (refquant's own qparams, round to nearest
    even; the codes written by the layout writers of :mod:`refquant.io.layouts`).

    **Reference**: AutoGPTQ ``QuantLinear.pack`` (v1 GPTQ), AutoAWQ
    ``WQLinear_GEMM.from_linear``, compressed-tensors 0.20
    ``PackedQuantizationCompressor``, transformers ``FineGrainedFP8Config``.
    """
    from .. import io as rio
    from .pipeline import _finite_or_refuse

    if scheme not in HF_SCHEMES:
        raise RefquantError(f"scheme {scheme!r} is not a Hugging Face layout scheme; expected one "
                            f"of {', '.join(HF_SCHEMES)}")
    src_p, out = Path(src), Path(outdir)
    if out.exists():
        if not out.is_dir():
            raise RefquantError(f"output {os.fspath(out)!r} exists and is not a folder")
        if src_p.exists() and (out.resolve() == src_p.resolve()
                               or out.resolve() in src_p.resolve().parents):
            raise RefquantError(f"output {os.fspath(out)!r} is the input folder; refquant never "
                                "overwrites its input")
        if any(out.iterdir()) and not overwrite:
            raise RefquantError(f"output folder {os.fspath(out)!r} is not empty; pass "
                                "overwrite=True (--overwrite)")
    sname, layout = HF_SCHEMES[scheme]
    calib = None
    if calibration is not None:
        if scheme not in ("gptq-int4-g128", "awq-int4-g128"):
            raise RefquantError(f"scheme {scheme!r} is round to nearest and takes no "
                                "calibration; gptq-int4-g128 and awq-int4-g128 do")
        from .methods import Calibration

        calib = Calibration(calibration)
    elif scheme in ("gptq-int4-g128", "awq-int4-g128"):
        import warnings

        warnings.warn(f"{scheme} without calibration data: writing round-to-nearest codes in "
                      f"the {layout.upper()} layout; pass calibration= (--calibration "
                      "acts.npz) to run " + ("GPTQ" if layout == "gptq" else "AWQ's clipping"),
                      UserWarning, stacklevel=3)
    method = ("GPTQ" if layout == "gptq" else "AWQ clip") if calib else "round to nearest"
    rec = Recipe(scheme=sname, source=f"--scheme {scheme} ({method})")
    cfg, files = _config_and_files(src_p)
    report = CompressReport(os.fspath(src), os.fspath(outdir), rec.source)
    weights, kept_modules = {}, []
    with rio.open(src) as ck:
        names = list(ck.infos)
        for i, name in enumerate(names):
            info = ck.info(name)
            shape = tuple(info.logical_shape or info.shape)
            dec, why = rec.decide(name, info.dtype, shape)
            if info.scheme is not None:
                dec, why = KEEP, f"already quantized ({info.scheme})"
            if dec != KEEP and not name.endswith(".weight"):
                dec, why = KEEP, "not a module's .weight"
            if dec != KEEP:
                bad = _unsupported(scheme, shape)
                if bad is not None:
                    dec, why = KEEP, f"kept: {bad}"
            numel = math.prod(shape)
            nbytes = int(info.nbytes)
            if dec == KEEP:
                weights[name] = ck[name]
                if len(shape) == 2 and name.endswith(".weight"):
                    kept_modules.append(name[: -len(".weight")])
                report.rows.append(TensorRow(name, list(shape), info.dtype.name, KEEP, why,
                                             8 * nbytes / numel if numel else 0.0, nbytes,
                                             nbytes, exact=True))
            else:
                w = np.asarray(ck[name], np.float32)
                _finite_or_refuse(name, w, "raise")
                raw, w_hat = _quantize_one(scheme, name[: -len(".weight")], w, calib)
                weights.update(raw)
                sq, exact = _sqnr(w, w_hat)
                out_b = sum(np.asarray(a).nbytes for a in raw.values())
                report.rows.append(TensorRow(name, list(shape), info.dtype.name, scheme, why,
                                             8 * out_b / numel, nbytes, out_b, sq, None,
                                             exact=exact))
            if progress is not None:
                progress(i + 1, len(names), name)
    opts = {}
    if layout == "gptq":
        opts = {"bits": 4, "group_size": _GROUP, "sym": False}
    elif layout == "awq":
        opts = {"group_size": _GROUP}
    elif layout == "pack-quantized":
        opts = {"bits": 4, "symmetric": False, "strategy": "group", "group_size": _GROUP,
                "ignore": ["lm_head", *kept_modules]}
    elif layout == "nvfp4-pack-quantized":
        opts = {"ignore": ["lm_head", *kept_modules]}
    elif layout == "int-quantized":
        opts = {"bits": 8, "symmetric": True, "strategy": "channel",
                "ignore": ["lm_head", *kept_modules]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        rio.save(weights, tmp, layout=layout, config=cfg, overwrite=True, **opts)
        if layout in ("awq", "fp8-block") and kept_modules:
            cj = tmp / "config.json"
            c = json.loads(cj.read_text(encoding="utf-8"))
            c["quantization_config"]["modules_to_not_convert"] = kept_modules
            cj.write_text(json.dumps(c, indent=2), encoding="utf-8")
        for f in files:
            shutil.copy2(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RefquantError(f"cannot write {os.fspath(out)!r}: {e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _sqnr(w, w_hat):
    """(SQNR in dB or None when exact or undefined, exact)."""
    w64 = np.asarray(w, np.float64).reshape(-1)
    err = w64 - np.asarray(w_hat, np.float64).reshape(-1)
    noise = float(np.einsum("i,i->", err, err))
    if noise == 0:
        return None, True
    signal = float(np.einsum("i,i->", w64, w64))
    return (10 * math.log10(signal / noise) if signal > 0 else None), False
