"""Load a GGUF with llama.cpp's library and print, as JSON, what it makes of it.

Runs in the environment of scripts/record_llama_quantize.py (llama-cpp-cffi 0.4.42,
its library loaded through that script's shim)::

    python scripts/llama_cpp_logits.py MODEL.gguf --tokens 0,5,17 [--text "hello"]

Prints one line ``RESULT {...}``: the vocabulary size llama.cpp read, its BOS / EOS ids,
the logits of every position for the token ids given (one llama_decode of the whole
sequence, every position's logits requested), and the ids llama.cpp's own tokenizer
gives ``--text`` (without adding BOS). tests/peers/test_llama_quantize_live.py compares
them with transformers on the Hugging Face model the GGUF was converted from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import record_llama_quantize as rec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--text", default=None)
    args = ap.parse_args()
    lib, ffi, _ = rec._load_lib()
    lib.llama_backend_init()
    mp = lib.llama_model_default_params()
    model = lib.llama_model_load_from_file(args.gguf.encode(), mp)
    if model == ffi.NULL:
        print("RESULT " + json.dumps({"loaded": False}))
        return
    vocab = lib.llama_model_get_vocab(model)
    ids = [int(t) for t in args.tokens.split(",")]
    cp = lib.llama_context_default_params()
    cp.n_ctx = max(64, len(ids) + 8)
    cp.n_batch = cp.n_ubatch = max(64, len(ids))
    cp.n_threads = cp.n_threads_batch = 2
    ctx = lib.llama_init_from_model(model, cp)
    n_vocab = lib.llama_n_vocab(vocab)
    batch = lib.llama_batch_init(len(ids), 0, 1)
    for i, t in enumerate(ids):
        batch.token[i] = t
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1
    batch.n_tokens = len(ids)
    rc = lib.llama_decode(ctx, batch)
    logits = []
    if rc == 0:
        for i in range(len(ids)):
            p = lib.llama_get_logits_ith(ctx, i)
            logits.append([float(p[j]) for j in range(n_vocab)])
    text_ids = None
    if args.text is not None:
        raw = args.text.encode()
        buf = ffi.new("llama_token[]", len(raw) + 8)
        n = lib.llama_tokenize(vocab, raw, len(raw), buf, len(raw) + 8, False, True)
        text_ids = [int(buf[i]) for i in range(n)] if n >= 0 else None
    out = {"loaded": True, "decode_rc": rc, "n_vocab": n_vocab,
           "bos": int(lib.llama_vocab_bos(vocab)), "eos": int(lib.llama_vocab_eos(vocab)),
           "logits": logits, "text_ids": text_ids}
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
