"""Recipes' method / pruning axes, mixed:B, workers, and write errors of refquant compress."""

from __future__ import annotations

import errno
import hashlib
import os
import warnings

import numpy as np
import pytest

from refquant import RefquantError
from refquant import io as rio
from refquant.compress.pipeline import compress, decompress


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    rng = np.random.default_rng(0)
    w = {f"model.layers.{i}.mlp.up_proj.weight":
         (rng.normal(size=(32, 256)) * rng.uniform(0.5, 2, 256)).astype(np.float32)
         for i in range(3)}
    w["model.norm.weight"] = np.ones(256, np.float32)
    rio.save(w, d / "m.safetensors")
    mix = rng.normal(size=(256, 256)) / 16
    acts = {k: (rng.normal(size=(300, 256)) @ mix * rng.uniform(0.1, 3, 256)).astype(np.float32)
            for k in w if k.endswith("proj.weight")}
    acts["model.layers.1.mlp.up_proj"] = acts.pop("model.layers.1.mlp.up_proj.weight")
    np.savez(d / "acts.npz", **acts)
    return d, w, {k if k.endswith(".weight") else k + ".weight": v for k, v in acts.items()}


def _recipe(d, text, name="r.toml"):
    (d / name).write_text(text)
    return d / name


def test_gptq_rule_stores_gptqs_codes(model, tmp_path):
    from refquant.quant.gptq import HessianAccumulator, gptq

    d, w, acts = model
    r = _recipe(d, 'calibration = "acts.npz"\nscheme = "int4-g128"\nmethod = "gptq"\n')
    rep = compress(d / "m.safetensors", tmp_path / "g.safetensors", recipe=r, workers=1)
    decompress(tmp_path / "g.safetensors", tmp_path / "gd.safetensors")
    got = rio.load_arrays(tmp_path / "gd.safetensors")
    for name in acts:
        x = acts[name].astype(np.float64)
        want = gptq(w[name].astype(np.float64), HessianAccumulator(256).update(x), bits=4,
                    symmetric=False, group_size=128)
        np.testing.assert_allclose(got[name], want.dequantized, rtol=1e-6, atol=1e-6)
        # GPTQ's output error is below round to nearest's on correlated inputs
        from refquant.compress.schemes import get_scheme

        s = get_scheme("int4-g128")
        rtn = s.dequantize(s.quantize(w[name]), w[name].shape)
        assert (np.linalg.norm(x @ (w[name] - got[name]).T)
                < np.linalg.norm(x @ (w[name] - rtn).T))
    assert "gptq" in rep.rows[0].reason


