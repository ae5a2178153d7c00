"""Which tensors get which scheme: presets, rules by name pattern, and TOML recipes.

A recipe is an ordered list of rules; the first rule whose pattern matches a
tensor's name decides its scheme (``"keep"`` leaves it as it is). After the
rules come the defaults users expect of a weight compressor (llama-quantize's
and llm-compressor's): tensors that are not floating point, 1-D tensors (norms,
biases), embeddings and the output head are kept unless a rule names them.

A recipe file (TOML)::

    scheme = "q4_0"                 # the default scheme for the weights left over

    [[rules]]
    pattern = "*.mlp.down_proj.weight"
    scheme = "q8_0"
    required = true                 # an error if no tensor matches

    [[rules]]
    pattern = "lm_head.weight"
    scheme = "keep"

    [[rules]]                       # the method and pruning axes (refquant.compress.methods)
    pattern = "*.self_attn.*_proj.weight"
    scheme = "int4-g128"
    method = "gptq"                 # rtn (default), gptq, awq: need calibration below
    prune = "2:4"                   # N:M, "50%", "rows:25%"; score = magnitude, wanda, sparsegpt

    calibration = "acts.npz"        # top level: per-layer inputs keyed by tensor name
    imatrix = "model.imatrix"       # top level: llama.cpp importance matrix (ggml types)
    method = "rtn"                  # top level: the default method / prune / score

A mixed-precision plan saved as TOML (:meth:`refquant.quant.mixed.MixedPrecisionPlan.save`)
is a recipe: one required rule per layer, and a ``[mixed_precision]`` table the
recipe keeps for the record. Presets ``2:4`` (magnitude 2:4 pruning, weights kept
in their float type) and ``mixed:B`` (a plan at ``B`` bits per weight on average,
:mod:`refquant.compress.mixed`) need no file.

Patterns are shell globs (``fnmatch``, case-sensitive) or, written as
``re:...``, regular expressions matched against the whole name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import RefquantError
from .llamacpp import LLAMA_CPP_PRESETS
from .schemes import KEEP, get_scheme

__all__ = ["Recipe", "Rule", "LlamaCppRecipe", "load_recipe", "preset_recipe", "PRESETS",
           "LLAMA_CPP_PRESETS"]

#: named presets: the scheme the weights get (ggml presets: llama.cpp's type names)
PRESETS = ("int8", "int4-g128", "int4-g32", "fp8", "fp8-channel", "fp8-block", "nf4", "q8_0",
           "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "mxfp4",
           "mxfp8_e4m3")

_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|wte|wpe|tok_embeddings|token_embd|word_embeddings"
                        r"|embeddings?)(\.|$)")
_HEAD = re.compile(r"(^|\.)(lm_head|output|classifier|head)\.weight$")


@dataclass
class Rule:
    """Tensors whose name matches ``pattern`` get ``scheme``."""

    pattern: str
    scheme: str
    required: bool = False
    line: int | None = None
    matched: int = 0
    method: str | None = None
    prune: str | None = None
    score: str | None = None

    def matches(self, name: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def where(self) -> str:
        return f"line {self.line}" if self.line else f"rule {self.pattern!r}"


@dataclass
class Recipe:
    """An ordered list of rules and the default scheme for the weights they leave."""

    scheme: str = KEEP
    rules: list[Rule] = field(default_factory=list)
    keep_embeddings: bool = True
    keep_head: bool = True
    source: str = "flags"
    method: str = "rtn"
    prune: str | None = None
    score: str = "magnitude"
    calibration: str | None = None
    imatrix: str | None = None

    def treatment(self, name: str):
        """The method / pruning of tensor ``name`` (:class:`~.methods.Treatment`), or None."""
        from .methods import Treatment

        for r in self.rules:
            if r.matches(name):
                t = Treatment(r.method or self.method, r.prune if r.prune is not None else
                              self.prune, r.score or self.score,
                              f"recipe {self.source}: {r.where()}")
                break
        else:
            t = Treatment(self.method, self.prune, self.score, f"recipe {self.source}")
        return None if t.method == "rtn" and t.prune is None else t

    def decide(self, name: str, dtype, shape) -> tuple[str, str]:
        """(scheme name or "keep", why) for one tensor."""
        for r in self.rules:
            if r.matches(name):
                r.matched += 1
                return r.scheme, f"rule {r.where()}"
        if getattr(dtype, "kind", "f") != "f" and str(dtype) != "bfloat16":
            return KEEP, f"not floating point ({dtype})"
        if len(shape) < 2:
            return KEEP, "1-D (norms and biases stay in full precision)"
        if self.keep_embeddings and _EMBEDDING.search(name):
            return KEEP, "embedding"
        if self.keep_head and _HEAD.search(name):
            return KEEP, "output head"
        return self.scheme, "default"

    def check_required(self) -> None:
        for r in self.rules:
            if r.required and not r.matched:
                raise RefquantError(f"recipe {self.source}: {r.where()}: pattern {r.pattern!r} "
                                    "is required but matches no tensor")


@dataclass
class LlamaCppRecipe(Recipe):
    """llama-quantize's per-tensor mix for a preset (``q4_k_m``, ...): see
    :mod:`refquant.compress.llamacpp`. The types depend on the whole model (layer
    counters, tied embeddings), so the pipeline asks :func:`~.llamacpp.select_types`
    for all tensors at once instead of calling :meth:`decide`."""

    preset: str = "q4_k_m"

    def decide(self, name, dtype, shape):  # pragma: no cover - the pipeline never calls it
        raise RefquantError("a llama.cpp preset chooses types for the whole model at once")


def preset_recipe(scheme: str, output_format: str | None = None) -> Recipe:
    """The recipe of ``--scheme NAME``: the defaults above and ``NAME`` for every other weight.

    llama.cpp's mixes (``q4_k_m``, ``q5_k_m``, ``q3_k_m``, ``q4_k_s``, ``q5_k_s``) always
    follow llama-quantize's type selection; ``q6_k``, ``q8_0`` and ``q4_0`` follow it when
    the output is GGUF (the embeddings and the output head quantized as llama-quantize
    does) and are plain schemes with the defaults above otherwise.
    """
    if scheme == "2:4":
        return Recipe(scheme="dense", prune="2:4", source="--scheme 2:4 (magnitude 2:4 pruning)")
    if scheme == "2:4-sparse":
        return Recipe(scheme="sparse24", prune="2:4",
                      source="--scheme 2:4-sparse (magnitude 2:4 pruning, stored 2:4-compressed)")
    if isinstance(scheme, str) and scheme.startswith("mixed:"):
        from .mixed import MixedRecipe

        return MixedRecipe.from_preset(scheme, output_format)
    if scheme in LLAMA_CPP_PRESETS and (output_format == "gguf" or scheme not in PRESETS):
        return LlamaCppRecipe(scheme=scheme, source=f"--scheme {scheme} (llama-quantize's mix)",
                              preset=scheme)
    get_scheme(scheme)  # a clear error for an unknown name
    return Recipe(scheme=scheme, source=f"--scheme {scheme}")


_TOP_KEYS = {"scheme", "rules", "keep_embeddings", "keep_head", "method", "prune", "score",
             "calibration", "imatrix", "mixed_precision"}
_RULE_KEYS = {"pattern", "scheme", "required", "method", "prune", "score"}


def _scheme_ok(name, where):
    if name in (KEEP, "dense", "sparse24"):
        return
    try:
        get_scheme(name)
    except RefquantError as e:
        raise RefquantError(f"{where}: {e}") from None


def _line_of(text: str, needle: str, start: int = 0) -> int | None:
    i = text.find(needle, start)
    return None if i < 0 else text.count("\n", 0, i) + 1


def load_recipe(path) -> Recipe:
    """Read a TOML recipe; unknown keys, bad values and conflicting rules name their line."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RefquantError(f"recipe {str(p)!r}: cannot read: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RefquantError(f"recipe {str(p)!r}: not valid TOML: {e}") from None
    src = str(p)
    for k in data:
        if k not in _TOP_KEYS:
            raise RefquantError(f"recipe {src}: line {_line_of(text, k)}: unknown key {k!r} "
                                f"(known: {', '.join(sorted(_TOP_KEYS))})")
    scheme = data.get("scheme", KEEP)
    if not isinstance(scheme, str):
        raise RefquantError(f"recipe {src}: line {_line_of(text, 'scheme')}: scheme must be a "
                            f"string, got {scheme!r}")
    _scheme_ok(scheme, f"recipe {src}: line {_line_of(text, 'scheme')}")
    from .methods import check_treatment

    top = {k: data.get(k, d) for k, d in (("method", "rtn"), ("prune", None),
                                          ("score", "magnitude"))}
    check_treatment(top["method"], top["prune"], top["score"],
                    f"recipe {src}: line {_line_of(text, 'method') or _line_of(text, 'prune')}")
    calib = data.get("calibration")
    if calib is not None:
        if not isinstance(calib, str):
            raise RefquantError(f"recipe {src}: line {_line_of(text, 'calibration')}: "
                                f"calibration must be a path string, got {calib!r}")
        calib = str(p.parent / calib) if not Path(calib).is_absolute() else calib
    imx = data.get("imatrix")
    if imx is not None:
        if not isinstance(imx, str):
            raise RefquantError(f"recipe {src}: line {_line_of(text, 'imatrix')}: imatrix must "
                                f"be a path string, got {imx!r}")
        imx = str(p.parent / imx) if not Path(imx).is_absolute() else imx
    for flag in ("keep_embeddings", "keep_head"):
        if not isinstance(data.get(flag, True), bool):
            raise RefquantError(f"recipe {src}: line {_line_of(text, flag)}: {flag} must be "
                                "true or false")
    rules_raw = data.get("rules", [])
    if not isinstance(rules_raw, list):
        raise RefquantError(f"recipe {src}: 'rules' must be an array of tables ([[rules]])")
    rules, seen, pos = [], {}, 0
    for i, r in enumerate(rules_raw):
        line = _line_of(text, "[[rules]]", pos)
        if line is not None:
            pos = text.find("[[rules]]", pos) + 1
        where = f"recipe {src}: line {line}" if line else f"recipe {src}: rule {i + 1}"
        if not isinstance(r, dict):
            raise RefquantError(f"{where}: a rule must be a table")
        for k in r:
            if k not in _RULE_KEYS:
                raise RefquantError(f"{where}: unknown key {k!r} in [[rules]] (known: "
                                    f"{', '.join(sorted(_RULE_KEYS))})")
        pat, sch = r.get("pattern"), r.get("scheme")
        if not isinstance(pat, str) or not pat:
            raise RefquantError(f"{where}: pattern must be a non-empty string, got {pat!r}")
        if not isinstance(sch, str):
            raise RefquantError(f"{where}: scheme must be a string, got {sch!r}")
        _scheme_ok(sch, where)
        check_treatment(r.get("method", top["method"]), r.get("prune", top["prune"]),
                        r.get("score", top["score"]), where)
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise RefquantError(f"{where}: pattern {pat!r} is not a regular expression: "
                                    f"{e}") from None
        if pat in seen and seen[pat][0] != sch:
            raise RefquantError(f"{where}: pattern {pat!r} conflicts with the rule at line "
                                f"{seen[pat][1]} ({seen[pat][0]!r} vs {sch!r})")
        seen[pat] = (sch, line)
        req = r.get("required", False)
        if not isinstance(req, bool):
            raise RefquantError(f"{where}: required must be true or false, got {req!r}")
        rules.append(Rule(pat, sch, req, line, method=r.get("method"), prune=r.get("prune"),
                          score=r.get("score")))
    return Recipe(scheme=scheme, rules=rules, keep_embeddings=data.get("keep_embeddings", True),
                  keep_head=data.get("keep_head", True), source=src, calibration=calib,
                  imatrix=imx, **top)
