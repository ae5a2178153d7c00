"""llama-quantize's presets: which ggml type each tensor of a model gets.

``llama-quantize model-f16.gguf out.gguf Q4_K_M`` does not store every weight
as Q4_K: it picks a type per tensor from the tensor's name, its layer, its row
length and the file type asked for. :func:`select_types` reproduces that choice
for the presets ``q4_k_m``, ``q5_k_m``, ``q3_k_m``, ``q4_k_s``, ``q5_k_s``,
``q6_k``, ``q8_0``, ``q4_0`` and ``iq4_xs`` (no importance matrix), for the llama
architecture and its relatives (one expert per layer, not Falcon, not a 70B
model with grouped attention), on GGUF tensor names (``blk.N.attn_v.weight``,
``blk.N.ffn_down.weight``, ``output.weight``, ``token_embd.weight``) and on
Hugging Face names (``model.layers.N.self_attn.v_proj.weight``,
``...mlp.down_proj.weight``, ``lm_head.weight``, ``model.embed_tokens.weight``).

The rules, in the order llama.cpp applies them
-----------------------------------------------
1. *Which tensors are quantized* (``tensor_allows_quantization``): tensors of at
   least two dimensions as ggml counts them (trailing dimensions of size 1 do
   not count: ``ggml_n_dims``) whose name ends in ``weight``, except norms
   (``_norm.weight``), expert gates, position embeddings, token-type tables and
   a list of small tensors of other architectures (:data:`NEVER_QUANTIZED`).
   Everything else keeps its type.
2. *The type of the mix* (``llama_tensor_get_type_impl``), starting from the
   preset's default type (``llama_ftype_get_default_type``: Q4_K for Q4_K_M):

   * ``output.weight`` (and ``token_embd.weight`` when the model has no
     ``output.weight``: tied embeddings) -> Q8_0 if its row is not a multiple of
     the default type's block, else Q6_K unless the default is Q8_0;
   * ``attn_v`` (also ``attn_qkv`` / ``attn_kv_b``), counted in file order:
     Q4_K_M / Q5_K_M -> Q6_K where ``use_more_bits(i, n)``; Q3_K_M -> Q5_K for
     the first two, Q4_K after; Q4_K_S -> Q5_K for the first four; IQ4_XS -> Q5_K
     when ``n_head / n_head_kv >= 4``;
   * ``ffn_down`` of layer ``i`` of ``n``: Q4_K_M / Q5_K_M -> Q6_K where
     ``use_more_bits(i, n)``; Q3_K_M -> Q5_K for ``i < n // 16``, else Q4_K;
     Q4_K_S, and IQ4_XS without an importance matrix, -> Q5_K for ``i < n // 8``;
   * ``attn_output`` under Q3_K_M -> Q4_K (llama.cpp's later branch for a fused
     ``attn_qkv`` is never reached: the ``attn_v`` branch takes those first);

   with ``use_more_bits(i, n) = i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2``.
3. *Shapes the type cannot store* (``tensor_type_fallback``): a row that is not
   a multiple of the type's block falls back Q4_K -> Q5_0, Q5_K -> Q5_1,
   Q6_K -> Q8_0, Q2_K / Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, and to F16 when the
   fallback's block does not divide the row either. llama.cpp throws for a row that Q4_0 / Q8_0
   cannot store; refquant keeps such a tensor in its input type instead and
   says so in the report.

The layer counters run over the tensors sorted as llama.cpp's model loader sorts
them (``weight_name_comparer``: by the ``blk.N.`` number, tensors without one
first, then by name); the number of layers ``n`` is the model's
``{arch}.block_count`` (``hparams.n_layer``), or the number of distinct layer
indices in the names when the input has no such key.

Verified
--------
Against llama.cpp's own ``llama_model_quantize`` (the prebuilt llama-cpp-cffi
0.4.42, an older llama.cpp than the commit read) on the tiny llama GGUF of the
tests, for all nine presets: the same type for all 75 tensors, the same bytes
for every one, and the same file byte for byte: the pipeline writes the tensors
in the loader's order (:func:`loader_order`) and the metadata as llama-quantize
does (the input's keys, then ``general.quantization_version`` and
``general.file_type`` last) (``tests/compress/test_llama_presets.py`` against
``tests/data/llama_quantize/``, written by ``scripts/record_llama_quantize.py``).
That older build falls back from Q2_K / Q3_K to IQ4_NL where the current source
falls back to Q4_0; none of these presets reaches that case on the test model.

Reference
---------
llama.cpp ``src/llama-quant.cpp`` (commit 007dbbf3fd17, read through the
search tools): ``tensor_allows_quantization``, ``tensor_get_category``,
``llama_tensor_get_type_impl``, ``tensor_type_fallback``,
``llama_ftype_get_default_type``, ``init_quantize_state_counters`` and
``llama_model_quantize_impl`` (which copies every metadata key and sets
``general.quantization_version`` = 2 and ``general.file_type`` = the
``LLAMA_FTYPE_MOSTLY_*`` value); ``src/llama-model-loader.h``
(``weight_name_comparer``). Without an importance matrix ``ggml_quantize_chunk``
stores each row as ``quantize_row_<type>_ref`` does, which is what
:func:`refquant.compat.ggml.quantize` computes; F16 is ``ggml_fp32_to_fp16_row``
(round to nearest even, NumPy's ``astype(float16)``); IQ4_NL is
``quantize_iq4_nl``'s scale search, which ``quantize_row_iq4_nl_ref`` lacks
(``get_format("iq4_nl").quantize_blocks_weighted``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._errors import RefquantError

__all__ = ["LLAMA_CPP_PRESETS", "LlamaChoice", "select_types", "use_more_bits", "category",
           "allows_quantization", "ftype_of", "loader_order"]

#: preset -> (``LLAMA_FTYPE_MOSTLY_*`` name of ``general.file_type``, the default ggml type)
LLAMA_CPP_PRESETS = {
    "q4_k_m": ("MOSTLY_Q4_K_M", "Q4_K"),
    "q5_k_m": ("MOSTLY_Q5_K_M", "Q5_K"),
    "q3_k_m": ("MOSTLY_Q3_K_M", "Q3_K"),
    "q4_k_s": ("MOSTLY_Q4_K_S", "Q4_K"),
    "q5_k_s": ("MOSTLY_Q5_K_S", "Q5_K"),
    "q6_k": ("MOSTLY_Q6_K", "Q6_K"),
    "q8_0": ("MOSTLY_Q8_0", "Q8_0"),
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "iq4_xs": ("MOSTLY_IQ4_XS", "IQ4_XS"),
}

# llama.h's enum llama_ftype values (gguf.LlamaFileType has the same numbers)
_FTYPE_VALUES = {"MOSTLY_Q4_0": 2, "MOSTLY_Q8_0": 7, "MOSTLY_Q3_K_M": 12, "MOSTLY_Q4_K_S": 14,
                 "MOSTLY_Q4_K_M": 15, "MOSTLY_Q5_K_S": 16, "MOSTLY_Q5_K_M": 17, "MOSTLY_Q6_K": 18,
                 "MOSTLY_IQ4_XS": 30}

# ggml_blck_size of the types the selection can produce
_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q2_K": 256, "Q3_K": 256,
          "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256, "IQ4_NL": 32, "F16": 1}

# tensor_type_fallback's table for the types these presets use
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
             "IQ4_XS": "IQ4_NL"}

#: name fragments tensor_allows_quantization never quantizes (other architectures' small
#: 2-D tensors included, so that a GGUF of those keeps them as llama-quantize does)
NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
    "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
    "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
    "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_EXACT = ("position_embd.weight", "token_types.weight")

# Hugging Face names of the llama family -> the GGUF name fragment llama.cpp matches
_HF = [
    (re.compile(r"(^|\.)lm_head\.weight$"), "output.weight"),
    (re.compile(r"(^|\.)embed_tokens\.weight$"), "token_embd.weight"),
    (re.compile(r"\.self_attn\.v_proj\.weight$"), "attn_v.weight"),
    (re.compile(r"\.self_attn\.k_proj\.weight$"), "attn_k.weight"),
    (re.compile(r"\.self_attn\.q_proj\.weight$"), "attn_q.weight"),
    (re.compile(r"\.self_attn\.o_proj\.weight$"), "attn_output.weight"),
    (re.compile(r"\.self_attn\.qkv_proj\.weight$"), "attn_qkv.weight"),
    (re.compile(r"\.mlp\.down_proj\.weight$"), "ffn_down.weight"),
    (re.compile(r"\.mlp\.up_proj\.weight$"), "ffn_up.weight"),
    (re.compile(r"\.mlp\.gate_proj\.weight$"), "ffn_gate.weight"),
]
_GGUF_LAYER = re.compile(r"^blk\.(\d+)")
_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def ftype_of(preset: str) -> int:
    """``general.file_type`` (``LLAMA_FTYPE_MOSTLY_*``) of a preset."""
    return _FTYPE_VALUES[LLAMA_CPP_PRESETS[preset][0]]


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, every third.

    Formula: ``i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2`` (C integer
    division; ``i - n // 8`` is never negative when the last clause is reached).
    """
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)


