"""The numba.cuda kernels against their references, under the CUDA simulator.

numba-cuda decides between the simulator and a real GPU once per process, when
numba.cuda is first imported, and other tests in the same pytest process may
have imported numba already. So the kernel checks (the ``_case_*`` functions
below) run in one child process started with ``NUMBA_ENABLE_CUDASIM=1``
(``python test_cuda.py --simulator``), which reports each case's traceback or
success as JSON; each test here asserts its case. A second child, without the
simulator, compiles the kernels to PTX (numba-cuda needs NVVM and NVRTC for
that, not a GPU or a driver) and reports what the PTX contains.

Shapes stay tiny (at most 16 x 16 x 40 elements, or 16 x 16 x 200 bits): the
simulator runs every CUDA thread as a Python thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from refquant import RefquantError

ROOT = Path(__file__).resolve().parents[2]
MARK = "@@refquant-cuda-results@@"
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
needs_numba_cuda = pytest.mark.skipif(
    not HAVE_NUMBA_CUDA, reason="numba-cuda is not installed (pip install 'refquant[cuda]')"
)


# --------------------------------------------------------------------------
# helpers shared by the cases (they run in the child process)


def _sequential_float32(x, w):
    """The int4 kernel's documented order: acc = +0.0; acc = fl(acc + fl(x_k * w_k))."""
    acc = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for kk in range(x.shape[1]):
        acc = acc + x[:, kk, None] * w[None, :, kk]
    return acc


def _pack_signs_uint64(v):
    """Bit j of word w = v[64 w + j] < 0, padding bits zero (NumPy packbits, little bit order)."""
    bits = np.packbits(v < 0, axis=-1, bitorder="little")
    pad = (-bits.shape[-1]) % 8
    bits = np.pad(bits, [(0, 0), (0, pad)])
    return np.ascontiguousarray(bits).view("<u8").astype(np.uint64)


def _int_values(draw, st, dtype, shape):
    info = np.iinfo(dtype)
    fill = draw(st.sampled_from(["random", "min", "max", "zero"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if fill == "random":
        return rng.integers(info.min, info.max + 1, shape).astype(dtype)
    return np.full(shape, {"min": info.min, "max": info.max, "zero": 0}[fill], dtype)


# --------------------------------------------------------------------------
# the cases (child process, simulator on)


def _case_int8_equals_integer_matmul_on_drawn_shapes_and_extremes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from refquant.kernels.cuda import _config, matmul_int
    from refquant.quant.integer import integer_matmul

    @settings(max_examples=16, deadline=None, database=None)
    @given(st.data())
    def check(data):
        m, n = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))
        k = data.draw(st.integers(1, 40))
        a_dt = data.draw(st.sampled_from([np.uint8, np.int8]))
        b_dt = data.draw(st.sampled_from([np.uint8, np.int8]))
        a = _int_values(data.draw, st, a_dt, (m, k))
        b = _int_values(data.draw, st, b_dt, (k, n))
        # zero points anywhere in, or at the ends of, the operand's range
        za = np.array(
            data.draw(st.lists(st.sampled_from([-128, 0, 127, 255, 3]), min_size=m, max_size=m)),
            np.int32,
        )
        zb = np.array(
            data.draw(st.lists(st.sampled_from([-128, 0, 127, 255, -7]), min_size=n, max_size=n)),
            np.int32,
        )
        got = matmul_int(a, b, za, zb, tiles=_config.SMALL["int8"])
        want = integer_matmul(a, b, za, zb, accumulate="int32_checked")
        assert got.dtype == np.int32 and got.shape == (m, n)
        np.testing.assert_array_equal(got, want)

    check()


def _case_int8_default_tiles_minus128_squared_summed_over_k():
    from refquant.kernels.cuda import matmul_int
    from refquant.quant.integer import integer_matmul

    # -128 * -128 over K = 40, plus a u8 x s8 random block: one launch at the default tiles
    a = np.full((5, 40), -128, np.int8)
    b = np.full((40, 3), -128, np.int8)
    za, zb = np.zeros(5, np.int32), np.zeros(3, np.int32)
    np.testing.assert_array_equal(matmul_int(a, b, za, zb), np.full((5, 3), 16384 * 40))
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (7, 33)).astype(np.uint8)
    b = rng.integers(-128, 128, (33, 6)).astype(np.int8)
    za = rng.integers(0, 256, 7).astype(np.int32)
    zb = rng.integers(-128, 128, 6).astype(np.int32)
    np.testing.assert_array_equal(
        matmul_int(a, b, za, zb), integer_matmul(a, b, za, zb, accumulate="int32_checked")
    )


