"""The reference's Keras VLAAI weights (.h5) loaded into this project's ``newmodel.VLAAI``.

Read with h5py only: never TensorFlow, never pickle. ``checkpoint.load_weights_file`` turns such a
file into a checkpoint (``checkpoint.keras_checkpoint``), so a published VLAAI is used wherever a
best.pt is.
"""
from __future__ import annotations

import numpy as np
import torch

from newmodel import VLAAI

VLAAI_N_PARAMS = 1_740_289  # VLAAI with 64 EEG channels, as in the Keras reference


class KerasWeightsError(ValueError):
    """A Keras .h5 file that cannot be loaded as a VLAAI; the one-line message names the file."""


def _h5_strings(obj, name: str) -> list[str] | None:
    """A Keras HDF5 string-list attribute -> [str] (items str or bytes; an empty list may be stored
    as an empty float array). Keras splits a list too long for one HDF5 attribute into ``name0``,
    ``name1``, ...; those are joined. None when the attribute is absent."""
    attrs = obj.attrs
    if name in attrs:
        chunks = [attrs[name]]
    elif f"{name}0" in attrs:
        chunks, k = [], 0
        while f"{name}{k}" in attrs:
            chunks.append(attrs[f"{name}{k}"])
            k += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v)
            for chunk in chunks for v in np.asarray(chunk).reshape(-1)]


def _keras_weighted_layers(f, path) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(layer name, [(weight name, array), ...]), ...] in the file's ``layer_names`` order,
    layers without weights left out. Reads a full-model save (``model_weights/``) or a
    weights-only save (layers at the root); each layer's weights in its ``weight_names`` order."""
    root = f["model_weights"] if "model_weights" in f else f
    layer_names = _h5_strings(root, "layer_names")
    if layer_names is None:
        raise KerasWeightsError(f"{path}: no 'layer_names' attribute; not a Keras HDF5 model or weights file")
    layers = []
    for name in layer_names:
        if name not in root:
            raise KerasWeightsError(f"{path}: layer {name!r} is listed in layer_names but missing from the file")
        group = root[name]
        weights = []
        for wname in _h5_strings(group, "weight_names") or []:
            if wname not in group:
                raise KerasWeightsError(f"{path}: weight {wname!r} of layer {name!r} is missing from the file")
            weights.append((wname, np.asarray(group[wname])))
        if weights:
            layers.append((name, weights))
    return layers


def _vlaai_keras_order(model: VLAAI) -> dict[str, list[tuple[str, str]]]:
    """Per Keras layer role, the torch parameters in Keras ``weight_names`` order, with their kind
    ('conv' kernel (k, in, out), 'dense' kernel (in, out), or 'vector')."""
    extractor = []
    for i in range(len(model.extractor.convs)):
        extractor += [(f"extractor.convs.{i}.weight", "conv"), (f"extractor.convs.{i}.bias", "vector"),
                      (f"extractor.norms.{i}.weight", "vector"), (f"extractor.norms.{i}.bias", "vector")]
    roles = {
        "extractor": extractor,
        "output context": [("output_context.conv.weight", "conv"), ("output_context.conv.bias", "vector"),
                           ("output_context.norm.weight", "vector"), ("output_context.norm.bias", "vector")],
    }
    for i in range(len(model.dense)):
        roles[f"dense of block {i + 1}"] = [(f"dense.{i}.weight", "dense"), (f"dense.{i}.bias", "vector")]
    roles["final dense"] = [("final.weight", "dense"), ("final.bias", "vector")]
    return roles


def _to_keras_shape(shape, kind) -> tuple:
    """A torch parameter shape -> the shape Keras stores: Conv1D (out, in, k) -> (k, in, out);
    Dense (out, in) -> (in, out); vectors unchanged."""
    return tuple(reversed(shape)) if kind in ("conv", "dense") else tuple(shape)


