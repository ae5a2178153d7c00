"""SparseGPT: one-shot pruning with the OBS weight update (Frantar & Alistarh 2023).

The same machinery as GPTQ (:mod:`refquant.quant.gptq`): the layer Hessian
:math:`H = \\frac2n \\sum x x^T`, dead columns, damping, the upper Cholesky factor
``U`` of :math:`H^{-1}`, and a column loop in blocks of ``blocksize`` with lazy
updates. Instead of rounding, a column's pruned weights are set to 0 and the
error is fed back to the later columns:

.. math:: e_j = (w_j - \\tilde w_j) / U_{jj},\\qquad
          W_{:, j:} \\mathrel{-}= e_j U_{j, j:}

The mask is chosen from the OBS saliency :math:`w^2 / U_{jj}^2`
(:math:`[H^{-1}]_{jj}` of the remaining columns after the Cholesky elimination):

- unstructured: once per block of ``blocksize`` columns, from the block's weights
  as they are at the block's start; the ``k`` lowest saliencies of the block are
  pruned;
- N:M: when the loop reaches the first column of each group of ``m`` columns,
  the ``n`` lowest saliencies of every row inside the group (current weights).

With ``bits`` the kept weights are quantized in the same loop (joint
sparsification + quantization, section 3.5 of the paper): :math:`\\tilde w_j` is
the fake-quantized weight (static min-max group qparams from the original
weights, as :func:`refquant.quant.gptq.gptq`) or 0 where pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from ..quant.gptq import (
    GPTQ_BITS,
    _check_hessian,
    _check_weight,
    _fake_quantize,
    _group_qparams,
    _precision,
    _prepared_factor,
)
from ._arrays import check_prune_nm

__all__ = ["SparseGPTResult", "sparsegpt", "SPARSEGPT_MASK_RULES"]

SPARSEGPT_MASK_RULES = ("count", "llmcompressor")


@dataclass(frozen=True)
class SparseGPTResult:
    """What :func:`sparsegpt` returns.

    Attributes
    ----------
    weight : array (out, in)
        Pruned (and, with ``bits``, fake-quantized) weights after the OBS updates.
    mask : bool array (out, in)
        True where a weight was pruned.
    loss : float
        :math:`\\sum_j \\|e_j\\|^2 / 2`.
    codes, scale, zero_point : arrays or None
        With ``bits``: codes of every weight (pruned weights hold the code of 0),
        and the group qparams (as :class:`refquant.quant.gptq.GPTQResult`).
    dampening_frac, damping_retries, rtn_fallback
        As :class:`refquant.quant.gptq.GPTQResult` (fallback: ``U = I``, plain
        magnitude pruning without updates).
    """

    weight: np.ndarray
    mask: np.ndarray
    loss: float
    codes: np.ndarray | None
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    dampening_frac: float
    damping_retries: int
    rtn_fallback: bool


def _lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k lowest values of a 1-D array (ties: lower index first)."""
    out = np.zeros(values.shape, bool)
    out[np.argsort(values, kind="stable")[:k]] = True
    return out


