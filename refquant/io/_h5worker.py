"""The HDF5 side of refquant's Keras reader, run as a child process (never imported by it).

libhdf5 loops for minutes on some damaged files (a legacy Keras ``.h5`` whose
``model_config`` attribute is damaged was seen to), and a C library that loops
cannot be interrupted from Python. So refquant never calls libhdf5 in the
caller's process: :mod:`refquant.io.keras` starts this file as a script
(``python _h5worker.py``: it imports only the standard library, NumPy and
h5py, not refquant, so it starts in the time h5py takes to import), sends it
requests over its stdin and kills it when a reply does not come within the
timeout. A crash of libhdf5 (abort, segfault) ends the child, not the caller.

Protocol: frames of ``u64 LE length + payload`` both ways. Requests are JSON
objects:

* ``{"op": "open", "path": str, "config": obj|null, "raw": bool}`` -- with
  ``raw`` a second frame holds the HDF5 file's bytes (``model.weights.h5`` of a
  ``.keras`` zip, which the parent reads); otherwise ``path`` is opened.
  Reply: ``{"ok": true, "infos": [[name, dtype.str, shape, nbytes, stored]],
  "meta": {...}, "config": obj|null}``.
* ``{"op": "read", "name": str}`` -- reply ``{"ok": true, "dtype", "shape"}``
  then a frame of the array's C-order bytes (little-endian).

Any failure replies ``{"ok": false, "error": reason}``; the parent prefixes
the path. Reference: keras/src/saving/saving_lib.py (``H5IOStore``),
keras/src/legacy/saving/legacy_h5_format.py.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys

# run as a script, Python puts this folder first on sys.path, where refquant's
# numpy.py would shadow NumPy: take it off before importing anything else
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

#: layer class -> names of its variables in ``layer.weights`` order (Keras 3 sources).
KERAS_VARIABLE_NAMES = {
    "Dense": ["kernel", "bias"],
    "EinsumDense": ["kernel", "bias"],
    "Conv1D": ["kernel", "bias"],
    "Conv2D": ["kernel", "bias"],
    "Conv3D": ["kernel", "bias"],
    "DepthwiseConv2D": ["kernel", "bias"],
    "Conv2DTranspose": ["kernel", "bias"],
    "Embedding": ["embeddings"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "LayerNormalization": ["gamma", "beta"],
}


class Refused(Exception):
    """A reason to refuse the file; its text goes back to the parent."""


def layer_classes(config) -> dict:
    """layer name -> (class name, config) from a Keras config.json tree."""
    out, stack = {}, [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                out[cfg["name"]] = (node["class_name"], cfg)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def var_names(cls, cfg, n):
    names = list(KERAS_VARIABLE_NAMES.get(cls, []))
    if cls in ("BatchNormalization", "LayerNormalization"):
        names = ([] if not cfg.get("scale", True) else ["gamma"]) + ([] if not cfg.get("center", True) else ["beta"])
        if cls == "BatchNormalization":
            names += ["moving_mean", "moving_variance"]
    if cls in KERAS_VARIABLE_NAMES and "use_bias" in cfg and not cfg["use_bias"]:
        names = [x for x in names if x != "bias"]
    return names if len(names) == n else [str(i) for i in range(n)]


def refuse_external_links(h5py, root):
    """Refuse HDF5 external links anywhere in the file: following one opens another file."""
    stack, seen = [root], set()
    while stack:
        g = stack.pop()
        for name in g:
            link = g.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise Refused(f"{g.name.rstrip('/')}/{name} is an external link to {link.filename!r}: "
                              "reading other files is refused")
            if isinstance(link, h5py.SoftLink):
                continue  # resolves inside this file; its target is visited where it lives
            obj = g.get(name)
            if isinstance(obj, h5py.Group) and obj.id not in seen:
                seen.add(obj.id)
                stack.append(obj)


def check_storage(np, ds):
    """A dataset's bytes must be stored in this file, and about as many as it declares.

    External storage and virtual datasets take their bytes from other files (any
    file the process can read); a chunked dataset whose chunks were never written
    declares any size it likes, filled on read. Compressed chunks may expand, but
    not beyond deflate's bound (1032x), as for zip entries.
    """
    if ds.shape is None:
        raise Refused(f"dataset {ds.name!r} has a null dataspace (h5py.Empty): no shape, no values")
    if ds.is_virtual:
        raise Refused(f"dataset {ds.name!r} is a virtual dataset (mapped from other files); refused")
    if ds.external:
        raise Refused(f"dataset {ds.name!r} has external storage in {ds.external[0][0]!r}; refused")
    extent = ds.dtype.itemsize
    for d in ds.shape:
        extent *= max(int(d), 1)
    if extent > 1 << 62:  # (0, 2**62): no elements, but no array can have that shape
        raise Refused(f"dataset {ds.name!r}: shape {list(ds.shape)} spans more than 2**62 bytes")
    nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if nbytes > 1032 * stored + 1024:
        raise Refused(f"dataset {ds.name!r} declares {nbytes} bytes but the file stores {stored} for it")


class KerasH5:
    """The open HDF5 file and the datasets refquant exposes, by key."""

    def __init__(self, h5py, np, src, config):
        self.h5py, self.np = h5py, np
        try:
            self.f = h5py.File(src, "r")
        except Exception as e:  # noqa: BLE001 - HDF5 raises many kinds on bad bytes
            raise Refused(f"not a readable HDF5 file: {type(e).__name__}: {e}") from None
        self.datasets = {}
        try:
            self.infos, self.meta, self.config = self._index(config)
        except Refused:
            raise
        except Exception as e:  # noqa: BLE001 - attributes and dtypes decode lazily: any access may raise
            raise Refused(f"unreadable HDF5 structure: {type(e).__name__}: {e}") from None

    def _index(self, config):
        h5py, np, f = self.h5py, self.np, self.f
        if config is None and "model_config" in f.attrs:
            try:
                config = json.loads(f.attrs["model_config"])
            except (ValueError, TypeError, RecursionError):
                config = None
        refuse_external_links(h5py, f)
        if "layers" in f:
            self._walk_v3(f, [], layer_classes(config or {}))
        else:
            self._walk_legacy()
        infos = []
        for k, ds in self.datasets.items():
            dt = ds.dtype
            if dt.kind not in "biufc":
                raise Refused(f"dataset {ds.name!r} has non-numeric dtype {dt}")
            check_storage(np, ds)
            dt = dt.newbyteorder("<") if dt.itemsize > 1 else dt
            n = int(np.prod(ds.shape, dtype=object))
            infos.append([k, dt.str, list(ds.shape), n * dt.itemsize, str(ds.dtype)])
        meta = {k: (v if isinstance(v, int | float | str) else str(v)) for k, v in f.attrs.items()
                if k != "model_config"}
        return infos, meta, config

    def _walk_v3(self, group, names, classes, depth=0, seen=None):
        h5py = self.h5py
        if depth > 32:
            raise Refused("layers nested deeper than 32")
        seen = set() if seen is None else seen
        layers = group.get("layers")
        if isinstance(layers, h5py.Group):
            for gname in layers:
                lg = layers[gname]
                if not isinstance(lg, h5py.Group):
                    continue
                # a group hard-linked under several names is one layer: walk it once
                # (two links per level, 25 levels deep, were 2**25 walks)
                if lg.id in seen:
                    continue
                seen.add(lg.id)
                v = lg.get("vars")
                lname = gname
                if isinstance(v, h5py.Group):
                    attr = v.attrs.get("name")
                    lname = attr.decode() if isinstance(attr, bytes) else (attr if isinstance(attr, str) else gname)
                    keys = sorted((k for k in v if isinstance(v[k], h5py.Dataset)), key=lambda s: (len(s), s))
                    cls, cfg = classes.get(lname, ("", {}))
                    for k, vn in zip(keys, var_names(cls, cfg, len(keys)), strict=True):
                        key = "/".join([*names, lname, vn])
                        if key in self.datasets:
                            key = "/".join([*names, gname, vn])
                        self.datasets[key] = v[k]
                self._walk_v3(lg, [*names, lname], classes, depth + 1, seen)

    def _walk_legacy(self):
        h5py, f = self.h5py, self.f
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = root.attrs.get("layer_names")
        if layer_names is None:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    self.datasets[name] = obj
            root.visititems(visit)
            return
        done = set()
        for ln in layer_names:
            ln = ln.decode() if isinstance(ln, bytes) else str(ln)
            if ln in done:  # Keras never repeats one; repeats would multiply the work
                raise Refused(f"layer {ln!r} is named twice in layer_names")
            done.add(ln)
            g = root.get(ln)
            if not isinstance(g, h5py.Group):
                raise Refused(f"layer {ln!r} named in layer_names has no group")
            for wn in g.attrs.get("weight_names", []):
                wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                ds = g.get(wn)
                if not isinstance(ds, h5py.Dataset):
                    raise Refused(f"weight {wn!r} of layer {ln!r} has no dataset")
                self.datasets[wn] = ds

    def read(self, name):
        np = self.np
        try:
            a = np.asarray(self.datasets[name][()])
        except KeyError:
            raise Refused(f"no dataset {name!r}") from None
        except Exception as e:  # noqa: BLE001 - HDF5 raises many kinds on bad data
            raise Refused(f"dataset {name!r} unreadable: {type(e).__name__}: {e}") from None
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        return np.ascontiguousarray(a)


def _read_frame(f) -> bytes | None:
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        return None
    return data


def _write_frame(f, data) -> None:
    f.write(struct.pack("<Q", len(data)))
    f.write(data)


def _reply(out, obj, data=None) -> None:
    _write_frame(out, json.dumps(obj).encode("utf-8"))
    if data is not None:
        _write_frame(out, data)
    out.flush()


def main() -> int:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        _reply(out, {"ok": False, "error": f"cannot import h5py: {e}"})
        return 1
    store = None
    while True:
        frame = _read_frame(inp)
        if frame is None:
            return 0
        req = json.loads(frame)
        try:
            if req["op"] == "open":
                src = req["path"]
                if req.get("raw"):
                    raw = _read_frame(inp)
                    if raw is None:
                        return 1
                    src = io.BytesIO(raw)
                store = KerasH5(h5py, np, src, req.get("config"))
                _reply(out, {"ok": True, "infos": store.infos, "meta": store.meta, "config": store.config})
            elif req["op"] == "read":
                if store is None:
                    raise Refused("no file open")
                a = store.read(req["name"])
                _reply(out, {"ok": True, "dtype": a.dtype.str, "shape": list(a.shape)}, a.tobytes())
            else:
                return 0
        except Refused as e:
            _reply(out, {"ok": False, "error": str(e)})
        except Exception as e:  # noqa: BLE001 - anything else is still a refusal, not a dead child
            _reply(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    sys.exit(main())