def test_awq_rule_is_clip_search_then_rtn(model, tmp_path):
    from refquant.compress.schemes import get_scheme
    from refquant.quant.awq import awq_clip_search

    d, w, acts = model
    r = _recipe(d, 'calibration = "acts.npz"\nscheme = "int4-g128"\n[[rules]]\n'
                'pattern = "*.0.*"\nscheme = "int4-g128"\nmethod = "awq"\n')
    compress(d / "m.safetensors", tmp_path / "a.safetensors", recipe=r, workers=1)
    n = "model.layers.0.mlp.up_proj.weight"
    _, wc = awq_clip_search(w[n].astype(np.float64), acts[n].astype(np.float64), bits=4,
                            group_size=128)
    s = get_scheme("int4-g128")
    want = s.quantize(wc.astype(np.float32))
    got = rio.load_arrays(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(got[n], want[""])
    np.testing.assert_array_equal(got[n + "_scale"], want["_scale"])


@pytest.mark.parametrize("prune, score", [("2:4", "magnitude"), ("50%", "wanda"),
                                          ("2:4", "sparsegpt"), ("rows:25%", "magnitude")])
def test_pruning_rules(model, tmp_path, prune, score):
    d, w, _ = model
    r = _recipe(d, f'calibration = "acts.npz"\nscheme = "dense"\nprune = "{prune}"\n'
                f'score = "{score}"\n')
    rep = compress(d / "m.safetensors", tmp_path / "p.safetensors", recipe=r, workers=1)
    got = rio.load_arrays(tmp_path / "p.safetensors")
    n = "model.layers.0.mlp.up_proj.weight"
    assert got[n].dtype == np.float32
    z = got[n] == 0
    if prune == "2:4":
        assert (z.reshape(32, -1, 4).sum(-1) >= 2).all()
    elif prune == "50%":
        assert (z.sum(1) == 128).all()
    else:
        assert z.all(axis=1).sum() == 8
    assert rep.rows[0].sparsity >= 0.25
    if score == "magnitude" and prune == "2:4":
        keep = np.argsort(np.abs(w[n]).reshape(32, -1, 4), axis=-1, kind="stable")[..., 2:]
        assert np.take_along_axis(~z.reshape(32, -1, 4), keep, -1).all()


def test_preset_2_4_keeps_the_float_type(model, tmp_path):
    d, w, _ = model
    compress(d / "m.safetensors", tmp_path / "s.safetensors", scheme="2:4")
    got = rio.load_arrays(tmp_path / "s.safetensors")
    n = "model.layers.2.mlp.up_proj.weight"
    assert (got[n].reshape(32, -1, 4) == 0).sum(-1).min() == 2
    nz = got[n] != 0
    np.testing.assert_array_equal(got[n][nz], w[n][nz])


def test_mixed_preset_plans_under_budget_and_its_toml_is_a_recipe(model, tmp_path):
    d, w, _ = model
    rep = compress(d / "m.safetensors", tmp_path / "x.safetensors", scheme="mixed:5", workers=1)
    plan = rep.plan
    assert plan.total_bits <= 5 * plan.numel and len(plan.layers) == 3
    assert {r.scheme for r in rep.rows if r.scheme != "keep"} <= {"q4_k", "q5_k", "q6_k",
                                                                   "q3_k", "q2_k", "q8_0",
                                                                   "q4_0", "q5_0", "f16"}
    plan.save(tmp_path / "plan.toml")
    compress(d / "m.safetensors", tmp_path / "y.safetensors", recipe=tmp_path / "plan.toml",
             workers=1)
    assert rio.load_arrays(tmp_path / "y.safetensors").keys() == rio.load_arrays(
        tmp_path / "x.safetensors").keys()
    for k, v in rio.load_arrays(tmp_path / "y.safetensors").items():
        np.testing.assert_array_equal(v, rio.load_arrays(tmp_path / "x.safetensors")[k])
    # GGUF output of the same plan
    compress(d / "m.safetensors", tmp_path / "x.gguf", scheme="mixed:5", workers=1)
    with pytest.raises(RefquantError, match=r"average_bits 2.0 is below the smallest choice: "
                                            r"2.625 bits/weight.*q2_k"):
        compress(d / "m.safetensors", tmp_path / "z.safetensors", scheme="mixed:2")
    with pytest.raises(RefquantError, match="mixed:B"):
        compress(d / "m.safetensors", tmp_path / "z.safetensors", scheme="mixed:abc")
    assert not (tmp_path / "z.safetensors").exists()


def test_mixed_preset_with_calibration_uses_the_hessian(model, tmp_path):
    d, _, _ = model
    rep = compress(d / "m.safetensors", tmp_path / "x.safetensors", scheme="mixed:5",
                   calibration=d / "acts.npz", workers=1)
    assert rep.plan.metric == "hessian_diag"


@pytest.mark.parametrize("text, match", [
    ('scheme = "int4-g128"\nmethod = "gptx"\n', r"line \d+: method must be one of"),
    ('scheme = "int4-g128"\n[[rules]]\npattern = "*"\nscheme = "int8"\nprune = "5:4"\n',
     r"line 2: prune '5:4'"),
    ('scheme = "int4-g128"\n[[rules]]\npattern = "*"\nscheme = "int8"\nmethod = "gptq"\n'
     'prune = "2:4"\n', r"line 2: method 'gptq' would refill"),
    ('scheme = "int4-g128"\n[[rules]]\npattern = "*"\nscheme = "q4_x"\n',
     r"line 2: unknown scheme 'q4_x'"),
    ('scheme = "int4-g128"\n[[rules]]\npattern = "*"\nscheme = "int8"\nscore = "taylor"\n',
     r"line 2: score must be one of"),
    ('scheme = "int4-g128"\n[[rules]]\npattern = "*"\nscheme = "int8"\nprune = "rows:10%"\n'
     'score = "sparsegpt"\n', r"line 2: score 'sparsegpt' prunes weights, not rows"),
])
def test_recipe_errors_name_the_line(tmp_path, text, match):
    from refquant.compress.recipe import load_recipe

    with pytest.raises(RefquantError, match=match):
        load_recipe(_recipe(tmp_path, text))


def test_missing_calibration_errors(model, tmp_path):
    d, _, _ = model
    r = _recipe(tmp_path, 'scheme = "int4-g128"\n[[rules]]\npattern = "*.0.*"\n'
                'scheme = "int4-g128"\nmethod = "gptq"\n')
    with pytest.raises(RefquantError, match=r"line 2: gptq for 'model.layers.0.*needs "
                                            "calibration inputs"):
        compress(d / "m.safetensors", tmp_path / "o.safetensors", recipe=r, workers=1)
    np.savez(tmp_path / "few.npz", other=np.zeros((4, 256)))
    with pytest.raises(RefquantError, match=r"has no key 'model.layers.0.mlp.up_proj.weight'"):
        compress(d / "m.safetensors", tmp_path / "o.safetensors", recipe=r,
                 calibration=tmp_path / "few.npz", workers=1)
    np.savez(tmp_path / "bad.npz", **{"model.layers.0.mlp.up_proj": np.zeros((4, 3))})
    with pytest.raises(RefquantError, match=r"expected real rows \(\.\.\., 256\)"):
        compress(d / "m.safetensors", tmp_path / "o.safetensors", recipe=r,
                 calibration=tmp_path / "bad.npz", workers=1)
    r2 = _recipe(tmp_path, 'scheme = "q4_0"\nmethod = "gptq"\n', "q.toml")
    with pytest.raises(RefquantError, match="method 'gptq' needs an integer scheme"):
        compress(d / "m.safetensors", tmp_path / "o.safetensors", recipe=r2,
                 calibration=d / "acts.npz", workers=1)
    assert not (tmp_path / "o.safetensors").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_hf_gptq_awq_run_the_methods_with_calibration_and_warn_without(model, tmp_path):
    d, w, acts = model
    with pytest.warns(UserWarning, match="without calibration data: writing round-to-nearest"):
        compress(d / "m.safetensors", tmp_path / "h0", scheme="gptq-int4-g128")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = compress(d / "m.safetensors", tmp_path / "h1", scheme="gptq-int4-g128",
                       calibration=d / "acts.npz")
        compress(d / "m.safetensors", tmp_path / "h2", scheme="awq-int4-g128",
                 calibration=d / "acts.npz")
    assert "GPTQ" in rep.recipe
    from refquant.compress.hf import compress_hf

    with pytest.raises(RefquantError, match="takes no calibration"):
        compress_hf(d / "m.safetensors", tmp_path / "h3", "ct-int8", calibration=d / "acts.npz")
    a = rio.load_arrays(tmp_path / "h0" / "model.safetensors")
    b = rio.load_arrays(tmp_path / "h1" / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.endswith("qweight"))


@pytest.mark.parametrize("out", ["o.safetensors", "o.gguf"])
def test_workers_give_the_one_worker_bytes(model, tmp_path, out):
    d, _, _ = model
    hs = []
    for n in (1, 2, 3):
        compress(d / "m.safetensors", tmp_path / f"{n}{out}", scheme="q4_0", workers=n)
        hs.append(_sha(tmp_path / f"{n}{out}"))
    assert hs[0] == hs[1] == hs[2]
    with pytest.raises(RefquantError, match="workers must be a positive int"):
        compress(d / "m.safetensors", tmp_path / "x.safetensors", scheme="q4_0", workers=0)


def test_sharded_workers_give_the_one_worker_bytes(tmp_path):
    rng = np.random.default_rng(3)
    w = {f"l{i}.weight": rng.normal(size=(16, 64)).astype(np.float32) for i in range(4)}
    (tmp_path / "in").mkdir()
    rio.save(w, tmp_path / "in" / "model.safetensors.index.json", max_shard_size=5000)
    for n in (1, 2):
        compress(tmp_path / "in", tmp_path / f"out{n}", scheme="int8", workers=n)
    f1 = sorted(os.listdir(tmp_path / "out1"))
    assert f1 == sorted(os.listdir(tmp_path / "out2")) and len(f1) > 2
    for f in f1:
        assert _sha(tmp_path / "out1" / f) == _sha(tmp_path / "out2" / f)


@pytest.mark.parametrize("out", ["o.safetensors", "o.gguf"])
def test_disk_full_is_a_refquant_error_naming_the_path(model, tmp_path, monkeypatch, out):
    from refquant.io import streaming

    d, _, _ = model
    target = "SafetensorsStreamWriter" if out.endswith("safetensors") else "GGUFStreamWriter"
    cls = getattr(streaming, target)
    orig = cls.write
    calls = []

    def full(self, name, a):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, name, a)

    monkeypatch.setattr(cls, "write", full)
    with pytest.raises(RefquantError, match=rf"cannot write '.*{out}': No space left on device"):
        compress(d / "m.safetensors", tmp_path / out, scheme="q8_0", workers=2)
    assert os.listdir(tmp_path) == []


