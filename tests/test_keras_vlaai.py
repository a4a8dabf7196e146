"""keras_weights.vlaai_from_keras: the reference's Keras VLAAI (.h5) loaded into the torch VLAAI.

The fixture (a VLAAI built and saved by the reference TensorFlow code with random weights, and its
outputs on fixed inputs) lives outside the repository, in ../shared/fixtures/vlaai_keras; it is
read in place. Variants of it (weights-only layout, other layer names, broken files) are written
with h5py into tmp_path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keras_weights import KerasWeightsError, vlaai_from_keras
from newmodel import VLAAI, build_model, receptive_field

h5py = pytest.importorskip("h5py", reason="h5py (requirements.txt) is needed to read Keras .h5 files")

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vlaai_keras"
H5 = FIXTURES / "vlaai_keras_random.h5"
IO = FIXTURES / "vlaai_keras_random_io.npz"
pytestmark = pytest.mark.skipif(
    not (H5.is_file() and IO.is_file()),
    reason=f"Keras VLAAI fixture not present at {FIXTURES} (shared test data, outside the repository)")

TOL = 1e-4  # absolute, float32
N_PARAMS = 1_740_289


# ----------------------------------------------------------------------------- h5 rewriting helpers


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def read_layers(path: Path) -> tuple[dict, list[tuple[str, list[tuple[str, np.ndarray]]]]]:
    """(root attrs, [(layer name, [(weight name, array)])]) of a Keras .h5, in layer_names order,
    weightless layers included. Plain h5py, independent of the code under test."""
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        attrs = {k: root.attrs[k] for k in ("backend", "keras_version") if k in root.attrs}
        layers = []
        for name in _strings(root.attrs["layer_names"]):
            g = root[name]
            layers.append((name, [(w, np.asarray(g[w])) for w in _strings(g.attrs["weight_names"])]))
    return attrs, layers


def write_layers(path: Path, attrs: dict, layers, full: bool = True) -> Path:
    """Write layers as Keras 2 does: a full-model save (under model_weights/, model_config at the
    root) or a weights-only save (layers at the root)."""
    with h5py.File(path, "w") as f:
        if full:
            f.attrs["backend"], f.attrs["keras_version"] = "tensorflow", "2.21.0"
            f.attrs["model_config"] = '{"class_name": "Functional"}'
            root = f.create_group("model_weights")
        else:
            root = f
        for k, v in attrs.items():
            root.attrs[k] = v
        root.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        for name, ws in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in ws])
            for w, arr in ws:
                g.create_dataset(w, data=arr)
    return path


def predict(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


@pytest.fixture(scope="module")
def io():
    with np.load(IO) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model():
    return vlaai_from_keras(H5)


def assert_matches_reference(m, io):
    for x, y in (("eeg", "out"), ("eeg_odd", "out_odd")):
        out = predict(m, io[x])
        assert out.shape == io[y].shape and out.dtype == np.float32
        err = float(np.abs(out - io[y]).max())
        assert err < TOL, f"{x}: max abs difference {err:.3g} to the Keras reference"


def assert_rejected(path: Path, *fragments: str) -> str:
    with pytest.raises(KerasWeightsError) as exc:
        vlaai_from_keras(path)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert str(path) in msg and "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# ----------------------------------------------------------------------------- matching the reference


def test_full_model_file_reproduces_keras_outputs(model, io):
    """Both fixture inputs (2 x 640 samples, and an odd 333) to 1e-4 in float32."""
    assert isinstance(model, VLAAI) and not model.training
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS
    assert receptive_field(model) == receptive_field("vlaai") == (124, 140)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_matches_reference(model, io)


def test_weights_are_mapped_with_transposed_kernels(model):
    _, layers = read_layers(H5)
    by_kind = {tuple(a.ndim for _, a in ws): ws for _, ws in layers if ws}
    ctx = by_kind[(3, 1, 1, 1)]                    # the output-context sub-model
    np.testing.assert_array_equal(model.output_context.conv.weight.detach().numpy(), ctx[0][1].transpose(2, 1, 0))
    np.testing.assert_array_equal(model.output_context.norm.weight.detach().numpy(), ctx[2][1])
    dense = [ws for _, ws in layers if [a.ndim for _, a in ws] == [2, 1]]
    np.testing.assert_array_equal(model.final.weight.detach().numpy(), dense[-1][0][1].T)
    for i in range(4):
        np.testing.assert_array_equal(model.dense[i].bias.detach().numpy(), dense[i][1][1])


def test_weights_only_layout(tmp_path, model, io):
    """``save_weights('x.h5')``: the layers at the root of the file, no model_weights group."""
    attrs, layers = read_layers(H5)
    path = write_layers(tmp_path / "weights_only.h5", attrs, layers, full=False)
    with h5py.File(path, "r") as f:
        assert "model_weights" not in f and "layer_names" in f.attrs
    m = vlaai_from_keras(path)
    assert_matches_reference(m, io)
    for (k, a), b in zip(m.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_weights_only_copy_made_with_h5py_copy(tmp_path, io):
    """The same, built by copying the fixture's groups (attributes and all) to a new root."""
    path = tmp_path / "copied.h5"
    with h5py.File(H5, "r") as src, h5py.File(path, "w") as dst:
        mw = src["model_weights"]
        for k, v in mw.attrs.items():
            dst.attrs[k] = v
        for name in mw:
            src.copy(mw[name], dst, name=name)
    assert_matches_reference(vlaai_from_keras(path), io)


