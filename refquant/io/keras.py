"""Keras weights through h5py (optional extra ``refquant[keras]``), without Keras.

* **Keras 3 ``.keras``**: a zip of ``config.json``, ``metadata.json`` and
  ``model.weights.h5``. In the HDF5 file each layer is a group
  ``layers/<path>/vars`` holding datasets ``0, 1, ...`` with the layer's name in
  the ``name`` attribute (keras/src/saving/saving_lib.py, ``H5IOStore``). The
  variable order is the layer's ``weights`` order; refquant names the indices
  from the layer class in config.json (Dense / Conv: kernel, bias;
  BatchNormalization: gamma, beta, moving_mean, moving_variance; ...) and falls
  back to the index. Keys read ``<layer name>/<variable>`` (``d1/kernel``).
* **legacy ``.h5``** (``model.save("x.h5")`` / ``save_weights``): groups per layer
  with ``layer_names`` / ``weight_names`` attributes
  (keras/src/legacy/saving/legacy_h5_format.py); keys are the weight names
  (``sequential/d1/kernel``).

Datasets are read on access (h5py); only numeric datasets are accepted. HDF5 can
take a dataset's bytes from other files (external links, external storage,
virtual datasets): all three are refused, so a hostile file cannot make refquant
read another file; so is a dataset declaring more bytes than deflate could
expand its stored bytes to (1032x), such as chunks never written.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from .._errors import RefquantError
from ._common import LazyCheckpoint, MappedFile, TensorInfo, fail

__all__ = ["KerasCheckpoint", "open_keras", "KERAS_VARIABLE_NAMES"]

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


def _h5py():
    try:
        import h5py
    except ImportError:
        raise RefquantError("reading Keras HDF5 weights needs h5py: pip install 'refquant[keras]'") from None
    return h5py


def _layer_classes(config) -> dict:
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


def _var_names(cls, cfg, n):
    names = list(KERAS_VARIABLE_NAMES.get(cls, []))
    if cls in ("BatchNormalization", "LayerNormalization"):
        names = ([] if not cfg.get("scale", True) else ["gamma"]) + ([] if not cfg.get("center", True) else ["beta"])
        if cls == "BatchNormalization":
            names += ["moving_mean", "moving_variance"]
    if cls in KERAS_VARIABLE_NAMES and "use_bias" in cfg and not cfg["use_bias"]:
        names = [x for x in names if x != "bias"]
    return names if len(names) == n else [str(i) for i in range(n)]


def _refuse_external_links(h5py, root, path):
    """Refuse HDF5 external links anywhere in the file: following one opens another file."""
    stack, seen = [root], set()
    while stack:
        g = stack.pop()
        for name in g:
            link = g.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise fail(path, f"{g.name.rstrip('/')}/{name} is an external link to {link.filename!r}: "
                                 "reading other files is refused")
            if isinstance(link, h5py.SoftLink):
                continue  # resolves inside this file; its target is visited where it lives
            obj = g.get(name)
            if isinstance(obj, h5py.Group) and obj.id not in seen:
                seen.add(obj.id)
                stack.append(obj)


def _check_storage(ds, path):
    """A dataset's bytes must be stored in this file, and about as many as it declares.

    External storage and virtual datasets take their bytes from other files (any
    file the process can read); a chunked dataset whose chunks were never written
    declares any size it likes, filled on read. Compressed chunks may expand, but
    not beyond deflate's bound (1032x), as for zip entries.
    """
    if ds.shape is None:
        raise fail(path, f"dataset {ds.name!r} has a null dataspace (h5py.Empty): no shape, no values")
    if ds.is_virtual:
        raise fail(path, f"dataset {ds.name!r} is a virtual dataset (mapped from other files); refused")
    if ds.external:
        raise fail(path, f"dataset {ds.name!r} has external storage in {ds.external[0][0]!r}; refused")
    nbytes = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    if nbytes > 1032 * stored + 1024:
        raise fail(path, f"dataset {ds.name!r} declares {nbytes} bytes but the file stores {stored} for it")


class KerasCheckpoint(LazyCheckpoint):
    """Keras 3 ``.keras`` archive or legacy ``.h5`` weights, name -> array."""

    format = "keras"

    def __init__(self, path):
        h5py = _h5py()
        m = MappedFile(path)
        config = None
        try:
            head = bytes(m.view(0, min(m.size, 8)))
            if head.startswith(b"PK"):
                from .pytorch import _zip_errors, read_zip_entry

                try:
                    zf = zipfile.ZipFile(m.path)
                    infos = {i.filename: i for i in zf.infolist()}
                except _zip_errors() as e:
                    raise fail(path, f"not a readable .keras archive: {e}") from None
                if "model.weights.h5" not in infos:
                    raise fail(path, "no model.weights.h5 in the .keras archive")
                raw = bytes(read_zip_entry(zf, m, infos["model.weights.h5"], m.size * 1032 + 1024))
                if "config.json" in infos:
                    try:
                        config = json.loads(bytes(read_zip_entry(zf, m, infos["config.json"], 100_000_000)))
                    except (ValueError, RecursionError):
                        config = None
                zf.close()
                src = io.BytesIO(raw)
            else:
                src = m.path
        finally:
            m.close()
        try:
            self._h5 = h5py.File(src, "r")
        except Exception as e:  # noqa: BLE001 - HDF5 raises many kinds on bad bytes
            raise fail(path, f"not a readable HDF5 file: {type(e).__name__}: {e}") from None
        try:
            try:
                infos, meta, config = self._index(h5py, config, path)
            except RefquantError:
                raise
            except Exception as e:  # noqa: BLE001 - HDF5 raises many kinds on bad files
                # attributes and dtypes are decoded lazily: damaged ones raise OSError,
                # RuntimeError, KeyError or ValueError from any access, not just the walk
                raise fail(path, f"unreadable HDF5 structure: {type(e).__name__}: {e}") from None
        except BaseException:
            self._h5.close()
            raise
        if config is not None:
            meta["config"] = config
        super().__init__(path, infos, meta)
        self._closers.append(self._h5.close)

    def _index(self, h5py, config, path):
        """Walk the file: (tensor infos, attributes, config); any HDF5 access may raise."""
        self._datasets = {}
        if config is None and "model_config" in self._h5.attrs:
            try:
                config = json.loads(self._h5.attrs["model_config"])
            except (ValueError, TypeError, RecursionError):
                config = None
        _refuse_external_links(h5py, self._h5, path)
        if "layers" in self._h5:
            self._walk_v3(self._h5, [], _layer_classes(config or {}), path)
        else:
            self._walk_legacy(path)
        infos = {}
        for k, ds in self._datasets.items():
            dt = ds.dtype
            if dt.kind not in "biufc":
                raise fail(path, f"dataset {ds.name!r} has non-numeric dtype {dt}")
            _check_storage(ds, path)
            dt = dt.newbyteorder("<") if dt.itemsize > 1 else dt
            infos[k] = TensorInfo(k, dt, tuple(ds.shape), int(np.prod(ds.shape, dtype=np.int64)) * dt.itemsize,
                                  str(ds.dtype))
        meta = {k: (v if isinstance(v, int | float | str) else str(v)) for k, v in self._h5.attrs.items()
                if k != "model_config"}
        return infos, meta, config

    def _walk_v3(self, group, names, classes, path, depth=0, seen=None):
        h5py = _h5py()
        if depth > 32:
            raise fail(path, "layers nested deeper than 32")
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
                    keys = sorted((k for k in v if isinstance(v[k], h5py.Dataset)),
                                  key=lambda s: (len(s), s))
                    cls, cfg = classes.get(lname, ("", {}))
                    for k, vn in zip(keys, _var_names(cls, cfg, len(keys)), strict=True):
                        key = "/".join([*names, lname, vn])
                        if key in self._datasets:
                            key = "/".join([*names, gname, vn])
                        self._datasets[key] = v[k]
                self._walk_v3(lg, [*names, lname], classes, path, depth + 1, seen)

    def _walk_legacy(self, path):
        h5py = _h5py()
        root = self._h5["model_weights"] if "model_weights" in self._h5 else self._h5
        layer_names = root.attrs.get("layer_names")
        if layer_names is None:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    self._datasets[name] = obj
            root.visititems(visit)
            return
        done = set()
        for ln in layer_names:
            ln = ln.decode() if isinstance(ln, bytes) else str(ln)
            if ln in done:  # Keras never repeats one; repeats would multiply the work
                raise fail(path, f"layer {ln!r} is named twice in layer_names")
            done.add(ln)
            g = root.get(ln)
            if not isinstance(g, h5py.Group):
                raise fail(path, f"layer {ln!r} named in layer_names has no group")
            for wn in g.attrs.get("weight_names", []):
                wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                ds = g.get(wn)
                if not isinstance(ds, h5py.Dataset):
                    raise fail(path, f"weight {wn!r} of layer {ln!r} has no dataset")
                self._datasets[wn] = ds

    def _read(self, name):
        try:
            a = self._datasets[name][()]
        except Exception as e:  # noqa: BLE001 - HDF5 raises many kinds on bad data
            raise fail(self.path, f"dataset {name!r} unreadable: {type(e).__name__}: {e}") from None
        a = np.asarray(a)
        return a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a


def open_keras(path) -> KerasCheckpoint:
    """Open Keras weights (``.keras`` or legacy ``.h5``) with readable keys.

    Notes
    -----
    **Formula**: values bit for bit as stored in HDF5 (big-endian datasets are
    converted to little-endian; values unchanged).
    **Reference**: keras/src/saving/saving_lib.py (``H5IOStore``),
    keras/src/legacy/saving/legacy_h5_format.py (``load_weights_from_hdf5_group``).
    """
    return KerasCheckpoint(path)
