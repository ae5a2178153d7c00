"""refquant.io.keras against Keras 3's own writers (.keras archive and legacy .h5).

Keras runs on the torch backend here (KERAS_BACKEND=torch)."""

import os

import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio

pytestmark = pytest.mark.peer


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import_peer("h5py")
    return import_peer("keras")


def _model(keras):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                             keras.layers.BatchNormalization(name="bn"),
                             keras.layers.Dense(2, use_bias=False, name="out")])


def test_keras_archive_weights_with_readable_names(tmp_path):
    keras = _keras()
    m = _model(keras)
    m.save(tmp_path / "m.keras")
    with rio.open(tmp_path / "m.keras") as ck:
        assert ck.format == "keras"
        assert sorted(ck) == ["bn/beta", "bn/gamma", "bn/moving_mean", "bn/moving_variance",
                              "d1/bias", "d1/kernel", "out/kernel"]
        np.testing.assert_array_equal(ck["d1/kernel"], m.get_layer("d1").kernel.numpy())
        np.testing.assert_array_equal(ck["out/kernel"], m.get_layer("out").kernel.numpy())


def test_legacy_h5_weights_by_weight_names(tmp_path):
    keras = _keras()
    m = _model(keras)
    m.save(tmp_path / "m.h5")
    with rio.open(tmp_path / "m.h5") as ck:
        names = sorted(ck)
        assert any(n.endswith("d1/kernel") for n in names)
        k = next(n for n in names if n.endswith("d1/kernel"))
        np.testing.assert_array_equal(ck[k], m.get_layer("d1").kernel.numpy())


# --------------------------------------------------------------------------- hostile HDF5


def _h5(tmp_path, build):
    h5py = import_peer("h5py")
    p = tmp_path / "m.h5"
    with h5py.File(p, "w") as f:
        build(h5py, f)
    return p


def test_dataset_with_external_storage_is_refused_not_read(tmp_path):
    # HDF5 external storage makes a dataset's bytes those of another file: a 1.4 kB
    # .h5 returned /any/local/file's contents as a uint8 array
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not leak this")
    p = _h5(tmp_path, lambda h5py, f: f.create_dataset("w", shape=(16,), dtype="u1",
                                                       external=[(str(secret), 0, 16)]))
    from refquant import RefquantError

    with pytest.raises(RefquantError, match="external storage"):
        rio.open(p)


def test_virtual_dataset_reading_another_file_is_refused(tmp_path):
    def build(h5py, f):
        with h5py.File(tmp_path / "other.h5", "w") as g:
            g["d"] = np.arange(5, dtype="f4")
        lay = h5py.VirtualLayout(shape=(5,), dtype="f4")
        lay[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "d", shape=(5,))
        f.create_virtual_dataset("w", lay)

    from refquant import RefquantError

    with pytest.raises(RefquantError, match="virtual"):
        rio.open(_h5(tmp_path, build))


@pytest.mark.parametrize("target", ["exists", "missing"])
def test_external_link_to_another_file_is_refused(tmp_path, target):
    # an ExternalLink opened the other file (KeyError escaped when it was missing)
    def build(h5py, f):
        if target == "exists":
            with h5py.File(tmp_path / "other.h5", "w") as g:
                g["d"] = np.arange(5, dtype="f4")
        f["w"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "d")

    from refquant import RefquantError

    with pytest.raises(RefquantError, match="external link|other file"):
        rio.load_arrays(_h5(tmp_path, build))


def test_dataset_declaring_8_gb_without_storage_is_refused_at_open(tmp_path):
    # a chunked dataset with no chunks written claims 2**31 float32 (8 GiB) in a
    # 1.4 kB file; reading it allocated the 8 GiB
    p = _h5(tmp_path, lambda h5py, f: f.create_dataset("w", shape=(2**31,), dtype="f4", chunks=(1024,)))
    from refquant import RefquantError

    with pytest.raises(RefquantError, match="stores"):
        rio.open(p)


def test_null_dataspace_dataset_is_refused(tmp_path):
    # h5py.Empty has shape None: np.prod(None) then int() raised TypeError
    p = _h5(tmp_path, lambda h5py, f: f.create_dataset("w", data=h5py.Empty("f4")))
    from refquant import RefquantError

    with pytest.raises(RefquantError, match="null dataspace"):
        rio.open(p)


def test_gzip_dataset_and_a_hard_link_cycle_still_read(tmp_path):
    def build(h5py, f):
        f.create_dataset("w", data=np.arange(1000, dtype="f4"), compression="gzip")
        g = f.create_group("g")
        g["loop"] = g  # a group hard-linked into itself

    with rio.open(_h5(tmp_path, build)) as ck:
        np.testing.assert_array_equal(ck["w"], np.arange(1000, dtype="f4"))


def test_layer_groups_hard_linked_twice_per_level_are_walked_once(tmp_path):
    # layers/{a, b} both hard links to the next group, 25 levels: 2**25 walks (a
    # hang) from a few-kB file; each group is one layer, read once
    def build(h5py, f):
        gs = [f.create_group(f"g{i}") for i in range(25)]
        gs[-1].create_group("vars")["0"] = np.arange(3, dtype="f4")
        for i in range(24):
            lay = gs[i].create_group("layers")
            lay["a"] = gs[i + 1]
            lay["b"] = gs[i + 1]
        lay = f.create_group("layers")
        lay["a"] = gs[0]
        lay["b"] = gs[0]

    with rio.open(_h5(tmp_path, build)) as ck:
        assert len(ck) == 1
        np.testing.assert_array_equal(next(iter(ck.values())), np.arange(3, dtype="f4"))


def test_legacy_layer_named_twice_is_refused(tmp_path):
    def build(h5py, f):
        g = f.create_group("d")
        g["w"] = np.zeros(2, "f4")
        g.attrs["weight_names"] = [b"w"]
        f.attrs["layer_names"] = [b"d", b"d"]

    from refquant import RefquantError

    with pytest.raises(RefquantError, match="named twice"):
        rio.open(_h5(tmp_path, build))


@pytest.mark.parametrize("attr", ["model_config", "keras_version"])
def test_damaged_string_attribute_is_a_refquant_error(tmp_path, attr):
    # a variable-length string attribute whose global heap is damaged ("GCOL"
    # signature overwritten): reading it raised h5py's OSError from the
    # model_config read and from the metadata dict (found by byte mutation)
    def build(h5py, f):
        f.attrs[attr] = '{"class_name": "Sequential"}'
        f["w"] = np.arange(3, dtype="f4")

    p = _h5(tmp_path, build)
    raw = p.read_bytes()
    assert raw.count(b"GCOL") == 1
    p.write_bytes(raw.replace(b"GCOL", b"XCOL"))
    from refquant import RefquantError

    with pytest.raises(RefquantError, match="unreadable HDF5"):
        rio.open(p)