def test_other_layer_names_are_matched_by_structure(tmp_path, io):
    """Layer and weight names unlike the fixture's, chosen so that alphabetical order (the order
    HDF5 lists groups in) reverses the block order: only layer_names order may decide."""
    attrs, layers = read_layers(H5)
    renamed = []
    for i, (_name, ws) in enumerate(layers):
        new = f"{chr(ord('z') - i)}_layer_{100 - i}"
        new_ws = [(f"{new}_{j}/{w.rsplit('/', 1)[-1]}", a) for j, (w, a) in enumerate(ws)]
        renamed.append((new, new_ws))
    path = write_layers(tmp_path / "renamed.h5", attrs, renamed)
    assert not {n for n, _ in renamed} & {n for n, _ in layers}
    assert_matches_reference(vlaai_from_keras(path), io)


def test_keras_names_in_other_numbering(tmp_path, io):
    """Auto-names as a second model in one Keras session would get them (dense_5 .. dense_9):
    'dense_10' sorts before 'dense_6' though it is a later layer."""
    attrs, layers = read_layers(H5)
    mapping = {"dense": "dense_6", "dense_1": "dense_7", "dense_2": "dense_8", "dense_3": "dense_9",
               "dense_4": "dense_10", "extractor": "extractor_1", "output_context_model": "output_context_model_1"}
    renamed = []
    for n, ws in layers:
        new = mapping.get(n, n)
        if n.startswith("dense"):  # a Dense layer's weights are named '<layer>/kernel:0'
            ws = [(f"{new}/{w.rsplit('/', 1)[-1]}", a) for w, a in ws]
        renamed.append((new, ws))
    path = write_layers(tmp_path / "renumbered.h5", attrs, renamed)
    assert_matches_reference(vlaai_from_keras(path), io)


# ----------------------------------------------------------------------------- refusals


def _edit(layers, layer_index_of_kind, fn):
    """Apply fn to the weight list of the n-th weighted layer."""
    weighted = [i for i, (_, ws) in enumerate(layers) if ws]
    i = weighted[layer_index_of_kind]
    name, ws = layers[i]
    layers[i] = (name, fn(ws))
    return layers, name


def test_wrong_shape_is_refused(tmp_path):
    attrs, layers = read_layers(H5)
    weighted = [(n, ws) for n, ws in layers if ws]
    ctx_name = next(n for n, ws in weighted if [a.ndim for _, a in ws] == [3, 1, 1, 1])
    layers = [(n, [(w, a[:-1] if a.ndim == 3 else a) for w, a in ws]) if n == ctx_name else (n, ws)
              for n, ws in layers]
    path = write_layers(tmp_path / "short_kernel.h5", attrs, layers)
    msg = assert_rejected(path, ctx_name, "(31, 64, 64)", "(32, 64, 64)")
    assert "output context" in msg


