"""Hadamard matrices against compressed-tensors 0.20 (``transform/utils/hadamard.py``).

* ``deterministic_hadamard_matrix(n)`` (Sylvester) equals refquant's default
  matrix for every power of two, bit for bit;
* ``random_hadamard_matrix(n, gen=...)``: refquant's :func:`rotation_matrix`
  given compressed-tensors' sign draw (``torch.randint(0, 2, (n,), generator)``)
  and its stored base (``_fetch_hadamard_divisor``: Sloane's matrix of the
  largest stored order K with n / K a power of two) gives the same matrix bit
  for bit (after the ``sqrt(n)`` that ``HadamardTransform`` divides by), for
  powers of two and for 12·2^k, 20·2^k, 28·2^k, 40, 172·2^k ... sizes;
* the transform applied to the rotated weights as compressed-tensors'
  ``HadamardTransform`` does (``W @ R`` in float32, divided by ``sqrt(n)``)
  agrees with refquant's fast transform to float32 rounding (compressed-tensors
  multiplies by the explicit matrix, a different summation order).

Paley's matrices (refquant's own bases for non-powers of two) are other
Hadamard matrices than Sloane's: the test shows both are orthogonal and differ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import import_peer

from refquant.quant import rotation as rot


@pytest.fixture(scope="module")
def ct_hadamard():
    import_peer("compressed_tensors")
    torch = import_peer("torch")
    from compressed_tensors.transform.utils import hadamard

    return torch, hadamard


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256, 512, 2048])
def test_deterministic_hadamard_matrix_is_sylvester_bit_for_bit(ct_hadamard, n):
    torch, h = ct_hadamard
    for dtype in (torch.bfloat16, torch.float32):
        got = h.deterministic_hadamard_matrix(n, dtype).float().numpy()
        assert np.array_equal(rot.hadamard_matrix(n, dtype=np.float32), got)


def _ct_signs(torch, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g, dtype=torch.float32).numpy() * 2 - 1


@pytest.mark.parametrize("n", [12, 20, 24, 28, 40, 48, 96, 160, 172, 256, 344, 512, 688,
                               1024, 1536])
def test_random_hadamard_matrix_bit_for_bit_given_its_signs_and_base(ct_hadamard, n):
    torch, h = ct_hadamard
    seed = 1234 + n
    for dtype in (torch.bfloat16, torch.float32):
        want = h.random_hadamard_matrix(n, dtype, gen=torch.Generator().manual_seed(seed))
        base = h._fetch_hadamard_divisor(n, torch.float32).numpy()
        signs = _ct_signs(torch, n, seed)
        unnorm = rot.rotation_matrix(n, signs=signs, base=base) * math.sqrt(n)
        assert np.array_equal(np.rint(unnorm).astype(np.float32), want.float().numpy())
        # the exact ±1 matrix, without the sqrt round trip
        m = signs[:, None] * rot.hadamard_matrix(n, base=base, dtype=np.float64)
        assert np.array_equal(m.astype(np.float32), want.float().numpy())


@pytest.mark.parametrize("n", [12, 28, 256, 1024])
def test_rotated_weight_close_to_compressed_tensors_transform(ct_hadamard, n):
    torch, h = ct_hadamard
    rng = np.random.default_rng(n)
    w = rng.standard_normal((16, n)).astype(np.float32)
    seed = 7
    ct_mat = h.random_hadamard_matrix(n, torch.float32, gen=torch.Generator().manual_seed(seed))
    scale = torch.tensor(n, dtype=torch.float64).sqrt()
    want = ((torch.from_numpy(w) @ ct_mat) / scale).numpy()  # HadamardTransform.forward
    base = h._fetch_hadamard_divisor(n, torch.float32).numpy()
    got = rot.rotate(w, signs=_ct_signs(torch, n, seed), base=base)
    assert got.dtype == np.float32
    bound = 4 * (math.log2(n) + base.shape[0]) * np.finfo(np.float32).eps \
        * np.linalg.norm(w, axis=1, keepdims=True)
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("k", [12, 20, 28, 36, 60, 108, 140])
def test_paley_bases_differ_from_sloanes_but_both_are_hadamard(ct_hadamard, k):
    torch, h = ct_hadamard
    sloane = h._fetch_hadamard_divisor(k, torch.float32).numpy().astype(np.int64)
    paley = rot.paley_hadamard(k).astype(np.int64)
    assert np.array_equal(sloane @ sloane.T, k * np.eye(k, dtype=np.int64))
    assert np.array_equal(paley @ paley.T, k * np.eye(k, dtype=np.int64))
    assert not np.array_equal(sloane, paley)