def test_disk_full_at_the_last_flush_leaves_nothing(model, tmp_path, monkeypatch):
    d, _, _ = model

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RefquantError, match="No space left on device"):
        compress(d / "m.safetensors", tmp_path / "o.safetensors", scheme="q8_0", workers=1)
    assert os.listdir(tmp_path) == []


def test_permission_error_names_the_folder(model, tmp_path, monkeypatch):
    import tempfile

    d, _, _ = model
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.geteuid() == 0:  # root writes anyway: simulate the refusal
            def denied(*a, **k):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", denied)
        with pytest.raises(RefquantError, match=r"cannot create a file in '.*ro'.*Permission "
                                                "denied"):
            compress(d / "m.safetensors", ro / "o.safetensors", scheme="q8_0")
    finally:
        os.chmod(ro, 0o700)
    assert os.listdir(ro) == []


def test_cli_mixed_plan_calibration_and_workers(model, tmp_path, capsys):
    from refquant.cli import main

    d, _, _ = model
    rc = main(["compress", str(d / "m.safetensors"), "-o", str(tmp_path / "o.safetensors"),
               "--scheme", "mixed:4.5", "--save-plan", str(tmp_path / "p.toml"),
               "--workers", "2", "--calibration", str(d / "acts.npz")])
    out = capsys.readouterr().out
    assert rc == 0 and "mixed-precision plan: 4.5 bits/weight" in out and "hessian_diag" in out
    rc = main(["compress", str(d / "m.safetensors"), "-o", str(tmp_path / "p.safetensors"),
               "--recipe", str(tmp_path / "p.toml"), "--workers", "1", "-q"])
    assert rc == 0
    a = rio.load_arrays(tmp_path / "o.safetensors")
    b = rio.load_arrays(tmp_path / "p.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    rc = main(["compress", str(d / "m.safetensors"), "-o", str(tmp_path / "q.safetensors"),
               "--scheme", "int8", "--save-plan", str(tmp_path / "x.toml")])
    assert rc == 2 and "--save-plan saves the plan of --scheme mixed:B" in capsys.readouterr().err
    assert not (tmp_path / "x.toml").exists() and not (tmp_path / "q.safetensors").exists()