def _as_gguf_name(name: str) -> str:
    """The GGUF-style name llama.cpp's string tests see (Hugging Face names translated)."""
    for pat, frag in _HF:
        m = pat.search(name)
        if m is not None:
            if frag in ("output.weight", "token_embd.weight"):
                return frag
            return name[:m.start()] + "." + frag
    return name


def category(name: str) -> str:
    """``tensor_get_category``: output, token_embd, attn_qkv, attn_kv_b, attn_v, attn_k,
    attn_q, attn_output, ffn_up, ffn_gate, ffn_down or other (first match wins)."""
    n = _as_gguf_name(name)
    if n == "output.weight":
        return "output"
    if n in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for frag, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"),
                      ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                      ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if frag in n:
            return cat
    return "other"


def _n_dims(shape) -> int:
    """``ggml_n_dims``: dimensions up to the last one (outermost in ggml) larger than 1."""
    ne = list(reversed(tuple(shape)))  # ggml's ne[0] is NumPy's last axis
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


def allows_quantization(name: str, shape) -> bool:
    """``tensor_allows_quantization`` with llama-quantize's default parameters."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    n = _as_gguf_name(name)
    if n in _NEVER_EXACT:
        return False
    return not any(frag in n for frag in NEVER_QUANTIZED)


def _layer_key(name: str):
    m = _GGUF_LAYER.match(name) or _HF_LAYER.search(name)
    return (int(m.group(1)) if m else -1, name)


def loader_order(items, key=lambda x: x):
    """``items`` in the order llama.cpp's model loader lists their names (and
    llama-quantize writes them): by the ``blk.N.`` number, tensors without one first,
    then by name (``weight_name_comparer`` of ``llama-model-loader.h``)."""
    return sorted(items, key=lambda x: _layer_key(key(x)))


@dataclass
class LlamaChoice:
    """One tensor's type: a ggml type name (``"Q4_K"``, ``"F16"``) or None (keep) and why."""

    ggml_type: str | None
    reason: str


