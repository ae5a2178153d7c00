"""
# 03 — Integer-only inference: from a float linear layer to a fixed-point multiplier

We take the bundled model's classifier head, a float linear layer
$y = W x + b$, and run it with integers only: int8 activations and weights, an
int32 bias and accumulator, and one 32-bit fixed-point multiplier per output
channel, exactly as TensorFlow Lite does. Then we show, on concrete inputs, why
PyTorch, ONNX and TFLite can disagree by one step.
"""

# %% [markdown]
# ## The formula
#
# Write every tensor as its affine code: $x = s_x (q_x - z_x)$ (activations,
# asymmetric int8), $W_{c\cdot} = s_{w,c}\, q_{w,c\cdot}$ (weights, symmetric
# per output channel $c$, int8 in $[-127, 127]$), $y = s_y (q_y - z_y)$. Then
#
# $$ s_y (q_{y,c} - z_y) = s_x s_{w,c} \sum_k q_{w,ck} (q_{x,k} - z_x) + b_c $$
#
# and with the bias quantized on the accumulator's scale,
# $q_{b,c} = \mathrm{round}(b_c / (s_x s_{w,c}))$ (int32, zero point 0):
#
# $$ q_{y,c} = z_y + M_c \cdot \underbrace{\Big(\sum_k q_{w,ck} (q_{x,k} - z_x) + q_{b,c}\Big)}_{\text{int32 accumulator}},
#    \qquad M_c = \frac{s_x\, s_{w,c}}{s_y}. $$
#
# Everything is an integer except $M_c$. Integer-only hardware writes it as
# $M = m \cdot 2^{e - 31}$ with a 31-bit significand $m \in [2^{30}, 2^{31})$
# (``frexp``), and computes $M \cdot \mathrm{acc}$ as a 64-bit product and a
# rounding right shift: $\mathrm{acc} \cdot m / 2^{31 - e}$.

# %% [markdown]
# ## A worked example by hand
#
# Take $\mathrm{acc} = 1000$, $M = 0.046875 = 0.75 \cdot 2^{-4}$ and $z_y = -5$.
#
# * ``frexp``: $0.046875 = 0.75 \cdot 2^{-4}$, so $m = 0.75 \cdot 2^{31} = 1610612736$ and $e = -4$.
# * gemmlowp's first rounding, ``SaturatingRoundingDoublingHighMul``:
#   $1000 \cdot m / 2^{31} = 750$ exactly.
# * the second, ``RoundingDivideByPOT`` by $2^4$: $750 / 16 = 46.875 \to 47$.
# * add the zero point: $q_y = 47 - 5 = 42$, inside $[-128, 127]$.

# %%
import numpy as np

from refquant.compat import tflite
from refquant.quant.integer import multiply_by_quantized_multiplier, quantize_multiplier

m, e = quantize_multiplier(0.046875)
print("significand", m, "shift", e)
hand = 42
q_hand = int(multiply_by_quantized_multiplier(1000, m, e)) - 5
print("1000 * 0.046875 - 5 ->", q_hand)
assert (m, e) == (1610612736, -4) and q_hand == hand

# %% [markdown]
# ## The bundled model's head, integer-only
#
# The head maps the 128 hidden features of the residual MLP to 10 logits. We
# calibrate the activation and output ranges on the calibration images
# (min-max, asymmetric int8, as the TFLite converter does), quantize the weights
# per channel and symmetrically, the bias to int32, and compute the multipliers.

# %%
import refquant as rq
from refquant.models import digits_mlp_forward, load_digits_mlp

p = load_digits_mlp()
W, b = p["head.weight"], p["head.bias"]
_, hid_cal = digits_mlp_forward(p, p["x_calib"], return_hidden=True)
_, hid = digits_mlp_forward(p, p["x_test"], return_hidden=True)
h_cal, h = hid_cal[-1], hid[-1]          # the head's input
y_float = h @ W.T + b                   # the float head

qx = rq.choose_qparams(h_cal, dtype="int8", symmetric=False)
qy = rq.choose_qparams(h_cal @ W.T + b, dtype="int8", symmetric=False)
s_x, z_x = np.float32(qx.scale), int(qx.zero_point)
s_y, z_y = np.float32(qy.scale), int(qy.zero_point)
s_w = (np.abs(W).max(axis=1) / 127).astype(np.float32)