def _case_int8_result_wraps_like_int32_when_the_exact_value_does_not_fit():
    from refquant.kernels.cuda import _config, matmul_int
    from refquant.quant.integer import integer_matmul

    a = np.array([[0, 255, 7], [255, 255, 255]], np.uint8)
    b = np.array([[1, -128], [127, -128], [-1, 0]], np.int8)
    za = np.array([-(2**20), 300], np.int32)
    zb = np.array([2**14, -(2**14)], np.int32)
    want = integer_matmul(a, b, za, zb, accumulate="int32_wrap")
    assert not np.array_equal(integer_matmul(a, b, za, zb), want)  # the exact value overflows
    np.testing.assert_array_equal(matmul_int(a, b, za, zb, tiles=_config.SMALL["int8"]), want)


def _case_int8_is_exact_at_the_edges_of_int32():
    from refquant.kernels.cuda import _config, matmul_int
    from refquant.quant.integer import integer_matmul

    small = _config.SMALL["int8"]
    # K = 1: (a - za) in {2^31 - 1, 2^31}, (b - zb) in {1, -1}
    a, b = np.zeros((2, 1), np.uint8), np.array([[1, 0]], np.int8)
    za, zb = np.array([1 - 2**31, -(2**31)], np.int32), np.array([0, 1], np.int32)
    got = matmul_int(a, b, za, zb, tiles=small)
    # int32 max, -max and min exactly; the one exact 2^31 wraps to -2^31
    np.testing.assert_array_equal(got, [[2**31 - 1, 1 - 2**31], [-(2**31), -(2**31)]])
    np.testing.assert_array_equal(integer_matmul(a, b, za, zb)[1, 0], 2**31)
    np.testing.assert_array_equal(got, integer_matmul(a, b, za, zb, accumulate="int32_wrap"))
    # 2^16 * 2^10 = 2^26 per term: K = 31 gives 2^31 - 2^26, K = 32 wraps to -2^31
    for k, want in ((31, 2**31 - 2**26), (32, -(2**31))):
        a = np.full((3, k), -128, np.int8)
        b = np.full((k, 2), 100, np.uint8)
        za = np.full(3, -128 - 2**16, np.int32)
        zb = np.full(2, 100 - 2**10, np.int32)
        got = matmul_int(a, b, za, zb, tiles=small)
        np.testing.assert_array_equal(got, np.full((3, 2), want, np.int32))
        np.testing.assert_array_equal(got, integer_matmul(a, b, za, zb, accumulate="int32_wrap"))