def _fallback(name, ncols, target, preset) -> tuple[str | None, str]:
    if ncols % _BLOCK[target] == 0:
        return target, ""
    if target not in _FALLBACK:
        # llama.cpp throws "no tensor type fallback is defined"; refquant keeps the tensor
        return None, (f"kept: row size {ncols} is not a multiple of the {target} block size "
                      f"{_BLOCK[target]} (llama-quantize has no fallback for {target})")
    fb = _FALLBACK[target]
    if ncols % _BLOCK[fb]:
        fb = "F16"
    return fb, (f"llama.cpp {preset} fallback: row size {ncols} not divisible by "
                f"{_BLOCK[target]} ({target}) -> {fb}")


def select_types(tensors, preset: str, *, n_layer: int | None = None,
                 n_gqa: int | None = None, has_imatrix: bool = False) -> dict[str, LlamaChoice]:
    """llama-quantize's type for every tensor of a model under ``preset``.

    Parameters
    ----------
    tensors : iterable of (name, shape, is_float)
        Every tensor of the model (``shape`` in NumPy order, the row last);
        ``is_float`` False for integer tensors, which are always kept.
    preset : str
        A key of :data:`LLAMA_CPP_PRESETS`.
    n_layer : int, optional
        The model's number of blocks (``{arch}.block_count``); by default the
        number of distinct layer indices in the names.
    n_gqa : int, optional
        Attention heads per KV head (``hparams.n_gqa()``: ``head_count //
        head_count_kv`` of layer 0); only ``iq4_xs`` reads it (``attn_v`` -> Q5_K
        when it is 4 or more). Unknown (None) counts as 1.
    has_imatrix : bool, default False
        Whether llama-quantize was given a non-empty importance matrix (``qs.has_imatrix``):
        with one, ``ffn_down`` of the first ``n_layer // 8`` layers becomes Q4_1 under
        ``q4_0`` (llama.cpp's "guard against craziness in the first few ffn_down layers")
        and stays IQ4_XS under ``iq4_xs`` (Q5_K without one).

    Returns
    -------
    dict of str to LlamaChoice
        ``ggml_type`` None for tensors kept in their input type.
    """
    if preset not in LLAMA_CPP_PRESETS:
        raise RefquantError(f"unknown llama.cpp preset {preset!r}; known: "
                            f"{', '.join(LLAMA_CPP_PRESETS)}")
    ftype, default = LLAMA_CPP_PRESETS[preset]
    items = sorted(((str(n), tuple(s), bool(f)) for n, s, f in tensors),
                   key=lambda t: _layer_key(t[0]))
    cats = {n: category(n) for n, _, _ in items}
    if n_layer is None:
        n_layer = len({_layer_key(n)[0] for n, _, _ in items} - {-1})
    n_attn_v = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats.values())
    tied = "output" not in cats.values()
    i_attn_v = i_ffn_down = 0
    out = {}
    for name, shape, is_float in items:
        if not is_float or not allows_quantization(name, shape):
            why = "not floating point" if not is_float else (
                "1-D (norms and biases stay in full precision)" if _n_dims(shape) < 2 else
                "llama-quantize does not quantize this tensor")
            out[name] = LlamaChoice(None, why)
            continue
        cat, new, why = cats[name], default, f"llama.cpp {preset} default"
        ncols = shape[-1] if shape else 1
        if cat == "output" or (tied and cat == "token_embd"):
            if ncols % _BLOCK[default]:
                new, why = "Q8_0", f"llama.cpp {preset}: output tensor, row not whole blocks"
            elif default != "Q8_0":
                new, why = "Q6_K", f"llama.cpp {preset}: output tensor"
        elif cat == "token_embd":
            pass  # IQ / TQ presets only
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ftype == "MOSTLY_Q3_K_M":
                new = "Q5_K" if i_attn_v < 2 else "Q4_K"
            elif ftype in ("MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
                new = "Q6_K"
            elif ftype == "MOSTLY_Q4_K_S" and i_attn_v < 4:
                new = "Q5_K"
            elif ftype == "MOSTLY_IQ4_XS" and (n_gqa or 1) >= 4:
                new = "Q5_K"
            if new != default:
                why = f"llama.cpp {preset}: {cat} #{i_attn_v} of {n_attn_v} gets more bits"
            i_attn_v += 1
        elif cat == "ffn_down":
            i = i_ffn_down
            if ftype == "MOSTLY_Q3_K_M":
                new = "Q5_K" if i < n_layer // 16 else "Q4_K"
            elif ftype in ("MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M") and use_more_bits(i, n_layer):
                new = "Q6_K"
            elif ftype == "MOSTLY_IQ4_XS" and i < n_layer // 8 and not has_imatrix:
                new = "Q5_K"
            elif ftype == "MOSTLY_Q4_K_S" and i < n_layer // 8:
                new = "Q5_K"
            elif ftype == "MOSTLY_Q4_0" and has_imatrix and i < n_layer // 8:
                new = "Q4_1"
            if new != default:
                why = f"llama.cpp {preset}: ffn_down of layer {i} of {n_layer} gets more bits"
            i_ffn_down += 1
        elif cat == "attn_output" and ftype == "MOSTLY_Q3_K_M":
            new, why = "Q4_K", f"llama.cpp {preset}: attn_output"
        got, fb_why = _fallback(name, ncols, new, preset)
        out[name] = LlamaChoice(got, fb_why or why)
    return out