def test_wrong_channel_count_is_refused(tmp_path):
    """A VLAAI for 32-channel EEG: the first mismatch is the extractor's first kernel."""
    attrs, layers = read_layers(H5)
    ext = next(n for n, ws in layers if len(ws) == 20)
    layers = [(n, [(w, a[:, :32] if (n == ext and k == 0) else a) for k, (w, a) in enumerate(ws)])
              for n, ws in layers]
    path = write_layers(tmp_path / "chans32.h5", attrs, layers)
    assert_rejected(path, "(8, 32, 256)", "(8, 64, 256)", ext)


def test_missing_layer_is_refused(tmp_path):
    attrs, layers = read_layers(H5)
    dense = [n for n, ws in layers if [a.ndim for _, a in ws] == [2, 1]]
    dropped = [(n, ws) for n, ws in layers if n != dense[2]]
    assert_rejected(write_layers(tmp_path / "no_dense.h5", attrs, dropped), "found 4 dense", "expected 5")
    # listed in layer_names, but its group is gone
    path = write_layers(tmp_path / "no_group.h5", attrs, layers)
    with h5py.File(path, "a") as f:
        del f["model_weights"][dense[2]]
    assert_rejected(path, repr(dense[2]), "missing")
    # a missing weight of a listed layer
    path = write_layers(tmp_path / "no_weight.h5", attrs, layers)
    with h5py.File(path, "a") as f:
        g = f["model_weights"][dense[0]]
        del g[_strings(g.attrs["weight_names"])[1]]
    assert_rejected(path, repr(dense[0]), "missing")


def test_wrong_total_is_refused(tmp_path):
    """An extra Dense layer: 1,740,289 + 65 parameters."""
    attrs, layers = read_layers(H5)
    extra = ("dense_extra", [("dense_extra/kernel:0", np.zeros((64, 1), np.float32)),
                             ("dense_extra/bias:0", np.zeros(1, np.float32))])
    path = write_layers(tmp_path / "extra.h5", attrs, layers + [extra])
    assert_rejected(path, "1,740,354", "1,740,289", "found 6 dense")
    # an extra weight of an unknown kind in a layer
    layers2, name = _edit(read_layers(H5)[1], -1, lambda ws: ws + [("x/extra:0", np.zeros(3, np.float32))])
    assert_rejected(write_layers(tmp_path / "extra_weight.h5", attrs, layers2), name, "1,740,292")


def test_not_a_keras_file_is_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    assert_rejected(junk, "HDF5")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w"):
        pass
    assert_rejected(empty, "layer_names")


def test_untouched_vlaai_differs_from_reference(io):
    """Sanity of the check itself: a freshly initialised VLAAI does not match the fixture."""
    torch.manual_seed(0)
    out = predict(build_model("vlaai").eval(), io["eeg"])
    assert np.abs(out - io["out"]).max() > 10 * TOL


def test_layer_names_split_over_attributes(tmp_path, io):
    """Keras stores a name list too long for one HDF5 attribute as layer_names0, layer_names1, ..."""
    attrs, layers = read_layers(H5)
    path = write_layers(tmp_path / "chunked.h5", attrs, layers)
    with h5py.File(path, "a") as f:
        root = f["model_weights"]
        names = root.attrs["layer_names"]
        del root.attrs["layer_names"]
        root.attrs["layer_names0"], root.attrs["layer_names1"] = names[:5], names[5:]
        ext = next(g for g in root.values() if len(g.attrs["weight_names"]) == 20)
        w = ext.attrs["weight_names"]
        del ext.attrs["weight_names"]
        ext.attrs["weight_names0"], ext.attrs["weight_names1"], ext.attrs["weight_names2"] = w[:7], w[7:9], w[9:]
    assert_matches_reference(vlaai_from_keras(path), io)
