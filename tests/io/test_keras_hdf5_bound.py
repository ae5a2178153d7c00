"""refquant.io.open returns or raises within a bound on any HDF5 file.

libhdf5 loops for minutes on some damaged legacy Keras ``.h5`` files while
reading ``model_config``; a C loop cannot be interrupted from Python, so the
reader runs libhdf5 in a child process and kills it when a request makes no
progress for ``REFQUANT_HDF5_TIMEOUT`` seconds. These tests stand in for the
damaged file with a child that never answers, one that dies, and the real
worker made to loop on a read: each must end as a RefquantError within the
bound, with the child gone.
"""

import json
import sys
import time

import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
import refquant.io.keras as rk
from refquant import RefquantError


def legacy_h5(path):
    """A small legacy Keras weights file: model_config, layer_names, weight_names."""
    h5py = import_peer("h5py")
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["layer_names"] = [b"d1"]
        g = f.create_group("d1")
        g.attrs["weight_names"] = [b"d1/kernel:0", b"d1/bias:0"]
        g.create_dataset("d1/kernel:0", data=np.arange(6, dtype=np.float32).reshape(2, 3))
        g.create_dataset("d1/bias:0", data=np.array([0.5, -1, 2], ">f4"))
    return path


def test_legacy_h5_reads_through_the_child(tmp_path):
    p = legacy_h5(tmp_path / "w.h5")
    with rio.open(p) as ck:
        assert sorted(ck) == ["d1/bias:0", "d1/kernel:0"]
        np.testing.assert_array_equal(ck["d1/kernel:0"], np.arange(6, dtype=np.float32).reshape(2, 3))
        b = ck["d1/bias:0"]
        assert b.dtype == np.dtype("<f4") and b.tolist() == [0.5, -1, 2]
        assert ck.metadata["keras_version"] == "2.15.0"
        proc = ck._worker.proc
        assert proc.poll() is None
    assert proc.poll() is not None  # closing ends the child


def _timeout(monkeypatch, seconds):
    monkeypatch.setenv("REFQUANT_HDF5_TIMEOUT", str(seconds))


def test_a_child_that_never_answers_is_killed_within_the_timeout(tmp_path, monkeypatch):
    import_peer("h5py")
    p = legacy_h5(tmp_path / "w.h5")
    _timeout(monkeypatch, 1)
    monkeypatch.setattr(rk, "_WORKER_CMD", [sys.executable, "-c", "import time; time.sleep(120)"])
    t0 = time.monotonic()
    with pytest.raises(RefquantError, match="no progress for 1 s"):
        rio.open(p)
    assert time.monotonic() - t0 < 10


def test_a_child_that_dies_is_a_refquant_error(tmp_path, monkeypatch):
    import_peer("h5py")
    p = legacy_h5(tmp_path / "w.h5")
    monkeypatch.setattr(rk, "_WORKER_CMD", [sys.executable, "-c",
                                            "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    with pytest.raises(RefquantError, match="exit status 3.*boom"):
        rio.open(p)


def test_a_read_that_loops_in_the_child_is_killed_and_later_reads_refused(tmp_path, monkeypatch):
    p = legacy_h5(tmp_path / "w.h5")
    looping = tmp_path / "looping_worker.py"
    looping.write_text(
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('w', {str(rk._WORKER_CMD[-1])!r})\n"
        "w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)\n"
        "def forever(self, name):\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
        "w.KerasH5.read = forever\n"
        "sys.exit(w.main())\n")
    monkeypatch.setattr(rk, "_WORKER_CMD", [sys.executable, str(looping)])
    _timeout(monkeypatch, 2)
    with rio.open(p) as ck:
        t0 = time.monotonic()
        with pytest.raises(RefquantError, match="no progress for 2 s"):
            ck["d1/kernel:0"]
        assert time.monotonic() - t0 < 10
        assert ck._worker.proc.poll() is not None  # killed
        with pytest.raises(RefquantError, match="ended"):
            ck["d1/bias:0"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_a_bad_timeout_setting_is_refused(tmp_path, monkeypatch, value):
    import_peer("h5py")
    p = legacy_h5(tmp_path / "w.h5")
    monkeypatch.setenv("REFQUANT_HDF5_TIMEOUT", value)
    with pytest.raises(RefquantError, match="REFQUANT_HDF5_TIMEOUT"):
        rio.open(p)


def test_keras_archive_whose_weights_inflate_past_the_absolute_bound_is_refused(tmp_path):
    import tracemalloc
    import zipfile

    import_peer("h5py")
    p = tmp_path / "bomb.keras"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        zi = zipfile.ZipInfo("model.weights.h5")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with z.open(zi, "w", force_zip64=True) as w:
            for _ in range(96):  # 96 MiB of zeros, ~1,030x: under deflate's ratio ceiling
                w.write(bytes(1 << 20))
    assert p.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(RefquantError, match="expected at most"):
            rio.open(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_zero_element_dataset_with_a_huge_dim_is_refused(tmp_path):
    h5py = import_peer("h5py")
    p = tmp_path / "z.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("w", shape=(0, 2**62), maxshape=(None, 2**62), dtype="f4", chunks=(1, 1))
    with pytest.raises(RefquantError, match="2\\*\\*62"):
        with rio.open(p) as ck:
            ck["w"]


def test_a_child_that_never_reads_its_input_is_killed_within_the_timeout(tmp_path, monkeypatch):
    # a .keras archive's weights are sent to the child; a child that does not read
    # them must not block the caller on a full pipe
    import zipfile

    import_peer("h5py")
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", legacy_h5(tmp_path / "w.h5").read_bytes() + bytes(4 << 20))
    _timeout(monkeypatch, 1)
    monkeypatch.setattr(rk, "_WORKER_CMD", [sys.executable, "-c", "import time; time.sleep(120)"])
    t0 = time.monotonic()
    with pytest.raises(RefquantError, match="took no input for 1 s"):
        rio.open(p)
    assert time.monotonic() - t0 < 10


def test_reads_from_several_threads_get_their_own_arrays(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    p = legacy_h5(tmp_path / "w.h5")
    with rio.open(p) as ck:
        names = ["d1/kernel:0", "d1/bias:0"] * 20
        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda n: ck[n].copy(), names))
    for n, a in zip(names, got, strict=True):
        assert a.shape == ((2, 3) if n == "d1/kernel:0" else (3,))