q_x = tflite.affine_quantize(h, s_x, z_x)                        # activations: std::round
q_w = rq.quantize(W, s_w, axis=0, dtype="int8", narrow_range=True, rounding="half_away")
q_b = tflite.symmetric_bias_quantize(b, s_x, s_w)                # int32, scale s_x * s_w
mult, shift = tflite.populate_convolution_quantization_params(s_x, s_w, s_y)
print(f"s_x = {s_x:.6g}, z_x = {z_x}; s_y = {s_y:.6g}, z_y = {z_y}")
print("M_c  =", (np.float64(s_x) * s_w / np.float64(s_y))[:4], "...")
print("m_c  =", mult[:4], " e_c =", shift[:4])

q_y = tflite.fully_connected(q_x, q_w, q_b, input_offset=-z_x, output_offset=z_y,
                             output_multiplier=mult, output_shift=shift)
y_int = (q_y.astype(np.float64) - z_y) * s_y
err_steps = np.abs(y_int - y_float) / s_y
print(f"integer-only vs float: max error {err_steps.max():.2f} output steps, "
      f"mean {err_steps.mean():.3f}")
agree = np.mean(np.argmax(q_y, axis=1) == np.argmax(y_float, axis=1))
print(f"same predicted digit as the float head on {100 * agree:.1f}% of the test images")

# %% [markdown]
# The accumulator never comes near $2^{31}$: with 128 products of at most
# $127 \cdot 255$ the bound is checked exactly, and the float head's error is
# dominated by rounding $x$ and $W$, not by the multiplier.

# %%
from refquant.quant.integer import accumulator_range, int32_accumulation_fits, integer_matmul

print("worst-case accumulator:", accumulator_range(128, "int8", (-127, 127), z_x, 0))
assert int32_accumulation_fits(128, "int8", (-127, 127), z_x, 0)
acc = integer_matmul(q_x, q_w.T, z_x) + q_b
print("largest |accumulator| seen:", int(np.abs(acc).max()))

# %%
import matplotlib

matplotlib.use("Agg")
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

fig, axs = plt.subplots(1, 2, figsize=(9, 3.6))
axs[0].scatter(y_float.ravel(), y_int.ravel(), s=3)
lims = np.array([y_float.min(), y_float.max()])
axs[0].plot(lims, lims, "k:", lw=0.8)
axs[0].set_xlabel("float logit")
axs[0].set_ylabel("integer-only logit (dequantized)")
axs[1].hist((y_int - y_float).ravel() / s_y, bins=50)
axs[1].set_xlabel("error in output steps")
fig.tight_layout()
fig.savefig(OUT / "03_integer_head.png")

# %% [markdown]
# ## Why PyTorch, ONNX and TFLite disagree by one step
#
# **1. Dividing by the scale, or multiplying by its reciprocal.** ONNX computes
# $x / s$ in float32; PyTorch multiplies by the float32 reciprocal
# (pytorch#139464). For $x = 0.273939937$, $s = 0.00214854861$ the quotient is
# $127.49999$ but $x \cdot \mathrm{fl}(1/s)$ rounds to exactly $127.5$, which
# half-even rounding sends up.

# %%
x0, s0 = np.float32([0.273939937]), np.float32(0.00214854861)
onnx_q = rq.quantize(x0, s0, dtype="uint8", precision="float32")
torch_q = rq.quantize(x0, s0, dtype="uint8", precision="float32", scale_op="reciprocal")
print("x / s =", x0 / s0, "-> ONNX", onnx_q, "| x * (1/s) =", x0 * (np.float32(1) / s0),
      "-> PyTorch", torch_q)
assert (int(onnx_q[0]), int(torch_q[0])) == (127, 128)

# %%
# Check against the peers themselves where they are installed.
try:
    import torch

    t = torch.quantize_per_tensor(torch.tensor(x0), float(s0), 0, torch.quint8).int_repr()
    assert int(t[0]) == 128
    print("torch.quantize_per_tensor:", int(t[0]))
except ImportError:
    print("torch not installed: skipped")
try:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [float(s0)]),
         helper.make_tensor("z", TensorProto.UINT8, [], [0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    y_ort = ort.InferenceSession(model.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x0})[0]
    assert int(y_ort[0]) == 127
    print("onnxruntime QuantizeLinear:", int(y_ort[0]))
except ImportError:
    print("onnxruntime not installed: skipped")

# %% [markdown]
# **2. Ties.** TFLite rounds with ``std::round`` (ties away from zero), ONNX and
# PyTorch half to even: $x = 2.5\,s$ is code 3 in TFLite and 2 in ONNX.
#
# **3. Rounding the multiplier's product once or twice.** gemmlowp rounds
# $\mathrm{acc}\cdot m / 2^{31}$ to an integer, then rounds again in the
# right shift; builds with ``TFLITE_SINGLE_ROUNDING`` round once. For
# $\mathrm{acc} = 3$, $m = 2^{31} - 1$, $e = -1$ the exact value is
# $1.4999999993$: single rounding gives 1, double rounding first makes
# $2.9999999986 \to 3$, then $3 / 2 = 1.5 \to 2$.
#
# **4. Float or fixed-point requantization.** onnxruntime's QLinear kernels
# multiply the accumulator by $M$ in float32 and round half to even; TFLite uses
# the fixed-point multiplier. On the head, count how often each pair disagrees:

# %%
from refquant.quant.integer import requantize

print("TFLite ties:", tflite.affine_quantize(np.float32([2.5]), 1.0, 0),
      "ONNX ties:", rq.quantize(np.float32([2.5]), 1.0))
print("double vs single rounding:", int(multiply_by_quantized_multiplier(3, 2**31 - 1, -1)),
      int(multiply_by_quantized_multiplier(3, 2**31 - 1, -1, single_rounding=True)))
acc32 = acc.astype(np.int64)
m_real = np.float64(s_x) * s_w.astype(np.float64) / np.float64(s_y)
fixed_double = requantize(acc32, m_real, z_y, axis=1)
fixed_single = requantize(acc32, m_real, z_y, axis=1, single_rounding=True)
float_even = requantize(acc32, m_real, z_y, axis=1, method="float")
assert np.array_equal(fixed_double, q_y)
for name, other in (("single rounding", fixed_single), ("float32, half even", float_even)):
    d = other.astype(int) - fixed_double
    print(f"fixed-point (double) vs {name}: {np.count_nonzero(d)} of {d.size} outputs differ, "
          f"by at most {np.abs(d).max()} step")

# %% [markdown]
# **5. One runtime, three kernels.** LiteRT itself requantizes FULLY_CONNECTED
# three ways, depending on which CPU kernel runs the layer. Its reference kernel
# multiplies by the real $M$ in double and rounds half away from zero. Its builtin
# kernel (ruy) rounds twice, the second time half *up*. XNNPACK, its default
# delegate, rounds a float32 product half to even. Take $M = 1/16$ exactly
# ($s_{in} = 1/4$, $s_w = 1$, $s_{out} = 4$) and $\mathrm{acc} = 7, -8$, so
# $\mathrm{acc}\,M = 0.4375, -0.5$:

# %%
acc_x, one = np.int8([[7], [-8]]), np.int8([[1]])
kernels = {
    "reference": tflite.fully_connected(acc_x, one, input_scale=np.float32(0.25),
                                        filter_scale=np.float32(1), output_scale=np.float32(4)),
    "optimized": tflite.fully_connected(acc_x, one, output_multiplier=2**30, output_shift=-3,
                                        kernel="optimized"),
    "xnnpack": tflite.fully_connected(acc_x, one, kernel="xnnpack",
                                      requantization_scale=tflite.xnnpack_requantization_scale(
                                          np.float32(0.25), np.float32(1), np.float32(4))),
}
for name, y in kernels.items():
    print(f"LiteRT {name:9}: {y[:, 0].tolist()}")
# 0.4375 -> 0 once (reference, xnnpack); twice: SRDHM gives 4, then (4 + 4) >> 3 = 1 (optimized).
# -0.5 -> -1 away from zero (reference); 0 half up (optimized) and half to even (xnnpack).
assert [y[:, 0].tolist() for y in kernels.values()] == [[0, -1], [1, 0], [0, 0]]

# %% [markdown]
# Every difference is one step, and each is a named, reproducible choice:
# ``refquant.identify`` finds which one a foreign kernel made, and
# ``docs/peers.md`` lists them with inputs. The hand-worked value still holds:

# %%
assert int(multiply_by_quantized_multiplier(1000, 1610612736, -4)) - 5 == hand == 42
