"""Compress whole checkpoints: recipes, the streaming pipeline and its report.

``refquant.compress.compress(src, dst, scheme="q4_0")`` (the ``refquant
compress`` command) reads any checkpoint refquant reads and writes a compressed
safetensors or GGUF file one tensor at a time, returning a
:class:`~refquant.compress.report.CompressReport`; ``decompress`` restores the
floats.
"""

from .hf import HF_SCHEMES, compress_hf
from .llamacpp import LLAMA_CPP_PRESETS, select_types
from .pipeline import compress, decompress, plan
from .recipe import PRESETS, LlamaCppRecipe, Recipe, Rule, load_recipe, preset_recipe
from .report import CompressReport, TensorRow
from .schemes import get_scheme

__all__ = ["compress", "decompress", "plan", "PRESETS", "LLAMA_CPP_PRESETS", "Recipe",
           "LlamaCppRecipe", "Rule", "load_recipe", "preset_recipe", "select_types",
           "CompressReport", "TensorRow", "get_scheme", "HF_SCHEMES", "compress_hf"]
