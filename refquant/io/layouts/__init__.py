"""Quantized checkpoint layouts: GPTQ, AWQ, FP8, compressed-tensors, MLX, bitsandbytes.

``refquant.io.open(folder)`` returns a checkpoint whose raw tensors are the stored
parts (``qweight``, ``qzeros``, ``scales`` ...); its :meth:`logical_names`,
:meth:`scheme` and :meth:`dequantize` methods go through :func:`layout_of`, which
names the layout from ``config.json``'s ``quantization_config`` (or MLX's
``quantization``) where there is one, and from the tensors' names, dtypes and
shapes where there is not. A layout it cannot name for certain is reported, not
guessed.

=====================  =====================================  ==============================
layout                 detected by                            module
=====================  =====================================  ==============================
``gptq``, ``gptq_v2``  ``quant_method: gptq``; ``.qweight``   :mod:`.gptq`
                       with ``.g_idx``
``awq``, ``awq-gemv``  ``quant_method: awq`` (``version``);   :mod:`.gptq`
                       ``.qweight`` (K, N/8) with ``.scales``
                       (G, N); GEMV: (N, K/8), (N, 8 zw)
``fp8``, ``fp8-block`` ``quant_method: fp8``; e4m3 weight     :mod:`.fp8`
                       with ``weight_scale`` / ``_scale_inv``
compressed-tensors     ``quant_method: compressed-tensors``;  :mod:`.ctensors`
                       ``weight_packed`` + ``weight_shape``
compressed-tensors     ``sparsity_config``; ``.bitmask`` +    :mod:`.ctsparse`
sparse                 ``.compressed`` + ``.shape``
``modelopt-nvfp4``     ``quant_method: modelopt``; uint8      :mod:`.modelopt`
                       ``.weight`` + ``.weight_scale_2``
``mlx``                ``quantization`` in config.json        :mod:`.mlx`
bitsandbytes nf4/fp4   ``quant_method: bitsandbytes``; the    :mod:`.bnb`
and int8               ``quant_state.bitsandbytes__*`` JSON,
                       ``.SCB``
=====================  =====================================  ==============================
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..._errors import RefquantError
from ._base import Entry, LayoutView, Scheme, pack_bitstream, unpack_bitstream

__all__ = [
    "Scheme",
    "LayoutView",
    "layout_of",
    "detect_layout",
    "save_layout",
    "LAYOUTS",
    "pack_bitstream",
    "unpack_bitstream",
]

LAYOUTS = ("gptq", "gptq_v2", "awq", "awq-gemv", "fp8", "fp8-block", "pack-quantized", "int-quantized",
           "float-quantized", "naive-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized",
           "mxfp6-pack-quantized", "mxfp8-quantized", "sparse-bitmask", "sparse-24-bitmask",
           "modelopt-nvfp4", "mlx",
           "bitsandbytes-nf4", "bitsandbytes-fp4", "bitsandbytes-int8")


class PlainView(LayoutView):
    """No quantized layout: every tensor is its own logical weight."""

    name = "none"


class GGMLView(LayoutView):
    """A GGUF file: every tensor is a logical weight; ggml block types get a :class:`Scheme`.

    ``bits`` is the ggml type's bits per weight, block scales included (Q4_0: 4.5),
    ``group_size`` its block size; decoding is :meth:`GGUFCheckpoint.dequantize`
    (:mod:`refquant.formats.ggml`, bit-exact with ``dequantize_row_<type>``).
    """

    name = "ggml"

    def __init__(self, ck, config):
        super().__init__(ck, config)
        from ..gguf import ggml_type_table

        sizes = {name: (bs, ts) for name, bs, ts in ggml_type_table().values()}
        for name in ck:
            info = ck.info(name)
            if info.scheme is None:
                continue
            bs, ts = sizes[info.stored_dtype]
            self.entries[name] = Entry(Scheme(
                format=info.scheme, bits=ts * 8 / bs, group_size=bs, symmetric=False,
                act_order=False, packing=f"ggml blocks of {bs} in {ts} bytes", strategy="block",
                shape=tuple(info.logical_shape), parts=(name,)), {"data": name})

    def _dequantize(self, name, entry):
        return self.ck.dequantize(name)


def _config_of(ck):
    cfg = ck.metadata.get("config") if hasattr(ck, "metadata") else None
    return cfg if isinstance(cfg, dict) else None


def detect_layout(ck) -> tuple[str, dict]:
    """``(layout, quantization config)`` of an open checkpoint; ``("none", {})`` if plain.

    Notes
    -----
    **Formula**: the config decides where it names a method (``quant_method``
    of ``quantization_config``; MLX's ``quantization``); otherwise the tensors:
    ``.qweight`` with ``.g_idx`` -> gptq (v1, the serialized default);
    ``.qweight`` (K, N/8) with ``.scales`` (G, N) and no ``g_idx`` -> awq;
    uint8 ``.weight`` with ``.weight_scale_2`` -> ModelOpt NVFP4;
    ``.bitmask`` with ``.compressed`` and ``.shape`` -> sparse-bitmask (with
    ``.row_offsets``) or sparse-24-bitmask; ``.weight_packed`` -> pack-quantized (uint8 ``weight_packed``: nvfp4 with a
    ``weight_global_scale``, else mxfp4 / mxfp6 by the uint8 scale's width); e4m3
    ``.weight`` with a uint8 ``.weight_scale`` -> mxfp8-quantized; e4m3 ``.weight`` with
    ``.weight_scale_inv`` -> fp8-block (128x128 tiles, checked against the
    shapes); e4m3 ``.weight`` with a one-element ``.weight_scale`` -> fp8.
    Everything else that looks quantized (uint32 weights with ``scales`` and
    ``biases`` but no config, a ``.qweight`` whose bit width the shapes do not
    fix, a bitsandbytes absmax without its quant-state JSON) raises: unknown, never guessed.
    bitsandbytes parts describe themselves (the JSON tensor; int8 weight with ``SCB``).

    **Reference**: transformers ``quantizers/auto.py`` (``quant_method`` names),
    mlx-lm ``utils.py`` (``quantization``).
    """
    cfg = _config_of(ck)
    path = ck.path
    meta = getattr(ck, "metadata", None) or {}
    if "refquant.compress" in meta:  # what `refquant compress` writes describes itself
        return "refquant", {}
    if cfg is not None:
        qc = cfg.get("quantization_config")
        if isinstance(qc, dict):
            m = str(qc.get("quant_method", "")).lower()
            if m == "gptq":
                return ("gptq_v2" if qc.get("checkpoint_format", qc.get("format")) == "gptq_v2"
                        else "gptq"), qc
            if m == "awq":
                return "awq", qc
            if m == "fp8":
                return ("fp8-block" if qc.get("weight_block_size") is not None else "fp8"), qc
            if m == "compressed-tensors":
                sp = qc.get("sparsity_config")
                if isinstance(sp, dict) and sp.get("format") not in (None, "dense"):
                    if qc.get("config_groups"):
                        raise RefquantError(f"{path}: compressed-tensors sparsity {sp.get('format')!r} "
                                            "stacked on quantization; refquant reads either alone, "
                                            "not both (unknown, not guessed)")
                    return "ct-sparse", qc
                return "compressed-tensors", qc
            if m in ("mlx",):
                return "mlx", qc
            if m == "modelopt":
                return "modelopt", qc
            if m == "bitsandbytes":
                return "bitsandbytes", qc
            raise RefquantError(f"{path}: quantization_config quant_method {m!r} is a layout refquant "
                                f"does not read (it reads {LAYOUTS}); unknown, not guessed")
        mq = cfg.get("quantization")
        if isinstance(mq, dict):
            return "mlx", mq
    names = set(ck)
    infos = ck.infos
    qweights = [n for n in names if n.endswith(".qweight")]
    if qweights:
        n0 = sorted(qweights)[0]
        base = n0[: -len(".qweight")]
        sc = infos.get(base + ".scales")
        qs = infos[n0].shape
        if base + ".g_idx" in names and len(qs) == 2:
            k = infos[base + ".g_idx"].shape[0]
            if k and (qs[0] * 32) % k == 0 and qs[0] * 32 // k in (2, 3, 4, 8):
                return "gptq", {"quant_method": "gptq", "bits": qs[0] * 32 // k,
                                "group_size": _gptq_group(ck, base, k), "desc_act": _desc(ck, base, k)}
        elif sc is not None and base + ".qzeros" in names and len(qs) == 2 and len(sc.shape) == 2 \
                and qs[0] == sc.shape[0] == infos[base + ".qzeros"].shape[0] \
                and sc.shape[1] == 8 * infos[base + ".qzeros"].shape[-1] and qs[0] != qs[1] * 8:
            return "awq", {"quant_method": "awq", "bits": 4, "version": "gemv", "zero_point": True,
                           "group_size": _gemv_group(ck, base, qs[1] * 8)}
        elif sc is not None and len(qs) == 2 and len(sc.shape) == 2 and sc.shape[1] == 8 * qs[1] \
                and sc.shape[0] and qs[0] % sc.shape[0] == 0:
            return "awq", {"quant_method": "awq", "bits": 4, "version": "gemm", "zero_point": True,
                           "group_size": qs[0] // sc.shape[0]}
        raise RefquantError(f"{path}: tensor {n0!r}: a GPTQ/AWQ-style qweight {qs} whose bit width and "
                            "layout its siblings do not fix (no config.json quantization_config, no "
                            "g_idx); unknown, not guessed")
    if any(".quant_state.bitsandbytes__" in n for n in names) or any(
            n.endswith(".SCB") for n in names):
        return "bitsandbytes", {"quant_method": "bitsandbytes"}  # the parts describe themselves
    s2 = sorted(n for n in names if n.endswith(".weight_scale_2"))
    if s2 and infos.get(s2[0][: -len("_scale_2")]) is not None \
            and infos[s2[0][: -len("_scale_2")]].dtype == np.uint8:
        from .modelopt import modelopt_config

        return "modelopt", modelopt_config()
    bms = sorted(n for n in names if n.endswith(".bitmask"))
    if bms:
        b0 = bms[0][: -len(".bitmask")]
        if b0 + ".compressed" in names and b0 + ".shape" in names:
            from .ctsparse import sparse_config

            return "ct-sparse", sparse_config("sparse-bitmask" if b0 + ".row_offsets" in names
                                              else "sparse-24-bitmask")
    if any(n.endswith(".weight_packed") for n in names):
        return "compressed-tensors", _ct_from_tensors(ck)
    e4 = [n for n in names if n.endswith(".weight") and infos[n].dtype.name == "float8_e4m3fn"]
    if e4 and all(n + "_scale" in names and infos[n + "_scale"].dtype == np.uint8 for n in e4):
        return "compressed-tensors", _ct_float_from_tensors(ck, "mxfp8-quantized")
    if e4 and all(n + "_scale_inv" in names for n in e4):
        return "fp8-block", {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    if e4 and all(n + "_scale" in names and infos[n + "_scale"].shape in ((), (1,)) for n in e4):
        return "fp8", {"quant_method": "fp8", "fmt": "e4m3"}
    for suf, what in ((".biases", "MLX (uint32 weight, scales, biases)"),
                      (".absmax", "bitsandbytes 4-bit without its quant_state JSON"),
                      (".weight_scale", "int8 / fp8 weights with weight_scale")):
        hit = next((n for n in sorted(names) if n.endswith(suf)), None)
        if hit is not None:
            raise RefquantError(f"{path}: tensor {hit!r} looks like {what}, but without config.json's "
                                "quantization config its bits / group size / format are unknown; "
                                "open the model folder, not the file")
    return "none", {}


def _gemv_group(ck, base, k):
    """The GEMV group size whose zeros width fits the stored one; unknown if several or none do."""
    from .gptq import awq_gemv_zeros_width

    zw = ck.info(base + ".qzeros").shape[-1]
    fits = [g for g in (32, 64, 128, 256, 512, 1024, k) if k % g == 0 and awq_gemv_zeros_width(k, g) == zw]
    fits = sorted(set(fits))
    if len(fits) != 1:
        raise RefquantError(f"{ck.path}: tensor {base + '.qzeros'!r}: an AWQ GEMV layer of in_features {k} "
                            f"whose {zw} zero words fit group sizes {fits}; unknown without config.json")
    return fits[0]


def _gptq_group(ck, base, k):
    g = np.asarray(ck[base + ".g_idx"]).astype(np.int64)
    groups = ck.info(base + ".scales").shape[0] if base + ".scales" in ck else 0
    if groups and k % groups == 0 and np.array_equal(g, np.arange(k) // (k // groups)):
        return k // groups if groups > 1 else -1
    return k // groups if groups and k % groups == 0 else -1


def _desc(ck, base, k):
    g = np.asarray(ck[base + ".g_idx"]).astype(np.int64)
    return bool(g.size > 1 and np.any(np.diff(g) < 0))


def _ct_from_tensors(ck):
    """A compressed-tensors config read off a ``weight_packed`` checkpoint's shapes."""
    infos = ck.infos
    n0 = sorted(n for n in ck if n.endswith(".weight_packed"))[0]
    base = n0[: -len(".weight_packed")]
    if infos[n0].dtype == np.uint8:  # the float formats pack into bytes
        sc = infos.get(base + ".weight_scale")
        cols = infos[n0].shape[-1]
        if base + ".weight_global_scale" in ck:
            return _ct_float_from_tensors(ck, "nvfp4-pack-quantized")
        if sc is not None and len(sc.shape) == 2 and sc.dtype == np.uint8 and sc.shape[1]:
            if sc.shape[1] * 16 == cols:
                return _ct_float_from_tensors(ck, "mxfp4-pack-quantized")
            if sc.shape[1] * 24 == cols:
                return _ct_float_from_tensors(ck, "mxfp6-pack-quantized")
        raise RefquantError(f"{ck.path}: tensor {n0!r}: uint8 packed weights whose scale "
                            f"{None if sc is None else (sc.dtype.name, sc.shape)} fits none of "
                            "nvfp4 / mxfp4 / mxfp6; unknown, not guessed")
    if base + ".weight_shape" not in ck or base + ".weight_scale" not in ck:
        raise RefquantError(f"{ck.path}: tensor {n0!r}: pack-quantized needs weight_shape and "
                            "weight_scale beside it")
    n, k = (int(v) for v in np.asarray(ck[base + ".weight_shape"]).reshape(-1)[:2])
    cols = infos[n0].shape[-1]
    bits = [b for b in range(1, 9) if -(-k * b // 32) == cols]
    if len(bits) != 1:
        raise RefquantError(f"{ck.path}: tensor {n0!r}: {cols} packed words for in_features {k} fit "
                            f"bit widths {bits}; unknown without config.json")
    ss = infos[base + ".weight_scale"].shape
    if ss in ((), (1,)):
        strat, gs = "tensor", None
    elif len(ss) == 2 and ss[1] == 1:
        strat, gs = "channel", None
    elif len(ss) == 2 and ss[1] and k % ss[1] == 0:
        strat, gs = "group", k // ss[1]
    else:
        raise RefquantError(f"{ck.path}: tensor {base + '.weight_scale'!r}: shape {ss} fits no "
                            f"strategy for in_features {k}")
    sym = base + ".weight_zero_point" not in ck
    w = {"num_bits": bits[0], "type": "int", "symmetric": sym, "strategy": strat, "group_size": gs}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w}}}


def _ct_float_from_tensors(ck, fmt):
    """A compressed-tensors config for one of its float formats, read off the tensors."""
    from .ctensors import ct_config

    return ct_config(fmt, None, "float", True, None)


def layout_of(ck) -> LayoutView:
    """The :class:`LayoutView` of an open checkpoint (cached on it)."""
    view = getattr(ck, "_layout_view", None)
    if view is not None:
        return view
    if getattr(ck, "format", None) == "gguf":
        view = ck._layout_view = GGMLView(ck, None)
        return view
    name, qc = detect_layout(ck)
    cfg = _config_of(ck)
    if name in ("gptq", "gptq_v2"):
        from .gptq import GPTQView

        view = GPTQView(ck, cfg, qc)
    elif name == "awq":
        from .gptq import AWQView

        view = AWQView(ck, cfg, qc)
    elif name in ("fp8", "fp8-block"):
        from .fp8 import FP8View

        view = FP8View(ck, cfg, qc)
    elif name == "compressed-tensors":
        from .ctensors import CompressedTensorsView

        view = CompressedTensorsView(ck, cfg, qc)
    elif name == "ct-sparse":
        from .ctsparse import CTSparseView

        view = CTSparseView(ck, cfg, qc)
    elif name == "modelopt":
        from .modelopt import ModelOptView

        view = ModelOptView(ck, cfg, qc)
    elif name == "mlx":
        from .mlx import MLXView

        view = MLXView(ck, cfg, qc)
    elif name == "refquant":
        from .refquant import RefquantView

        view = RefquantView(ck, cfg)
    elif name == "bitsandbytes":
        from .bnb import BnbView

        view = BnbView(ck, cfg, qc)
    else:
        view = PlainView(ck, cfg)
    ck._layout_view = view
    return view


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def save_layout(weights, path, layout, *, config=None, overwrite=False, **options):
    """Write a Hugging Face style folder (``model.safetensors`` + ``config.json``) in ``layout``.

    Parameters
    ----------
    weights : mapping of str to array_like
        The raw tensors of the layout (build them with ``gptq_tensors``,
        ``awq_tensors``, ``fp8_tensors``, ``fp8_block_tensors``, ``ct_tensors``,
        ``mlx_tensors``) plus any plain tensors; written bit for bit.
    path : str or os.PathLike
        The folder (created; must not hold a checkpoint unless ``overwrite``).
    layout : str
        One of :data:`LAYOUTS`.
    config : dict, optional
        Base ``config.json``; its quantization entry is set from ``options``.
    **options
        gptq: ``bits``, ``group_size``, ``desc_act``, ``sym``; awq: ``group_size``;
        fp8-block: ``block`` (default (128, 128)); compressed-tensors: ``bits``,
        ``type``, ``symmetric``, ``strategy``, ``group_size``, ``block``,
        ``ignore``; mlx: ``bits``, ``group_size``; bitsandbytes-nf4 / -fp4:
        ``double_quant``, ``compute_dtype``.

    Notes
    -----
    **Formula**: no arithmetic; the config written is the one each ecosystem's
    loader reads (transformers ``GPTQConfig`` / ``AwqConfig`` /
    ``FineGrainedFP8Config`` / ``CompressedTensorsConfig``, mlx-lm ``quantization``).

    **Reference**: see the layout modules. The folder is read back by
    :func:`refquant.io.open` before this returns, so a layout whose parts
    disagree is refused, not written.
    """
    from ..safetensors import save_safetensors

    if layout not in LAYOUTS:
        raise RefquantError(f"layout={layout!r}; expected one of {LAYOUTS}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise RefquantError(f"path {os.fspath(path)!r} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})
    o = dict(options)
    if layout in ("gptq", "gptq_v2"):
        qc = {"quant_method": "gptq", "bits": o.pop("bits"), "group_size": o.pop("group_size", 128),
              "desc_act": o.pop("desc_act", False), "sym": o.pop("sym", True),
              "checkpoint_format": layout}
    elif layout in ("awq", "awq-gemv"):
        qc = {"quant_method": "awq", "bits": 4, "group_size": o.pop("group_size", 128),
              "zero_point": True, "version": "gemv" if layout == "awq-gemv" else "gemm"}
    elif layout == "fp8":
        qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}
    elif layout == "fp8-block":
        qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
              "weight_block_size": list(o.pop("block", (128, 128)))}
    elif layout.startswith("bitsandbytes-"):
        if layout == "bitsandbytes-int8":
            qc = {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False,
                  "llm_int8_threshold": 6.0}
        else:
            qc = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                  "bnb_4bit_quant_type": layout.split("-")[1],
                  "bnb_4bit_use_double_quant": bool(o.pop("double_quant", False)),
                  "bnb_4bit_compute_dtype": o.pop("compute_dtype", "float32"),
                  "bnb_4bit_quant_storage": "uint8"}
    elif layout == "modelopt-nvfp4":
        from .modelopt import modelopt_config

        qc = modelopt_config(exclude=o.pop("exclude", ("lm_head",)))
    elif layout in ("sparse-bitmask", "sparse-24-bitmask"):
        from .ctsparse import sparse_config

        qc = sparse_config(layout, ignore=o.pop("ignore", ("lm_head",)),
                           global_sparsity=o.pop("global_sparsity", 0.0))
    elif layout == "mlx":
        qc = None
        cfg["quantization"] = {"group_size": o.pop("group_size", 64), "bits": o.pop("bits", 4)}
    else:
        from .ctensors import ct_config

        qc = ct_config(layout, o.pop("bits", 8),
                       o.pop("type", "float" if layout == "float-quantized" else "int"),
                       o.pop("symmetric", True), o.pop("strategy", "group"),
                       group_size=o.pop("group_size", None), block=o.pop("block", None),
                       ignore=o.pop("ignore", ("lm_head",)))
    if o:
        raise RefquantError(f"layout={layout!r} takes no options {sorted(o)}")
    if qc is not None:
        cfg["quantization_config"] = qc
    st = folder / "model.safetensors"
    save_safetensors(weights, st, overwrite=overwrite)
    cj = folder / "config.json"
    if cj.exists() and not overwrite:
        raise RefquantError(f"path {os.fspath(cj)!r} exists; pass overwrite=True")
    cj.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    from .. import open as _open

    try:
        with _open(folder) as ck:
            layout_of(ck)  # validates every part against the others
    except BaseException:
        st.unlink(missing_ok=True)
        cj.unlink(missing_ok=True)
        raise
    return folder