def _to_torch(arr: np.ndarray, kind) -> torch.Tensor:
    arr = np.asarray(arr, dtype=np.float32)
    if kind == "conv":
        arr = arr.transpose(2, 1, 0)        # (k, in, out) -> (out, in, k)
    elif kind == "dense":
        arr = arr.T                          # (in, out) -> (out, in)
    return torch.from_numpy(np.ascontiguousarray(arr))


def vlaai_from_keras(path) -> VLAAI:
    """A ``VLAAI`` (64 channels) holding the weights of a Keras VLAAI saved as HDF5 (.h5).

    Reads, with h5py only, both a full-model save (``model.save('x.h5')``, weights under
    ``model_weights/``; the layout of the published ``vlaai.h5``) and a weights-only save
    (``model.save_weights('x.h5')``, layers at the root). Layers are matched by structure and
    order, never by their (automatic) names: in ``layer_names`` order, the layer holding 5 x
    [Conv1D kernel, bias, LayerNorm gamma, beta] is the shared extractor, the one holding one such
    set the shared output context, and the five Dense layers are the per-block ones in block order
    followed by the final Dense(1). Conv1D kernels (k, in, out) become torch (out, in, k), Dense
    kernels (in, out) become (out, in). Every shape and the total parameter count (1,740,289)
    are checked; anything else raises KerasWeightsError (a ValueError) with a one-line message
    naming the file and the first mismatch. Returns the model in eval mode.
    """
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is in requirements.txt
        raise ImportError("vlaai_from_keras needs h5py (pip install 'h5py>=3.8')") from exc
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise KerasWeightsError(f"{path}: cannot read as an HDF5 file ({' '.join(str(exc).split())})") from exc
    with f:
        layers = _keras_weighted_layers(f, path)

    model = VLAAI(n_chans=64)
    roles = _vlaai_keras_order(model)
    total = sum(a.size for _, ws in layers for _, a in ws)
    expected_ranks = {
        "extractor": [3, 1, 1, 1] * len(model.extractor.convs),
        "output context": [3, 1, 1, 1],
        "dense": [2, 1],
    }
    found: dict[str, list] = {"extractor": [], "output context": [], "dense": []}

    def fail(detail: str):
        raise KerasWeightsError(
            f"{path}: not a Keras VLAAI ({VLAAI_N_PARAMS:,} parameters, 64 channels): {detail} "
            f"[file holds {total:,} parameters]")

    for name, ws in layers:
        ranks = [a.ndim for _, a in ws]
        kind = next((k for k, r in expected_ranks.items() if r == ranks), None)
        if kind is None:
            fail(f"layer {name!r} holds {len(ws)} weights of shapes {[a.shape for _, a in ws]}, "
                 "which is no VLAAI layer (extractor, output context or Dense)")
        found[kind].append((name, ws))
    n_dense = len(model.dense) + 1
    for kind, want in (("extractor", 1), ("output context", 1), ("dense", n_dense)):
        if len(found[kind]) != want:
            names = [n for n, _ in found[kind]]
            fail(f"found {len(found[kind])} {kind} layer(s) {names}, expected {want}"
                 + (f" ({len(model.dense)} per-block + the final Dense)" if kind == "dense" else ""))
    assigned = [("extractor", found["extractor"][0]), ("output context", found["output context"][0])]
    assigned += [(role, layer) for role, layer in zip(list(roles)[2:], found["dense"], strict=True)]

    params = dict(model.named_parameters())
    state = {}
    for role, (name, ws) in assigned:
        for (tname, kind), (wname, arr) in zip(roles[role], ws, strict=True):
            want = _to_keras_shape(params[tname].shape, kind)
            if tuple(arr.shape) != want:
                fail(f"weight {wname!r} of layer {name!r} ({role}) has shape {tuple(arr.shape)}, expected {want}")
            if not np.isfinite(arr).all():
                fail(f"weight {wname!r} of layer {name!r} ({role}) holds NaN or Inf")
            state[tname] = _to_torch(arr, kind)
    if total != VLAAI_N_PARAMS:
        fail(f"the weights hold {total:,} parameters, expected {VLAAI_N_PARAMS:,}")
    model.load_state_dict(state, strict=True)
    return model.eval()