def test_without_a_threadsafe_numba_layer_one_thread_is_used(model, tmp_path, monkeypatch):
    from concurrent import futures

    import refquant.compress.pipeline as pl

    d, _, _ = model
    compress(d / "m.safetensors", tmp_path / "a.gguf", scheme="q4_0", workers=1)
    monkeypatch.setattr(pl, "_numba_threadsafe", lambda: False)

    def no_pool(*a, **k):
        raise AssertionError("a thread pool was started")

    monkeypatch.setattr(futures, "ThreadPoolExecutor", no_pool)
    compress(d / "m.safetensors", tmp_path / "b.gguf", scheme="q4_0", workers=2)
    assert _sha(tmp_path / "a.gguf") == _sha(tmp_path / "b.gguf")


@pytest.mark.parametrize("out", ["o.gguf", "o.safetensors", "sharded"])
def test_recipe_imatrix_quantizes_ggml_types_as_llama_quantize(model, tmp_path, out):
    from refquant.compat.ggml import quantize
    from refquant.io.imatrix import compute_imatrix, load_imatrix, save_imatrix

    d, w, acts = model
    save_imatrix(compute_imatrix({k: v for k, v in acts.items()}), tmp_path / "m.imatrix")
    imp = load_imatrix(tmp_path / "m.imatrix")
    r = _recipe(tmp_path, 'imatrix = "m.imatrix"\nscheme = "iq4_xs"\n')
    dst = tmp_path / (out if out != "sharded" else "shards")
    compress(d / "m.safetensors", dst, recipe=r, workers=2)
    if out == "sharded":
        got = rio.load_arrays(dst / "model.safetensors.index.json")
    else:
        got = rio.load_arrays(dst) if out.endswith("safetensors") else None
    n = "model.layers.0.mlp.up_proj.weight"
    want = quantize(w[n], "iq4_xs", imatrix=imp[n])
    plain = quantize(w[n], "iq4_xs")
    assert not np.array_equal(want, plain)
    if got is None:
        import gguf

        t = {t.name: t for t in gguf.GGUFReader(dst).tensors}[n]
        np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
    else:
        np.testing.assert_array_equal(got[n], want)


