"""Malicious pickles: none executes, each raises RefquantError naming what was refused.

Every gadget tries to create a sentinel file; the test asserts the file never
appears. Each is tried three ways: as a raw pickle, as data.pkl of a torch zip,
and as the object graph of a legacy torch file.
"""

import os
import pickle

import pytest
from picklekit import (
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    GLOBAL,
    INT,
    MARK,
    PROTO2,
    REDUCE,
    SETITEM,
    STOP,
    TUPLE,
    UNI,
    state_dict,
    tensor_v2,
    torch_legacy,
    torch_zip,
)

from refquant import RefquantError
from refquant.io._pickle import restricted_load
from refquant.io.pytorch import TorchLegacyCheckpoint, TorchZipCheckpoint, torch_allowlist

SENTINEL = "refquant_pwned_sentinel"


class _Gadget:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def _cmd():
    return f"touch {SENTINEL}"


def _corpus():
    cmd = _cmd()
    c = {}
    c["os.system"] = pickle.dumps(_Gadget(os.system, cmd), protocol=2)
    c["os.system-stack-global"] = pickle.dumps(_Gadget(os.system, cmd), protocol=4)
    c["eval"] = pickle.dumps(_Gadget(eval, f"open({SENTINEL!r}, 'w')"), protocol=2, fix_imports=False)
    c["eval-py2-name"] = pickle.dumps(_Gadget(eval, f"open({SENTINEL!r}, 'w')"), protocol=2)
    c["exec"] = pickle.dumps(_Gadget(exec, f"open({SENTINEL!r}, 'w')"), protocol=2, fix_imports=False)
    c["posix.system"] = PROTO2 + GLOBAL("posix", "system") + MARK + UNI(cmd) + TUPLE + REDUCE + STOP
    c["builtins.getattr"] = (PROTO2 + GLOBAL("builtins", "getattr") + MARK + GLOBAL("os", "path")
                             + UNI("exists") + TUPLE + REDUCE + STOP)
    c["subprocess.Popen"] = pickle.dumps(_Gadget(__import__("subprocess").Popen, cmd.split()), protocol=2,
                                       fix_imports=False)
    c["nested-reduce"] = (PROTO2 + GLOBAL("collections", "OrderedDict") + MARK
                          + GLOBAL("posix", "system") + MARK + UNI(cmd) + TUPLE + REDUCE
                          + TUPLE + REDUCE + STOP)
    c["reduce-on-result"] = (PROTO2 + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
                             + EMPTY_TUPLE + REDUCE + STOP)
    c["INST"] = f"(S'{cmd}'\nios\nsystem\n.".encode()
    c["OBJ"] = PROTO2 + MARK + GLOBAL("collections", "OrderedDict") + b"o" + STOP
    c["BUILD-on-list"] = PROTO2 + EMPTY_LIST + EMPTY_DICT + BUILD + STOP
    c["BUILD-on-tensor"] = (state_dict([("w", tensor_v2("0", "FloatStorage", 1, 0, (1,), (1,)))])[:-2]
                            + EMPTY_DICT + BUILD + b"u" + STOP)
    c["NEWOBJ-on-function"] = (PROTO2 + GLOBAL("torch._utils", "_rebuild_tensor_v2") + EMPTY_TUPLE
                               + b"\x81" + STOP)
    c["persid-string"] = PROTO2 + UNI("0") + b"Q" + STOP
    c["persid-module"] = PROTO2 + MARK + UNI("module") + UNI("os") + UNI("x") + TUPLE + b"Q" + STOP
    c["persid-bad-type"] = (PROTO2 + MARK + UNI("storage") + GLOBAL("collections", "OrderedDict")
                            + UNI("0") + UNI("cpu") + INT(1) + TUPLE + b"Q" + STOP)
    c["SETITEM-on-list"] = PROTO2 + EMPTY_LIST + UNI("a") + UNI("b") + SETITEM + STOP
    c["EXT1"] = PROTO2 + b"\x82\x01" + STOP
    c["dunder-path"] = PROTO2 + GLOBAL("collections", "OrderedDict.__class__") + STOP
    c["bytearray-size"] = (PROTO2 + GLOBAL("builtins", "bytearray") + MARK + INT(2**30) + TUPLE
                           + REDUCE + STOP)
    c["codecs-non-latin1"] = (PROTO2 + GLOBAL("_codecs", "encode") + MARK + UNI("x") + UNI("rot13")
                              + TUPLE + REDUCE + STOP)
    c["numpy-reconstruct"] = (PROTO2 + GLOBAL("numpy.core.multiarray", "_reconstruct") + EMPTY_TUPLE
                              + REDUCE + STOP)
    c["lying-size"] = state_dict([("w", tensor_v2("0", "FloatStorage", 1, 0, (1000,), (1,)))])
    c["rebuild-with-string-storage"] = (PROTO2 + GLOBAL("torch._utils", "_rebuild_tensor_v2") + MARK
                                        + UNI("x") + INT(0) + MARK + INT(1) + TUPLE + MARK + INT(1)
                                        + TUPLE + TUPLE + REDUCE + STOP)
    return c


CORPUS = _corpus()

