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

**libhdf5 runs in a child process, never in the caller's.** libhdf5 loops for
minutes on some damaged legacy ``.h5`` files while reading ``model_config``, and
a loop inside a C library cannot be interrupted from Python. So the HDF5 side
(``refquant/io/_h5worker.py``, a script that imports only NumPy and h5py) runs
as a subprocess per open checkpoint; each request (open, read one dataset) must
make progress within ``HDF5_TIMEOUT_S`` seconds, or the child is killed and
the call raises RefquantError. A crash of libhdf5 ends the child only. The
other way, parsing the HDF5 that Keras writes without libhdf5 (superblocks
v0-v3, v1 and v2 object headers, B-tree v1 groups and local heaps, dense link
storage in fractal heaps and v2 B-trees, chunked layouts and their filters,
variable-length strings in the global heap), is thousands of lines of new
parser to fuzz; the child costs one h5py import (~0.5 s) per open.

Datasets are read on access (in the child); only numeric datasets are accepted. HDF5 can
take a dataset's bytes from other files (external links, external storage,
virtual datasets): all three are refused, so a hostile file cannot make refquant
read another file; so is a dataset declaring more bytes than deflate could
expand its stored bytes to (1032x), such as chunks never written.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from ._common import LazyCheckpoint, MappedFile, TensorInfo, fail
from ._h5worker import KERAS_VARIABLE_NAMES

__all__ = ["KerasCheckpoint", "open_keras", "KERAS_VARIABLE_NAMES", "HDF5_TIMEOUT_S"]

#: Seconds a request to the HDF5 child may go without progress before the child is
#: killed (``REFQUANT_HDF5_TIMEOUT`` overrides it). Opening includes starting
#: Python and importing h5py.
HDF5_TIMEOUT_S = 60.0

#: The command that starts the child: this Python, running the worker script by path
#: (so it never imports refquant, whose import takes seconds).
_WORKER_CMD = [sys.executable, str(Path(__file__).with_name("_h5worker.py"))]


def _timeout() -> float:
    env = os.environ.get("REFQUANT_HDF5_TIMEOUT")
    if env:
        try:
            t = float(env)
        except ValueError:
            raise RefquantError(f"REFQUANT_HDF5_TIMEOUT={env!r}; expected seconds as a number") from None
        if not t > 0:
            raise RefquantError(f"REFQUANT_HDF5_TIMEOUT={env!r}; expected a positive number of seconds")
        return t
    return HDF5_TIMEOUT_S


def _need_h5py():
    if find_spec("h5py") is None:
        raise RefquantError("reading Keras HDF5 weights needs h5py: pip install 'refquant[keras]'")


def _weights_limit(archive_bytes: int) -> int:
    """Largest ``model.weights.h5`` a ``.keras`` archive may expand to: 16x + 64 MiB.

    Float weights compress little (a deflated one is rarely under half its
    size); 1 GB of zeros deflated ~1,000x passed the ratio check alone.
    """
    return 16 * archive_bytes + (64 << 20)