def _case_dp4a_device_function_is_a_wrapping_byte_dot():
    from refquant.kernels.cuda._runtime import dp4a_function

    rng = np.random.default_rng(4)
    words = rng.integers(0, 2**32, (64, 2), dtype=np.uint64).astype(np.uint32)
    words[:4] = [[0xFFFFFFFF, 0xFFFFFFFF], [0x80808080, 0x80808080], [0, 0xFFFFFFFF], [1, 2]]
    accs = rng.integers(-(2**31), 2**31, 64).astype(np.int32)
    accs[:2] = [2**31 - 1, -(2**31)]
    for a_signed in (False, True):
        for b_signed in (False, True):
            dp4a = dp4a_function(a_signed, b_signed, False)
            for (wa, wb), c in zip(words, accs, strict=True):
                ba = np.array([wa], "<u4").view(np.int8 if a_signed else np.uint8)
                bb = np.array([wb], "<u4").view(np.int8 if b_signed else np.uint8)
                exact = int(c) + int(np.dot(ba.astype(np.int64), bb.astype(np.int64)))
                want = (exact + 2**31) % 2**32 - 2**31
                assert int(dp4a(wa, wb, c)) == want, (a_signed, b_signed, wa, wb, c)


def _case_int8_device_arrays_in_give_a_device_array_out():
    from numba import cuda

    from refquant.kernels.cuda import _config, matmul_int

    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (3, 9)).astype(np.int8)
    b = rng.integers(0, 256, (9, 4)).astype(np.uint8)
    za, zb = np.full(3, 2, np.int32), np.full(4, 128, np.int32)
    host = matmul_int(a, b, za, zb, tiles=_config.SMALL["int8"])
    assert isinstance(host, np.ndarray)
    dev = matmul_int(cuda.to_device(a), b, cuda.to_device(za), zb, tiles=_config.SMALL["int8"])
    assert not isinstance(dev, np.ndarray) and getattr(dev, "__cuda_ndarray__", False)
    np.testing.assert_array_equal(dev.copy_to_host(), host)


def _case_int8_empty_k_gives_zeros_and_empty_m_an_empty_result():
    from refquant.kernels.cuda import matmul_int

    za, zb = np.full(2, 5, np.int32), np.full(3, -4, np.int32)
    got = matmul_int(np.zeros((2, 0), np.uint8), np.zeros((0, 3), np.int8), za, zb)
    np.testing.assert_array_equal(got, np.zeros((2, 3), np.int32))
    got = matmul_int(np.zeros((0, 4), np.uint8), np.zeros((4, 3), np.int8), za[:0], zb)
    assert got.shape == (0, 3) and got.dtype == np.int32


def _case_binary_equals_plus_minus_one_float_matmul_on_drawn_shapes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from refquant.kernels.cuda import _config, matmul_binary

    @settings(max_examples=14, deadline=None, database=None)
    @given(
        st.integers(1, 16),
        st.integers(1, 16),
        st.sampled_from([1, 63, 64, 65, 127, 128, 129, 200]),
        st.sampled_from(["random", "all_negative", "all_positive"]),
        st.integers(0, 2**32 - 1),
    )
    def check(m, n, k, fill, seed):
        rng = np.random.default_rng(seed)
        x = rng.choice([-1.0, 1.0], (m, k))
        y = rng.choice([-1.0, 1.0], (n, k))
        if fill != "random":  # all sign bits set: words with the top bit set
            x[:] = -1.0 if fill == "all_negative" else 1.0
        a, b = _pack_signs_uint64(x), _pack_signs_uint64(y)
        got = matmul_binary(a, b, k, tiles=_config.SMALL["binary"])
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, x @ y.T)

    check()


def _case_binary_default_tiles_and_device_arrays():
    from numba import cuda

    from refquant.kernels.cuda import matmul_binary

    rng = np.random.default_rng(5)
    x = rng.choice([-1.0, 1.0], (6, 130))
    y = rng.choice([-1.0, 1.0], (5, 130))
    x[0] = -1.0
    a, b = _pack_signs_uint64(x), _pack_signs_uint64(y)
    np.testing.assert_array_equal(matmul_binary(a, b, 130), x @ y.T)
    dev = matmul_binary(cuda.to_device(a), cuda.to_device(b), 130)
    np.testing.assert_array_equal(dev.copy_to_host(), x @ y.T)


