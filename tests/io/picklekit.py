"""Build PyTorch-style pickles and checkpoint containers by hand, without torch.

Each function emits raw pickle opcodes (CPython Lib/pickletools.py names them), so
tests can write exactly what torch.save writes -- and exactly what it never would.
"""

import io
import pickle
import struct
import zipfile

PROTO2 = b"\x80\x02"
MARK, TUPLE, REDUCE, STOP = b"(", b"t", b"R", b"."
BINPERSID, EMPTY_DICT, EMPTY_TUPLE, EMPTY_LIST = b"Q", b"}", b")", b"]"
SETITEM, SETITEMS, APPEND, BUILD = b"s", b"u", b"a", b"b"
NEWFALSE, NEWTRUE, NONE = b"\x89", b"\x88", b"N"
TUPLE1, TUPLE2, NEWOBJ = b"\x85", b"\x86", b"\x81"

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def GLOBAL(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def UNI(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def PUT(i):
    """LONG_BINPUT: memoise the top of the stack in slot ``i``."""
    return b"r" + struct.pack("<I", i)


def GET(i):
    """LONG_BINGET: push memo slot ``i`` again (the memo's amplifier: 5 bytes a use)."""
    return b"j" + struct.pack("<I", i)


def BYTES(b):
    return b"B" + struct.pack("<I", len(b)) + b


def INT(n):
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    return pickle.dumps(n, protocol=2)[2:-1]  # LONG1


def TUP(items):
    return MARK + b"".join(INT(i) for i in items) + TUPLE


def storage_pid(key, storage_type, numel, legacy=False):
    body = UNI("storage") + GLOBAL("torch", storage_type) + UNI(key) + UNI("cpu") + INT(numel)
    if legacy:
        body += NONE
    return MARK + body + TUPLE + BINPERSID


def tensor_v2(key, storage_type, numel, offset, size, stride, legacy=False):
    return (GLOBAL("torch._utils", "_rebuild_tensor_v2") + MARK
            + storage_pid(key, storage_type, numel, legacy) + INT(offset) + TUP(size) + TUP(stride)
            + NEWFALSE + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)


def tensor_v3(key, nbytes, offset, size, stride, dtype):
    return (GLOBAL("torch._utils", "_rebuild_tensor_v3") + MARK
            + MARK + UNI("storage") + GLOBAL("torch.storage", "UntypedStorage") + UNI(key)
            + UNI("cpu") + INT(nbytes) + TUPLE + BINPERSID
            + INT(offset) + TUP(size) + TUP(stride) + NEWFALSE
            + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
            + GLOBAL("torch", dtype) + TUPLE + REDUCE)


def state_dict(items):
    """Pickle an OrderedDict of name -> (opcode bytes of the value)."""
    body = b"".join(UNI(k) + v for k, v in items)
    return PROTO2 + GLOBAL("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK + body + SETITEMS + STOP


def torch_zip(path, pkl, storages, top="archive", byteorder=b"little", compress=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top}/data.pkl", pkl)
        if byteorder is not None:
            z.writestr(f"{top}/byteorder", byteorder)
        for k, b in storages.items():
            z.writestr(f"{top}/data/{k}", b,
                       compress_type=zipfile.ZIP_DEFLATED if k in compress else zipfile.ZIP_STORED)
        z.writestr(f"{top}/version", b"3\n")
    return path


def torch_legacy(path, pkl, storages, magic=LEGACY_MAGIC, protocol=1001, little_endian=True):
    """storages: list of (key, element count, raw bytes), in file order."""
    f = io.BytesIO()
    f.write(pickle.dumps(magic, protocol=2))
    f.write(pickle.dumps(protocol, protocol=2))
    f.write(pickle.dumps({"protocol_version": protocol, "little_endian": little_endian,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    f.write(pkl)
    f.write(pickle.dumps([k for k, _, _ in storages], protocol=2))
    for _, n, b in storages:
        f.write(struct.pack("<q", n) + b)
    path.write_bytes(f.getvalue())
    return path
