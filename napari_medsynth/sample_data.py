"""npe2 sample-data contributions: the files of `medsynth.data.samples` as layers."""

from __future__ import annotations

from napari_medsynth.layers import LayerDataTuple, to_layer_data


def _load(name: str) -> list[LayerDataTuple]:
    from medsynth.data.samples import load_sample

    return [to_layer_data(load_sample(name))]


def us_cine() -> list[LayerDataTuple]:
    return _load("us_cine")


def chest_xray() -> list[LayerDataTuple]:
    return _load("chest_xray")


def mr_slice() -> list[LayerDataTuple]:
    return _load("mr_slice")


def ct_slice() -> list[LayerDataTuple]:
    return _load("ct_slice")


def mni152() -> list[LayerDataTuple]:
    return _load("mni152")