# what each refusal must name
EXPECT = {
    "os.system": "posix.system",
    "os.system-stack-global": "posix.system",
    "eval": "builtins.eval",
    "eval-py2-name": "__builtin__.eval",
    "exec": "builtins.exec",
    "posix.system": "posix.system",
    "builtins.getattr": "builtins.getattr",
    "subprocess.Popen": "subprocess.Popen",
    "nested-reduce": "posix.system",
    "reduce-on-result": "REDUCE on AttrDict",
    "INST": "INST instantiates os.system",
    "OBJ": "OBJ",
    "BUILD-on-list": "BUILD on list",
    "BUILD-on-tensor": "BUILD on LazyTensor",
    "NEWOBJ-on-function": "NEWOBJ on torch._utils._rebuild_tensor_v2",
    "persid-string": "persistent id '0' of the wrong form",
    "persid-module": "persistent id tuple of the wrong form",
    "persid-bad-type": "storage type collections.OrderedDict",
    "SETITEM-on-list": "SETITEM on list",
    "EXT1": "EXT1",
    "dunder-path": "collections.OrderedDict.__class__",
    "bytearray-size": "bytearray",
    "codecs-non-latin1": "rot13",
    "numpy-reconstruct": "numpy.core.multiarray._reconstruct",
    "lying-size": "reach element 999",
    "rebuild-with-string-storage": "storage 'x'",
}


def test_every_gadget_has_an_expected_refusal():
    assert set(EXPECT) == set(CORPUS)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / SENTINEL).exists(), "a gadget executed"


def _raw_load(data):
    storages = {}

    def pl(pid):
        from refquant.io.pytorch import Storage, _storage_from_type

        if not isinstance(pid, tuple) or len(pid) != 5:
            raise RefquantError(f"persistent id {pid!r:.40} of the wrong form")
        st = _storage_from_type(*pid[1:], "<raw>")
        return storages.setdefault(st.key, Storage(st.key, st.dtype, 4, "cpu", True))

    return restricted_load(data, allowed=torch_allowlist("<raw>"), persistent_load=pl, path="<raw>")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_raw_pickle_gadget_is_refused_and_named(in_tmp, name):
    data = CORPUS[name]
    if name == "persid-module":
        # the raw harness names tuples by repr; the container readers say "tuple"
        with pytest.raises(RefquantError, match="of the wrong form"):
            _raw_load(data)
        return
    if name == "persid-string":
        with pytest.raises(RefquantError, match="'0' of the wrong form"):
            _raw_load(data)
        return
    with pytest.raises(RefquantError, match=_re(EXPECT[name])):
        _raw_load(data)


def _re(s):
    import re

    return re.escape(s)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_zip_wrapped_gadget_is_refused_and_named(in_tmp, name):
    p = torch_zip(in_tmp / "evil.pt", CORPUS[name], {"0": b"\0\0\0\0"})
    with pytest.raises(RefquantError, match=_re(EXPECT[name])) as e:
        TorchZipCheckpoint(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_legacy_wrapped_gadget_is_refused_and_named(in_tmp, name):
    data = CORPUS[name]
    expect = EXPECT[name]
    if name in ("lying-size", "BUILD-on-tensor") or name.startswith("persid-"):
        # zip-style 5-field storage ids are themselves refused in a legacy file (6 fields)
        expect = "of the wrong form"
    p = torch_legacy(in_tmp / "evil.pt", data, [])
    with pytest.raises(RefquantError, match=_re(expect)) as e:
        TorchLegacyCheckpoint(p)
    assert str(p) in str(e.value)


def test_plain_python_pickle_of_the_gadget_would_run(tmp_path):
    # the corpus is real: pickle's own loader resolves the global (we stop short of calling it)
    class Probe(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"{module}.{name}")

    import io

    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        Probe(io.BytesIO(CORPUS["os.system"])).load()


# --------------------------------------------------------------------------- resource bombs

_DEEP_TUPLE = PROTO2 + b"N" + b"\x85" * 100_000  # None wrapped in 100000 TUPLE1s


def test_deeply_nested_tuple_as_dict_key_is_refused_not_a_recursion_error():
    # _check_key recursed once per level: RecursionError escaped
    pkl = PROTO2 + EMPTY_DICT + _DEEP_TUPLE[2:] + INT(1) + SETITEM + STOP
    with pytest.raises(RefquantError, match="nested deeper"):
        restricted_load(pkl, allowed={}, persistent_load=None)


@pytest.mark.parametrize("glob", [("builtins", "set"), ("collections", "OrderedDict")])
def test_deeply_nested_tuple_hashed_by_an_allowed_class_is_refused(glob):
    # set(items) / OrderedDict(items) hashed the 100000-deep tuple: CPython's tuple
    # hash recurses without a depth check (a segfault for a deep enough tuple)
    item = _DEEP_TUPLE[2:] + (INT(1) + b"\x86" if glob[1] == "OrderedDict" else b"")
    pkl = PROTO2 + GLOBAL(*glob) + MARK + MARK + item + TUPLE + TUPLE + REDUCE + STOP
    with pytest.raises(RefquantError, match="nested deeper"):
        restricted_load(pkl, allowed=torch_allowlist(), persistent_load=None)


def test_huge_int_named_in_a_refusal_is_described_not_printed():
    # describe() called repr() on a 40000-bit int: int->str limit ValueError escaped
    pkl = PROTO2 + pickle.dumps(1 << 40000, protocol=2)[2:-1] + UNI("a") + b"\x93" + STOP
    with pytest.raises(RefquantError, match="global with non-string name <int of 40001 bits>"):
        restricted_load(pkl, allowed={}, persistent_load=None)
