"""The base layer: helpers that ``formats/``, ``quant/``, ``prune/``, ``kernels/`` and
``compat/`` all use (rounding by mode, the granularity of quantization parameters).

It imports nothing from refquant but :mod:`refquant._errors`, so every package above
may import it and no import points up or round.
"""