def sparsegpt(
    weight,
    hessian,
    *,
    sparsity=0.5,
    prune_n=0,
    prune_m=0,
    blocksize=128,
    dampening_frac=0.01,
    precision="float64",
    mask_rule="count",
    bits=None,
    symmetric=True,
    group_size=-1,
    hessian_factor=None,
    max_damping_retries=8,
) -> SparseGPTResult:
    """Prune ``weight`` (out, in) with SparseGPT on the layer Hessian (in, in).

    Parameters
    ----------
    weight, hessian : array_like
    sparsity : float
        Fraction in [0, 1] pruned per block (unstructured); ignored for N:M.
    prune_n, prune_m : int
        N:M sparsity: ``prune_n`` of every ``prune_m`` consecutive weights of a
        row are pruned (2, 4 for 2:4). ``0, 0``: unstructured.
    blocksize : int
    dampening_frac : float
    precision : "float64" or "float32"
        float32 follows llmcompressor's ``sgpt_sparsify.sparsify_weight``.
    mask_rule : "count" or "llmcompressor"
        Unstructured mask of a block of ``N`` saliencies. ``"count"``: the
        ``floor(N * sparsity)`` lowest (ties: lower flat index first), so 0 %
        prunes nothing. ``"llmcompressor"``: every saliency ``<= t`` with ``t``
        the sorted saliencies' element ``floor(N * sparsity)``: one weight more
        than the count, plus every tie of ``t`` (at 0 % the smallest saliency
        of each block is still pruned; at 100 % the peer indexes out of range,
        here it prunes all).
    bits, symmetric, group_size
        Joint quantization of the kept weights (None: prune only).
    hessian_factor : array_like (in, in), optional
        A ready upper factor ``U`` of the damped :math:`H^{-1}` (torch's own, say).
    max_damping_retries : int

    Returns
    -------
    SparseGPTResult

    Formula
    -------
    saliency :math:`w_{ij}^2 / U_{jj}^2`; :math:`e_j = (w_j - \\tilde w_j)/U_{jj}`;
    :math:`W_{:, j:} \\mathrel{-}= e_j U_{j, j:}`; loss :math:`\\tfrac12 \\sum_j \\|e_j\\|^2`.

    Reference
    ---------
    Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
    Pruned in One-Shot", ICML 2023, Algorithm 1; llmcompressor 0.14.0.1
    ``modifiers/pruning/sparsegpt/sgpt_sparsify.py`` ``sparsify_weight`` (N:M by
    ``torch.topk(largest=False)``, whose order among ties is unspecified; here
    ties go to the lower column).
    """
    w0 = _check_weight(weight)
    rows, cols = w0.shape
    h0 = _check_hessian(hessian, cols)
    dt = _precision(precision)
    if mask_rule not in SPARSEGPT_MASK_RULES:
        raise RefquantError(f"mask_rule must be one of {SPARSEGPT_MASK_RULES}, got {mask_rule!r}")
    check_prune_nm(prune_n, prune_m)
    if prune_n == 0 and not (isinstance(sparsity, (int, float)) and 0 <= sparsity <= 1):
        raise RefquantError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) \
            or blocksize < 1:
        raise RefquantError(f"blocksize must be a positive int, got {blocksize!r}")
    if prune_m and blocksize % prune_m:
        raise RefquantError(
            f"blocksize {blocksize} is not a multiple of prune_m {prune_m}; N:M groups "
            "must not straddle blocks"
        )
    if not (isinstance(dampening_frac, (int, float)) and 0 <= dampening_frac < math.inf):
        raise RefquantError(f"dampening_frac must be a finite number >= 0, got {dampening_frac!r}")
    if bits is not None and (isinstance(bits, bool) or bits not in GPTQ_BITS):
        raise RefquantError(f"bits must be None or one of {GPTQ_BITS}, got {bits!r}")

    W = w0.astype(dt, copy=True)
    H = h0.astype(dt, copy=True)
    codes = scale = zp = None
    if bits is not None:
        gs = cols if group_size in (None, -1) else int(group_size)
        if gs < 1:
            raise RefquantError(f"group_size must be a positive int, -1 or None, got {group_size!r}")
        n_groups = -(-cols // gs)
        scale = np.empty((rows, n_groups), np.float32)
        zp = np.zeros((rows, n_groups), np.int64)
        for g in range(n_groups):
            scale[:, g], zp[:, g] = _group_qparams(
                w0[:, g * gs:(g + 1) * gs].astype(np.float32), bits, symmetric)
        g_idx = np.arange(cols) // gs
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        codes = np.empty((rows, cols), np.int64)

    U, frac, retries, fallback = _prepared_factor(H, W, hessian_factor, dampening_frac,
                                                  max_damping_retries, dt)

    mask = np.zeros((rows, cols), bool)
    loss_rows = np.zeros(rows, dt)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        E1 = np.zeros_like(W1)
        L1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diagonal(U1)
        m1 = mask[:, i1:i2]
        if prune_n == 0:
            sal = (W1 * W1 / (d1 * d1)[None, :]).ravel()
            k = int(sal.size * sparsity)
            if mask_rule == "count":
                m1[...] = _lowest(sal, k).reshape(W1.shape)
            else:
                srt = np.sort(sal)
                m1[...] = (sal <= srt[min(k, sal.size - 1)]).reshape(W1.shape)
        for i in range(i2 - i1):
            if prune_n and i % prune_m == 0:
                sal = W1[:, i:i + prune_m] ** 2 / (d1[i:i + prune_m] ** 2)[None, :]
                order = np.argsort(sal, axis=1, kind="stable")[:, :prune_n]
                np.put_along_axis(m1[:, i:i + prune_m], order, True, axis=1)
            w = W1[:, i]
            if bits is not None:
                j = i1 + i
                g = g_idx[j]
                c, q = _fake_quantize(w, scale[:, g], zp[:, g], qmin, qmax, symmetric)
                codes[:, j] = np.where(m1[:, i], zp[:, g], c)
                q = np.where(m1[:, i], dt(0), q)
            else:
                q = np.where(m1[:, i], dt(0), w)
            err = (w - q) / U1[i, i]
            Q1[:, i] = q
            E1[:, i] = err
            L1[:, i] = err * err
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
        W[:, i1:i2] = Q1
        loss_rows += np.sum(L1, axis=1) / dt(2)
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return SparseGPTResult(
        weight=W, mask=mask, loss=float(np.sum(loss_rows)), codes=codes, scale=scale,
        zero_point=zp, dampening_frac=frac, damping_retries=retries, rtn_fallback=fallback,
    )