def test_mixed_preset_on_sharded_output_plans_the_whole_model(tmp_path):
    rng = np.random.default_rng(4)
    w = {f"l{i}.weight": (rng.normal(size=(16, 256)) * (i + 1)).astype(np.float32)
         for i in range(4)}
    (tmp_path / "in").mkdir()
    rio.save(w, tmp_path / "in" / "model.safetensors.index.json", max_shard_size=40000)
    rep = compress(tmp_path / "in", tmp_path / "out", scheme="mixed:4", workers=1)
    assert rep.plan.total_bits <= 4 * rep.plan.numel
    got = {r.name: r.scheme for r in rep.rows}
    assert got == rep.plan.choices()
    assert len(set(got.values())) > 1  # a real mix


def test_hqq_scheme_stores_hqqs_result(model, tmp_path):
    from refquant.compress.recipe import load_recipe
    from refquant.compress.schemes import get_scheme
    from refquant.quant.hqq import hqq_quantize

    d, w, _ = model
    rep = compress(d / "m.safetensors", tmp_path / "h.safetensors", scheme="hqq-int4-g64",
                   workers=2)
    assert {r.scheme for r in rep.rows} == {"hqq-int4-g64", "keep"}
    decompress(tmp_path / "h.safetensors", tmp_path / "hd.safetensors")
    got = rio.load_arrays(tmp_path / "hd.safetensors")
    for n in w:
        if n.endswith("proj.weight"):
            r = hqq_quantize(w[n], bits=4, group_size=64, axis=1)
            np.testing.assert_array_equal(got[n], np.asarray(r.dequantized, np.float32))
    assert get_scheme("hqq-int3-g32").unsupported((8, 48)) is not None
    with pytest.raises(RefquantError, match="2, 3, 4, 5, 6 or 8 bits"):
        get_scheme("hqq-int7-g64")
    with pytest.raises(RefquantError, match=r"line 1: HQQ .* is a scheme"):
        load_recipe(_recipe(tmp_path, 'method = "hqq"\nscheme = "int4-g128"\n'))


