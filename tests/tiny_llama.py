"""A tiny random llama-architecture GGUF, as convert_hf_to_gguf.py --outtype f16 writes one.

Shared by the tests and by ``scripts/record_llama_quantize.py`` (which runs in a
separate environment with llama.cpp's library), so it needs only numpy and gguf.

Eight blocks (so llama-quantize's ``use_more_bits`` picks layers 0, 3, 6 and 7),
n_embd 256 (whole K-quant blocks), grouped attention (2 KV heads of 4), and a
feed-forward width per layer of 256 or 96: ``ffn_down`` rows of 96 are not whole
256-blocks, so the K types fall back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0).
2-D weights in F16, norms in F32; one GGUF written by gguf-py's GGUFWriter.
"""

from __future__ import annotations

import numpy as np

N_LAYER = 8
N_EMBD = 256
N_HEAD, N_HEAD_KV = 4, 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = [256, 96, 96, 256, 96, 96, 256, 96]
N_VOCAB = 32


def tiny_llama_tensors(seed: int = 14, tied: bool = False) -> dict[str, np.ndarray]:
    """The model's tensors by GGUF name, in the order convert_hf_to_gguf.py writes them."""
    rng = np.random.default_rng(seed)

    def w(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float16)

    t = {"token_embd.weight": w(N_VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32)
        t[p + "attn_q.weight"] = w(N_HEAD * HEAD_DIM, N_EMBD)
        t[p + "attn_k.weight"] = w(N_HEAD_KV * HEAD_DIM, N_EMBD)
        t[p + "attn_v.weight"] = w(N_HEAD_KV * HEAD_DIM, N_EMBD)
        t[p + "attn_output.weight"] = w(N_EMBD, N_HEAD * HEAD_DIM)
        t[p + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32)
        t[p + "ffn_gate.weight"] = w(N_FF[i], N_EMBD)
        t[p + "ffn_up.weight"] = w(N_FF[i], N_EMBD)
        t[p + "ffn_down.weight"] = w(N_EMBD, N_FF[i])
    t["output_norm.weight"] = np.ones(N_EMBD, np.float32)
    if not tied:
        t["output.weight"] = w(N_VOCAB, N_EMBD)
    return t


def write_tiny_llama(path, seed: int = 14, tied: bool = False):
    """Write the model to ``path`` (llama metadata, a 32-token vocabulary); returns the tensors."""
    import gguf

    tensors = tiny_llama_tensors(seed, tied)
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("refquant-tiny-llama")
    wr.add_context_length(128)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(N_FF)
    wr.add_rope_dimension_count(HEAD_DIM)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_freq_base(10000.0)
    wr.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    wr.add_vocab_size(N_VOCAB)
    wr.add_tokenizer_model("llama")
    wr.add_token_list([f"<t{i}>" for i in range(N_VOCAB)])
    wr.add_token_scores([0.0] * N_VOCAB)
    wr.add_token_types([1] * N_VOCAB)
    for name, a in tensors.items():
        wr.add_tensor(name, a)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return tensors


IMATRIX_NCALL = 8
IMATRIX_DATASET = "tiny-calibration.txt"


def tiny_imatrix_entries(seed: int = 15) -> dict[str, np.ndarray]:
    """An importance vector (float32, one value per input column) for every matrix that
    llama-imatrix collects (every 2-D weight but ``token_embd``, a row lookup), as stored in
    a legacy ``.dat`` (mean of x² times ``ncall``); a few exact zeros in ``blk.0.attn_q``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, a in tiny_llama_tensors().items():
        if a.ndim != 2 or name == "token_embd.weight":
            continue
        v = rng.gamma(2.0, 0.5, a.shape[1]).astype(np.float32) * np.float32(IMATRIX_NCALL)
        if name == "blk.0.attn_q.weight":
            v[::37] = 0
        out[name] = v
    return out


def write_tiny_imatrix(path, seed: int = 15) -> dict[str, np.ndarray]:
    """Write :func:`tiny_imatrix_entries` as a legacy llama-imatrix ``.dat`` (int32 entry count;
    per entry int32 name length, name, int32 ncall, int32 nval, float32 values; then int32
    chunk count and the dataset name) and return the entries."""
    import struct

    entries = tiny_imatrix_entries(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, v in entries.items():
            b = name.encode()
            f.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", IMATRIX_NCALL, v.size))
            f.write(v.astype("<f4").tobytes())
        d = IMATRIX_DATASET.encode()
        f.write(struct.pack("<ii", IMATRIX_NCALL, len(d)) + d)
    return entries