def _int4_problem(rng, m, n, groups, group_size, zeros_kind):
    k = groups * group_size
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 0] = 0.0
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    codes[0, :] = 15
    scales = np.exp2(rng.uniform(-8, 0, (n, groups))).astype(np.float32)
    if zeros_kind == "integer":
        zeros = rng.integers(0, 16, (n, groups)).astype(np.float32)
    else:
        zeros = rng.uniform(0, 15, (n, groups)).astype(np.float32)
    return x, codes, scales, zeros


def _int4_check(got, x, codes, scales, zeros, group_size):
    # the documented float32 order, bit for bit
    w32 = (codes.astype(np.float32) - np.repeat(zeros, group_size, 1)) * np.repeat(
        scales, group_size, 1
    )
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _sequential_float32(x, w32))
    # against float64 dequantize-then-matmul: |err| <= gamma_(K+2) * sum |x| |w|
    w64 = (codes.astype(np.float64) - np.repeat(zeros, group_size, 1)) * np.repeat(
        scales.astype(np.float64), group_size, 1
    )
    x64 = x.astype(np.float64)
    k = x.shape[1]
    u = 2.0**-24
    gamma = (k + 2) * u / (1 - (k + 2) * u)
    with np.errstate(invalid="ignore"):
        exact = x64 @ w64.T
        bound = gamma * (np.abs(x64) @ np.abs(w64).T)
    finite = np.isfinite(exact)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    err = np.abs(got.astype(np.float64)[finite] - exact[finite])
    assert np.all(err <= bound[finite]), (err - bound[finite]).max()


def _case_int4_follows_its_float32_order_and_bound_on_drawn_shapes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from refquant.kernels.cuda import _config, matmul_int4

    @settings(max_examples=12, deadline=None, database=None)
    @given(
        st.integers(1, 16),
        st.integers(1, 16),
        st.sampled_from([(1, 40), (5, 8), (4, 10), (3, 13), (1, 1), (2, 16)]),
        st.sampled_from(["integer", "float"]),
        st.sampled_from([None, None, np.nan, np.inf, -np.inf]),
        st.integers(0, 2**32 - 1),
    )
    def check(m, n, groups_and_size, zeros_kind, special, seed):
        groups, group_size = groups_and_size
        rng = np.random.default_rng(seed)
        x, codes, scales, zeros = _int4_problem(rng, m, n, groups, group_size, zeros_kind)
        if special is not None:  # NaN / Inf propagate to the same outputs as in the loop
            x[m - 1, rng.integers(x.shape[1])] = special
        got = matmul_int4(x, codes, scales, zeros, group_size, tiles=_config.SMALL["int4"])
        _int4_check(got, x, codes, scales, zeros, group_size)

    check()


def _case_int4_default_tiles_and_device_arrays():
    from numba import cuda

    from refquant.kernels.cuda import matmul_int4

    rng = np.random.default_rng(6)
    x, codes, scales, zeros = _int4_problem(rng, 3, 5, 2, 8, "float")
    got = matmul_int4(x, codes, scales, zeros, 8)
    _int4_check(got, x, codes, scales, zeros, 8)
    dev = matmul_int4(cuda.to_device(x), cuda.to_device(codes), scales, zeros, 8)
    np.testing.assert_array_equal(dev.copy_to_host(), got)


