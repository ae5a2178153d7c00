"""A restricted pickle interpreter: pickle's opcodes, without pickle's code execution.

Unpickling runs code: ``GLOBAL`` imports any attribute of any module and
``REDUCE`` calls it with arguments from the stream, so ``os.system("...")`` is
three opcodes away. :func:`restricted_load` does not use :mod:`pickle`'s
unpickler at all. It walks the opcode stream with :func:`pickletools.genops` (which
only *parses*: a length prefix of 2**60 fails as a short read, nothing is
allocated for it) and keeps its own stack, memo and mark stack. The only things a
stream can name are the keys of the ``allowed`` table it is given; each maps to a
plain Python value or an :class:`Allowed` wrapper around a validating function
written by refquant. Everything else -- a global outside the table, ``INST`` /
``OBJ`` / ``NEWOBJ`` on anything but an allowed class, ``BUILD`` on anything but a
dict, ``SETITEM`` on a non-dict, extension codes, out-of-band buffers -- raises
:class:`~refquant.RefquantError` naming what was refused.

Reference: CPython ``Lib/pickle.py`` (``_Unpickler.load_*``, the semantics of each
opcode) and ``Lib/pickletools.py`` (the opcode table); PyTorch
``torch/_weights_only_unpickler.py`` (the same idea inside torch, whose allowlist
refquant's torch reader mirrors).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import sys
from collections import OrderedDict
from collections.abc import Callable

from .._errors import RefquantError

__all__ = ["Allowed", "restricted_load", "describe", "check_hashable_depth", "MAX_KEY_DEPTH",
           "built_budget"]


class Allowed:
    """A callable a pickle may ``REDUCE`` (or ``NEWOBJ``): refquant's validating stand-in.

    ``fn(*args)`` must itself check its arguments and raise RefquantError.
    ``as_class`` allows ``NEWOBJ`` / ``BUILD``-style use as a class.
    """

    __slots__ = ("name", "fn", "as_class")

    def __init__(self, name: str, fn: Callable, as_class: bool = False):
        self.name, self.fn, self.as_class = name, fn, as_class

    def __repr__(self):
        return f"<allowed {self.name}>"


class _Mark:
    pass


_SAFE_KEY = (str, int, float, bool, bytes, type(None))


def describe(obj, depth: int = 0) -> str:
    """A short, non-recursive description of a pickled value for error messages."""
    if isinstance(obj, str | bytes):
        return repr(obj[:40]) + ("..." if len(obj) > 40 else "")
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 128:
        # repr of an int beyond 4300 digits raises ValueError (int max str digits)
        return f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, int | float | bool | type(None)):
        s = repr(obj)
        return s if len(s) < 40 else s[:37] + "..."
    if isinstance(obj, Allowed):
        return obj.name
    return type(obj).__name__


def _fail(path, msg):
    return RefquantError(f"{path}: pickle refused: {msg}")


#: Deepest tuple nesting a hashed value (dict key, set member) may have. CPython's
#: tuple hash recurses without a depth check: hashing a tuple nested a million
#: deep (one TUPLE1 opcode per level) overflows the C stack.
MAX_KEY_DEPTH = 64


def check_hashable_depth(path, k, what="a dict key"):
    """Refuse a tuple / frozenset nested deeper than :data:`MAX_KEY_DEPTH` (iteratively)."""
    todo = [(k, 0)]
    while todo:
        x, depth = todo.pop()
        if isinstance(x, tuple | frozenset):
            if depth >= MAX_KEY_DEPTH:
                raise _fail(path, f"{what} nested deeper than {MAX_KEY_DEPTH} levels")
            todo.extend((y, depth + 1) for y in x)


def _check_key(path, k):
    check_hashable_depth(path, k)
    todo = [k]
    while todo:
        x = todo.pop()
        if isinstance(x, tuple):
            todo.extend(x)
        elif not isinstance(x, _SAFE_KEY):
            raise _fail(path, f"a dict key of type {type(x).__name__} (only str, int, float, bool, bytes, None, tuples)")


def built_budget(pickle_bytes: int) -> int:
    """Bytes that ``REDUCE`` / ``NEWOBJ`` calls may build in all, for a pickle of ``pickle_bytes``.

    Without the memo, every argument a callable gets was spelled out in the
    stream, and what the allowed callables build is a small multiple of their
    arguments (``_codecs.encode(s)`` copies ``s``; an OrderedDict costs ~95 bytes
    a pair, each pair at least ~3 bytes of stream). The memo lets one argument (a
    4 MiB string, a 300k-pair list) be passed again and again for a few bytes of
    ``BINGET`` each: 1,000 ``_codecs.encode`` calls on one memoised 4 MiB string
    built 4 GB from a 4 KB deflated pickle; 200 ``OrderedDict(items)`` on one
    300k-pair list ran for minutes, then exhausted memory. Real checkpoints pass
    each string and list once (torch shares storages, which build nothing); 8x
    the stream plus 4 MiB leaves room for that, and bounds the memory of any
    pickle by a multiple of its size.
    """
    return 8 * pickle_bytes + (4 << 20)


def _built_size(obj) -> int:
    # shallow: the items of a built container already existed (they came from the
    # stream), so only the container is new; objects that keep new containers
    # (refquant's LazyTensor and its size / stride tuples) count them in __sizeof__
    try:
        return sys.getsizeof(obj)
    except TypeError:  # pragma: no cover - every object refquant builds has a size
        return 64


def restricted_load(source, *, allowed: dict, persistent_load: Callable | None, path="<pickle>",
                    max_ops: int | None = None, refusal_hints: dict | None = None,
                    max_built: int | None = None):
    """Interpret one pickle from ``source`` (bytes or a readable file at the pickle).

    Parameters
    ----------
    source : bytes, memoryview or file-like with ``read``/``readline``/``tell``
    allowed : dict of str to object
        ``"module.name"`` -> the value ``GLOBAL`` / ``STACK_GLOBAL`` pushes.
    persistent_load : callable or None
        Called with the persistent id (``BINPERSID`` / ``PERSID``); ``None`` refuses them.
    path : str
        Named in every error.
    max_ops : int, optional
        Refuse streams with more opcodes (a bound on work; default: no bound
        beyond the stream's length).
    refusal_hints : dict of str to str, optional
        ``"module.name"`` -> why that global is refused, added to the error.
    max_built : int, optional
        Bound on the bytes that ``REDUCE`` / ``NEWOBJ`` calls may build in all
        (``sys.getsizeof`` of each result, summed); default :func:`built_budget`
        of the bytes from the stream's position to the end of ``source``.

    Returns
    -------
    object
        The unpickled value; the stream is left just after ``STOP``.
    """
    f = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) else source
    if max_built is None:
        try:
            left = len(source) - (0 if f is not source else f.tell())
        except (TypeError, AttributeError, OSError, ValueError):
            left = 0
        max_built = built_budget(max(left, 0))
    built = 0
    stack: list = []
    marks: list = []
    memo: dict = {}

    def pop():
        if not stack or stack[-1] is _Mark:
            raise _fail(path, "stack underflow (malformed pickle)")
        return stack.pop()

    def pop_mark():
        if not marks:
            raise _fail(path, "MARK expected but none is open (malformed pickle)")
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def resolve(module, name, py2_names=False):
        if not isinstance(module, str) or not isinstance(name, str):
            raise _fail(path, f"global with non-string name {describe(module)}.{describe(name)}")
        key = f"{module}.{name}"
        if py2_names:
            # torch's _read_global_instruction maps Python 2 names of protocol-2
            # pickles (__builtin__.set -> builtins.set) with _compat_pickle's tables
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        mapped = f"{module}.{name}"
        if mapped not in allowed:
            shown = key if mapped == key else f"{key} (= {mapped})"
            hint = (refusal_hints or {}).get(mapped)
            raise _fail(path, f"global {shown!r} is not in the allowlist" + (f": {hint}" if hint else ""))
        return allowed[mapped]

    def call(fn, args, how):
        nonlocal built
        if not isinstance(fn, Allowed):
            raise _fail(path, f"{how} on {describe(fn)}, which is not an allowed callable")
        if not isinstance(args, tuple):
            raise _fail(path, f"{how} {fn.name} with arguments of type {type(args).__name__}")
        try:
            out = fn.fn(*args)
        except RefquantError:
            raise
        except (TypeError, ValueError, OverflowError, KeyError, IndexError, RecursionError) as e:
            # RecursionError: no allowed callable recurses on purpose; a deeply
            # nested argument must still end as a RefquantError
            raise _fail(path, f"{how} {fn.name}{describe(args)}: {type(e).__name__}: {e}") from None
        # one call builds at most a small multiple of arguments that already exist;
        # the sum over calls is what the memo can amplify
        built += _built_size(out)
        if built > max_built:
            raise _fail(path, f"{how} {fn.name}: the allowed calls built more than {max_built} bytes "
                              "in all, far more than the pickle spells out (one memoised value "
                              "passed over and over)")
        return out

    n_ops = 0
    ops = pickletools.genops(f)
    while True:
        try:
            op, arg, pos = next(ops)
        except StopIteration:
            raise _fail(path, "stream ended before STOP (truncated)") from None
        except RefquantError:
            raise
        except Exception as e:  # noqa: BLE001 - genops raises many kinds on bad bytes
            raise _fail(path, f"malformed opcode stream: {type(e).__name__}: {e}") from None
        n_ops += 1
        if max_ops is not None and n_ops > max_ops:
            raise _fail(path, f"more than {max_ops} opcodes")
        name = op.name
        if name in ("PROTO", "FRAME"):
            if name == "PROTO" and not 0 <= arg <= 5:
                raise _fail(path, f"unsupported pickle protocol {arg}")
            continue
        if name == "STOP":
            if len(stack) != 1 or marks:
                raise _fail(path, f"STOP with {len(stack)} values on the stack")
            return stack[0]
        if name == "MARK":
            marks.append(len(stack))
            stack.append(_Mark)
            continue
        if name in ("NONE",):
            stack.append(None)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name in ("INT",):
            stack.append(arg)  # genops decodes "01"/"00" as True/False already
        elif name in ("BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
                      "FLOAT", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
                      "UNICODE", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(arg)
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            # Python 2 str: torch decodes with ASCII by default
            try:
                stack.append(arg.encode("latin-1").decode("ascii") if isinstance(arg, str) else
                             bytes(arg).decode("ascii"))
            except UnicodeError:
                raise _fail(path, f"{name} with non-ASCII bytes") from None
        elif name == "BYTEARRAY8":
            stack.append(bytearray(arg))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name == "LIST":
            stack.append(list(pop_mark()[1:]))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()[1:]))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(name[-1])
            items = [pop() for _ in range(k)][::-1]
            stack.append(tuple(items))
        elif name == "DICT":
            items = pop_mark()[1:]
            if len(items) % 2:
                raise _fail(path, "DICT with an odd number of items")
            d = {}
            for i in range(0, len(items), 2):
                _check_key(path, items[i])
                d[items[i]] = items[i + 1]
            stack.append(d)
        elif name == "FROZENSET":
            items = pop_mark()[1:]
            for x in items:
                _check_key(path, x)
            stack.append(frozenset(items))
        elif name == "POP":
            if stack and stack[-1] is _Mark:
                pop_mark()
            else:
                pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            if not stack or stack[-1] is _Mark:
                raise _fail(path, "DUP on an empty stack")
            stack.append(stack[-1])
        elif name in ("APPEND", "APPENDS"):
            items = [pop()] if name == "APPEND" else pop_mark()[1:]
            lst = pop()
            if not isinstance(lst, list):
                raise _fail(path, f"{name} on {describe(lst)}, which is not a list")
            lst.extend(items)
            stack.append(lst)
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                v = pop()
                k = pop()
                items = [k, v]
            else:
                items = pop_mark()[1:]
                if len(items) % 2:
                    raise _fail(path, "SETITEMS with an odd number of items")
            d = pop()
            if not isinstance(d, dict):
                raise _fail(path, f"{name} on {describe(d)}, which is not a dict")
            for i in range(0, len(items), 2):
                _check_key(path, items[i])
                d[items[i]] = items[i + 1]
            stack.append(d)
        elif name == "ADDITEMS":
            items = pop_mark()[1:]
            s = pop()
            if not isinstance(s, set):
                raise _fail(path, f"ADDITEMS on {describe(s)}, which is not a set")
            for x in items:
                _check_key(path, x)
            s.update(items)
            stack.append(s)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _fail(path, f"{name} {arg}: memo slot was never set")
            stack.append(memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not stack or stack[-1] is _Mark:
                raise _fail(path, f"{name} on an empty stack")
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            if not stack or stack[-1] is _Mark:
                raise _fail(path, "MEMOIZE on an empty stack")
            memo[len(memo)] = stack[-1]
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(resolve(module, attr, py2_names=True))
        elif name == "STACK_GLOBAL":
            attr = pop()
            module = pop()
            stack.append(resolve(module, attr))
        elif name == "REDUCE":
            args = pop()
            fn = pop()
            stack.append(call(fn, args, "REDUCE"))
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            kwargs = pop() if name == "NEWOBJ_EX" else {}
            args = pop()
            cls = pop()
            if not isinstance(cls, Allowed) or not cls.as_class or kwargs:
                raise _fail(path, f"{name} on {describe(cls)}, which is not an allowed class")
            stack.append(call(cls, args, name))
        elif name == "BUILD":
            state = pop()
            obj = pop()
            if not isinstance(obj, dict) or not isinstance(state, dict):
                raise _fail(path, f"BUILD on {describe(obj)} with state {describe(state)} "
                                  "(only attribute dicts on OrderedDict are allowed)")
            for k in state:
                if not isinstance(k, str):
                    raise _fail(path, f"BUILD with attribute name {describe(k)}")
            attrs = getattr(obj, "pickle_attrs", None)
            if attrs is None:
                raise _fail(path, f"BUILD on a plain {type(obj).__name__}")
            attrs.update(state)
            stack.append(obj)
        elif name in ("BINPERSID", "PERSID"):
            pid = pop() if name == "BINPERSID" else arg
            if persistent_load is None:
                raise _fail(path, "persistent ids are not allowed in this stream")
            stack.append(persistent_load(pid))
        elif name in ("INST", "OBJ"):
            what = arg.replace(" ", ".") if name == "INST" else "the class on the stack"
            raise _fail(path, f"{name} instantiates {what}; instances are not allowed")
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise _fail(path, f"{name} extension code {arg} (the copyreg registry) is not allowed")
        else:  # NEXT_BUFFER, READONLY_BUFFER, PERSID variants we do not know
            raise _fail(path, f"opcode {name} is not allowed")


class AttrDict(OrderedDict):
    """An OrderedDict that keeps BUILD's attributes (``_metadata`` of state dicts) aside."""

    def __init__(self, *args):
        super().__init__(*args)
        self.pickle_attrs = {}