def test_mixed_preset_takes_the_list_of_schemes_to_choose_from(model, tmp_path, capsys):
    d, _, _ = model
    rep = compress(d / "m.safetensors", tmp_path / "x.safetensors", scheme="mixed:6:q4_0,q8_0",
                   workers=1)
    assert {r.scheme for r in rep.rows if r.scheme != "keep"} <= {"q4_0", "q8_0"}
    assert rep.plan.total_bits <= 6 * rep.plan.numel
    assert {lp.choice for lp in rep.plan.layers} == {"q4_0", "q8_0"}  # 6 bits: some of each
    for bad, match in (("mixed:5:q4_x", "q4_x"), ("mixed:5:q4_0,,q8_0", "empty name"),
                       ("mixed:5:q4_0,q4_0", "listed twice"), ("mixed:5:keep", "cannot be"),
                       ("mixed:5:", "mixed:B")):
        with pytest.raises(RefquantError, match=match):
            compress(d / "m.safetensors", tmp_path / "z.safetensors", scheme=bad)
    assert not (tmp_path / "z.safetensors").exists()
    from refquant.cli import main

    assert main(["compress", str(d / "m.safetensors"), "-o", str(tmp_path / "c.safetensors"),
                 "--scheme", "mixed:5:q4_k,q6_k,q8_0,f16", "--quiet"]) == 0
    got = rio.load_arrays(tmp_path / "c.safetensors")
    assert got.keys()


def test_preset_2_4_sparse_stores_half_the_values_and_a_bitmask(model, tmp_path):
    """--scheme 2:4-sparse: the same weights as --scheme 2:4, stored as compressed-tensors'
    sparse-24-bitmask encodes them (values and bitmask equal to its encoding of the dense
    pruned weight), 9/16 of the bytes for bfloat16 / float16, and decompress restores them."""
    from refquant.compress import decompress
    from refquant.io.layouts.ctsparse import sparse24_bitmask_tensors

    d, w, _ = model
    dense_rep = compress(d / "m.safetensors", tmp_path / "d.safetensors", scheme="2:4")
    rep = compress(d / "m.safetensors", tmp_path / "s.safetensors", scheme="2:4-sparse")
    dense = rio.load_arrays(tmp_path / "d.safetensors")
    got = rio.load_arrays(tmp_path / "s.safetensors")
    n = "model.layers.2.mlp.up_proj.weight"
    ct = sparse24_bitmask_tensors("x", dense[n])
    np.testing.assert_array_equal(got[n], ct["x.compressed"])
    np.testing.assert_array_equal(got[n + "_bitmask"], ct["x.bitmask"])
    rows = {r.name: r for r in rep.rows}
    drows = {r.name: r for r in dense_rep.rows}
    assert rows[n].scheme.startswith("sparse24-")
    assert rows[n].bytes_out * 16 == drows[n].bytes_out * 9 or dense[n].dtype == np.float32
    assert rows[n].sqnr_db == pytest.approx(drows[n].sqnr_db)
    decompress(tmp_path / "s.safetensors", tmp_path / "back.safetensors")
    back = rio.load_arrays(tmp_path / "back.safetensors")
    np.testing.assert_array_equal(back[n], np.asarray(dense[n], np.float32))
    with pytest.raises(RefquantError, match="no ggml type"):
        compress(d / "m.safetensors", tmp_path / "s.gguf", scheme="2:4-sparse")