def _case_public_functions_run_backend_cuda_with_the_same_results():
    # refquant.kernels' public functions reach these kernels with backend="cuda"
    from refquant.kernels import matmul_binary, matmul_int, matmul_int4, pack_signs
    from refquant.kernels.packing import pack_nibbles

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (5, 37)).astype(np.uint8)
    b = rng.integers(-128, 128, (37, 6)).astype(np.int8)
    za = rng.integers(0, 256, 5)
    np.testing.assert_array_equal(matmul_int(a, b, za, -3, backend="cuda"),
                                  matmul_int(a, b, za, -3, backend="numpy"))
    x = np.where(rng.random((4, 70)) < 0.5, -1.0, 1.0)
    w = np.where(rng.random((3, 70)) < 0.5, -1.0, 1.0)
    np.testing.assert_array_equal(matmul_binary(pack_signs(x), pack_signs(w), 70, backend="cuda"),
                                  (x @ w.T).astype(np.int32))
    codes = rng.integers(0, 16, (6, 32)).astype(np.uint8)
    xs = rng.standard_normal((2, 32)).astype(np.float32)
    sc = rng.random((6, 2)).astype(np.float32)
    got = matmul_int4(xs, pack_nibbles(codes), sc, group_size=16, backend="cuda")
    ref = matmul_int4(xs, pack_nibbles(codes), sc, group_size=16, backend="numpy")
    exact = xs.astype(np.float64) @ ((codes - 8.0) * np.repeat(sc, 16, axis=1)).T
    bound = 34 * 2.0**-24 / (1 - 34 * 2.0**-24) * (np.abs(xs) @ np.abs(
        (codes - 8.0) * np.repeat(sc, 16, axis=1)).T)
    assert np.all(np.abs(got - exact) <= bound) and np.all(np.abs(ref - exact) <= bound)


CASES = sorted(name for name in dict(globals()) if name.startswith("_case_"))


def _run_cases():
    results = {}
    for name in CASES:
        try:
            globals()[name]()
            results[name] = None
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
            results[name] = traceback.format_exc()
    return results


# --------------------------------------------------------------------------
# the PTX check (child process, simulator off, no GPU needed)


def _ptx_report():
    try:
        from numba import cuda

        from refquant.kernels.cuda import _config, _runtime, binary, int4, int8

        for module in (int8, binary, int4):
            module.cuda = cuda  # what the kernel builders bind on first use
        report = {}
        for a_signed, b_signed, sig_a, sig_b in (
            (False, True, "uint8", "int8"),
            (True, True, "int8", "int8"),
        ):
            dp4a = _runtime.dp4a_function(a_signed, b_signed, True)
            _, gemm = int8._sources(a_signed, b_signed, _config.INT8_TILES, dp4a, cuda, jit=False)
            sig = (
                f"void({sig_a}[:, ::1], {sig_b}[:, ::1], int32[::1], int32[::1], "
                "int64[::1], int64[::1], int32[:, ::1])"
            )
            report[f"int8_{sig_a}_{sig_b}"] = cuda.compile_ptx(gemm, sig, cc=_config.PTX_CC)[0]
        gemm = binary._source(_config.BINARY_TILES, cuda, jit=False)
        sig = "void(uint64[:, ::1], uint64[:, ::1], int64, int32[:, ::1])"
        report["binary"] = cuda.compile_ptx(gemm, sig, cc=_config.PTX_CC)[0]
        gemm = int4._source(_config.INT4_TILES, _runtime.float_ops(True), cuda, jit=False)
        sig = (
            "void(float32[:, ::1], uint8[:, ::1], float32[:, ::1], float32[:, ::1], int64, "
            "float32[:, ::1])"
        )
        report["int4"] = cuda.compile_ptx(gemm, sig, cc=_config.PTX_CC)[0]
    except Exception as exc:  # noqa: BLE001
        text = f"{type(exc).__name__}: {exc}"
        missing = ("nvvm", "nvrtc", "libdevice", "DynamicLibNotFound", "CUDA toolkit")
        if any(word.lower() in text.lower() for word in missing):
            return {
                "skip": "numba-cuda cannot compile PTX here (no NVVM / NVRTC: install "
                f"numba-cuda[cu13]): {text[:300]}"
            }
        return {"error": traceback.format_exc()}
    return {"ptx": report}


# --------------------------------------------------------------------------
# the tests (parent process)