class _Worker:
    """One child process running ``_h5worker.py``; frames over its stdin / stdout."""

    def __init__(self, path):
        self.path = path
        self.timeout = _timeout()
        self._lock = threading.Lock()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        # the child finds h5py and NumPy where this process found them
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
        try:
            self.proc = subprocess.Popen(_WORKER_CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._err, env=env, close_fds=True)
        except OSError as e:
            self._err.close()
            raise fail(path, f"cannot start the HDF5 reader process: {e}") from None
        self._out = self.proc.stdout.fileno()
        # writes must never block on a child that stopped reading (see _write_all)
        os.set_blocking(self.proc.stdin.fileno(), False)

    def _why_dead(self) -> str:
        try:  # the pipe closes a moment before the process is reaped
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        try:
            self._err.seek(0, os.SEEK_END)
            n = self._err.tell()
            self._err.seek(max(0, n - 400))
            tail = self._err.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            tail = ""
        rc = self.proc.poll()
        what = f"the HDF5 reader process ended (exit status {rc})" if rc is not None else \
            "the HDF5 reader process stopped answering"
        return what + (f": {tail.splitlines()[-1]}" if tail else "")

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise fail(self.path, f"HDF5 reading made no progress for {self.timeout:g} s "
                                      "(libhdf5 loops on some damaged files); the reader process was killed")
            ready, _, _ = select.select([self._out], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._out, min(n - len(buf), 1 << 20))
            if not chunk:
                msg = self._why_dead()
                self.close()
                raise fail(self.path, msg)
            buf += chunk
            deadline = time.monotonic() + self.timeout  # progress: the bound is on silence
        return bytes(buf)

    def _write_all(self, data: bytes) -> None:
        """Write to the child's stdin, under the same silence bound as reading."""
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise fail(self.path, f"the HDF5 reader process took no input for {self.timeout:g} s; "
                                      "it was killed")
            _, ready, _ = select.select([], [fd], [], left)
            if not ready:
                continue
            try:
                n = os.write(fd, view[: 1 << 16])  # non-blocking: a partial write returns
            except BlockingIOError:
                continue
            view = view[n:]
            deadline = time.monotonic() + self.timeout

    def _frame(self) -> bytes:
        (n,) = struct.unpack("<Q", self._read_exact(8))
        return self._read_exact(n)

    def request(self, req: dict, payload: bytes | None = None, with_data: bool = False):
        with self._lock:  # one request and its reply at a time: frames must not interleave
            return self._request(req, payload, with_data)

    def _request(self, req, payload, with_data):
        if self.proc.poll() is not None or self.proc.stdin is None:
            raise fail(self.path, self._why_dead())
        try:
            msg = json.dumps(req).encode("utf-8")
            self._write_all(struct.pack("<Q", len(msg)) + msg)
            if payload is not None:
                self._write_all(struct.pack("<Q", len(payload)))
                self._write_all(payload)
        except (BrokenPipeError, OSError):
            msg = self._why_dead()
            self.close()
            raise fail(self.path, msg) from None
        reply = json.loads(self._frame())
        if not reply.get("ok"):
            raise fail(self.path, str(reply.get("error")))
        data = self._frame() if with_data else None
        return reply, data

    def close(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a killed process always ends
                pass
            for f in (proc.stdin, proc.stdout):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
        if not self._err.closed:
            self._err.close()


class KerasCheckpoint(LazyCheckpoint):
    """Keras 3 ``.keras`` archive or legacy ``.h5`` weights, name -> array."""

    format = "keras"

    def __init__(self, path):
        _need_h5py()
        m = MappedFile(path)
        config, raw = None, None
        try:
            head = bytes(m.view(0, min(m.size, 8)))
            if head.startswith(b"PK"):
                from .pytorch import _zip_errors, read_zip_entry

                try:
                    zf = zipfile.ZipFile(m.path)
                    infos = {i.filename: i for i in zf.infolist()}
                except _zip_errors() as e:
                    raise fail(path, f"not a readable .keras archive: {e}") from None
                try:
                    if "model.weights.h5" not in infos:
                        raise fail(path, "no model.weights.h5 in the .keras archive")
                    # an absolute bound, not only deflate's ratio: weights barely compress, so
                    # a model.weights.h5 over 16x the archive (+64 MiB) is a bomb
                    raw = bytes(read_zip_entry(zf, m, infos["model.weights.h5"], _weights_limit(m.size)))
                    if "config.json" in infos:
                        try:
                            config = json.loads(bytes(read_zip_entry(zf, m, infos["config.json"], 100_000_000)))
                        except (ValueError, RecursionError):
                            config = None
                finally:
                    zf.close()
        finally:
            m.close()
        worker = _Worker(os.fspath(path))
        try:
            try:
                cfg_json = json.loads(json.dumps(config)) if config is not None else None
            except (ValueError, TypeError, RecursionError):
                cfg_json = None
            reply, _ = worker.request({"op": "open", "path": os.path.abspath(os.fspath(path)),
                                       "config": cfg_json, "raw": raw is not None}, raw)
            tinfos = {}
            for name, dstr, shape, nbytes, stored in reply["infos"]:
                tinfos[name] = TensorInfo(name, np.dtype(dstr), tuple(shape), int(nbytes), stored)
        except BaseException:
            worker.close()
            raise
        meta = dict(reply.get("meta") or {})
        if reply.get("config") is not None:
            meta["config"] = reply["config"]
        super().__init__(path, tinfos, meta)
        self._worker = worker
        self._closers.append(worker.close)

    def _read(self, name):
        info = self._infos[name]
        reply, data = self._worker.request({"op": "read", "name": name}, with_data=True)
        dt, shape = np.dtype(reply["dtype"]), tuple(reply["shape"])
        if dt != info.dtype or shape != info.shape or len(data) != info.nbytes:
            raise fail(self.path, f"dataset {name!r}: the reader returned {dt} {list(shape)} "
                                  f"({len(data)} bytes), the file declared {info.dtype} {list(info.shape)}")
        return np.frombuffer(data, dtype=dt).reshape(shape)


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
