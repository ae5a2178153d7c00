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