class _Child:
    """One child process (``--simulator`` or ``--ptx``), its output in temporary files."""

    def __init__(self, flag, *, simulator, tmp):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        if simulator:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        self.flag = flag
        self.out = open(tmp / f"{flag[2:]}.out", "w+")  # closed by the `children` fixture
        self.err = open(tmp / f"{flag[2:]}.err", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), flag],
            stdout=self.out,
            stderr=self.err,
            text=True,
            env=env,
            cwd=str(ROOT),
        )

    def result(self):
        try:
            code = self.proc.wait(timeout=600)
        finally:
            self.stop()
        self.out.seek(0)
        self.err.seek(0)
        stdout, stderr = self.out.read(), self.err.read()
        for line in reversed(stdout.splitlines()):
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        pytest.fail(
            f"the {self.flag} child process reported nothing (exit {code}):\n"
            f"{stdout[-3000:]}\n{stderr[-5000:]}"
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Both children, started together so that they overlap; killed at the end if unread."""
    tmp = tmp_path_factory.mktemp("cuda")
    started = {
        "simulator": _Child("--simulator", simulator=True, tmp=tmp),
        "ptx": _Child("--ptx", simulator=False, tmp=tmp),
    }
    yield started
    for child in started.values():
        child.stop()
        child.out.close()
        child.err.close()


@pytest.fixture(scope="module")
def simulated(children):
    return children["simulator"].result()


@pytest.fixture(scope="module")
def ptx(children):
    report = children["ptx"].result()
    if "skip" in report:
        pytest.skip(report["skip"])
    if "error" in report:
        pytest.fail(report["error"])
    return report["ptx"]


def _assert_case(results, name):
    __tracebackhide__ = True
    assert name in results, f"{name} did not run in the simulator child"
    if results[name] is not None:
        pytest.fail(f"{name} failed under the CUDA simulator:\n{results[name]}", pytrace=False)


@needs_numba_cuda
def test_int8_gemm_equals_integer_matmul_on_drawn_shapes_dtypes_and_zero_points(simulated):
    _assert_case(simulated, "_case_int8_equals_integer_matmul_on_drawn_shapes_and_extremes")


@needs_numba_cuda
def test_int8_gemm_at_default_tiles_sums_minus128_squared_exactly(simulated):
    _assert_case(simulated, "_case_int8_default_tiles_minus128_squared_summed_over_k")


@needs_numba_cuda
def test_int8_gemm_wraps_like_int32_when_the_exact_value_overflows(simulated):
    _assert_case(simulated, "_case_int8_result_wraps_like_int32_when_the_exact_value_does_not_fit")


@needs_numba_cuda
def test_int8_gemm_reaches_int32_max_and_min_exactly(simulated):
    _assert_case(simulated, "_case_int8_is_exact_at_the_edges_of_int32")


@needs_numba_cuda
def test_dp4a_fallback_is_the_wrapping_signed_or_unsigned_byte_dot(simulated):
    _assert_case(simulated, "_case_dp4a_device_function_is_a_wrapping_byte_dot")


@needs_numba_cuda
def test_int8_gemm_returns_a_device_array_for_device_operands(simulated):
    _assert_case(simulated, "_case_int8_device_arrays_in_give_a_device_array_out")


@needs_numba_cuda
def test_int8_gemm_with_empty_k_or_m(simulated):
    _assert_case(simulated, "_case_int8_empty_k_gives_zeros_and_empty_m_an_empty_result")


@needs_numba_cuda
def test_binary_gemm_equals_plus_minus_one_matmul_on_drawn_shapes(simulated):
    _assert_case(simulated, "_case_binary_equals_plus_minus_one_float_matmul_on_drawn_shapes")


@needs_numba_cuda
def test_binary_gemm_at_default_tiles_and_on_device_arrays(simulated):
    _assert_case(simulated, "_case_binary_default_tiles_and_device_arrays")


@needs_numba_cuda
def test_int4_gemm_is_its_float32_order_bit_for_bit_and_within_the_bound(simulated):
    _assert_case(simulated, "_case_int4_follows_its_float32_order_and_bound_on_drawn_shapes")


@needs_numba_cuda
def test_int4_gemm_at_default_tiles_and_on_device_arrays(simulated):
    _assert_case(simulated, "_case_int4_default_tiles_and_device_arrays")


@needs_numba_cuda
def test_public_functions_run_backend_cuda_with_the_same_results(simulated):
    _assert_case(simulated, "_case_public_functions_run_backend_cuda_with_the_same_results")


@needs_numba_cuda
def test_every_simulator_case_has_a_test(simulated):
    asserted = {
        line.split('"')[1]
        for line in Path(__file__).read_text().splitlines()
        if line.strip().startswith("_assert_case(simulated, ")
    }
    assert set(CASES) == asserted == set(simulated)


@needs_numba_cuda
def test_int8_ptx_uses_dp4a_with_the_operands_signedness(ptx):
    assert "dp4a.u32.s32" in ptx["int8_uint8_int8"]
    assert "dp4a.s32.s32" in ptx["int8_int8_int8"]
    assert "dp4a.u32.s32" not in ptx["int8_int8_int8"]
    for text in (ptx["int8_uint8_int8"], ptx["int8_int8_int8"]):
        assert "bar.sync" in text  # the shared-memory tiles are synchronised


@needs_numba_cuda
def test_binary_ptx_uses_64_bit_popc(ptx):
    assert "popc.b64" in ptx["binary"]


@needs_numba_cuda
def test_int4_ptx_multiplies_and_adds_without_fma(ptx):
    text = ptx["int4"]
    assert "mul.rn.f32" in text and "add.rn.f32" in text
    assert "fma.rn.f32" not in text


@needs_numba_cuda
def test_kernels_ptx_has_no_float64_and_no_local_memory(ptx):
    # int32 + popc / uint64 mixes that numba promotes to float64 would show here
    for name, text in ptx.items():
        assert ".f64" not in text, name
        assert "ld.local" not in text and "st.local" not in text, name


def test_importing_the_cuda_kernels_imports_no_numba_cuda():
    code = (
        "import sys, refquant.kernels.cuda; "
        "print(any(m == 'numba_cuda' or m.startswith(('numba.cuda', 'numba_cuda.')) "
        "for m in sys.modules))"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "False"


# bad input is refused before numba.cuda is imported, so these run in this process


def test_int8_kernel_refuses_int16_operands():
    from refquant.kernels.cuda import matmul_int

    z = np.zeros(2, np.int32)
    with pytest.raises(RefquantError, match="uint8 or int8"):
        matmul_int(np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), z, z)


def test_int8_kernel_refuses_mismatched_k():
    from refquant.kernels.cuda import matmul_int

    z = np.zeros(2, np.int32)
    with pytest.raises(RefquantError, match="K=3 but b has K=4"):
        matmul_int(np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), z, z)


def test_binary_kernel_refuses_signed_words():
    from refquant.kernels.cuda import matmul_binary

    with pytest.raises(RefquantError, match="b_packed must be uint64"):
        matmul_binary(np.zeros((2, 1), np.uint64), np.zeros((2, 1), np.int64), 64)


def test_int4_kernel_refuses_a_group_size_that_does_not_divide_k():
    from refquant.kernels.cuda import matmul_int4

    x = np.zeros((2, 10), np.float32)
    codes = np.zeros((3, 10), np.uint8)
    s = np.ones((3, 3), np.float32)
    with pytest.raises(RefquantError, match="group_size 3 does not divide K=10"):
        matmul_int4(x, codes, s, s, 3)


if __name__ == "__main__":
    if sys.argv[1:] == ["--simulator"]:
        assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        print(MARK + json.dumps(_run_cases()))
    elif sys.argv[1:] == ["--ptx"]:
        print(MARK + json.dumps(_ptx_report()))
    else:
        sys.exit("usage: test_cuda.py --simulator | --ptx (pytest runs it)")
