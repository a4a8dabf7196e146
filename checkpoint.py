"""The one checkpoint schema: what best.pt and last.pt hold, how they are written and read, and
how a model is rebuilt from one.

A checkpoint is a dict of tensors and plain values (never code):

    version      FORMAT_VERSION
    model_name   'ivlaai', 'vlaai', 'linear' or 'linear_conv'
    model_args   the model's own constructor arguments (newmodel.MODELS[model_name](**model_args))
    model        the weights that are evaluated (the average, when weights are averaged)
    subjects     the training listeners, in the order of the model's subject indices
    seed, n_params, n_chans
    config       the whole resolved run config, for the record (never used to rebuild the model)
    training state: optimizer, epoch, best_val_r, bad_epochs, history (log.csv's rows), torch_rng,
                 finished, interrupted, and the averaging state (raw_model, ema_n_averaged,
                 recent_states) when weights are averaged; fit_info for closed-form models.

Checkpoints written before the format had a version (version 1, no ``version`` key) are read
and upgraded in memory: their model arguments are derived from their saved config.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

import newmodel
from fileio import atomic_write_bytes
from keras_weights import vlaai_from_keras

FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line starting with the file's path."""


def save_checkpoint(path, obj: dict) -> None:
    """torch.save through a temp file + rename, so a kill never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save(dict(obj, version=FORMAT_VERSION), buf)
    atomic_write_bytes(path, buf.getvalue())


def _upgrade_v1(ck: dict) -> dict:
    cfg = dict(ck["config"], n_chans=ck["n_chans"],
               n_subjects=len(ck["subjects"]) if ck["config"].get("subject_embedding") else 0)
    return dict(ck, version=FORMAT_VERSION, model_args=newmodel.model_args(ck["model_name"], cfg))


def load_checkpoint(path) -> dict:
    """Read a best.pt / last.pt / epoch file. Only tensors and plain Python values are unpickled;
    anything else, and a file that is missing, empty, truncated, of another format version or not
    a checkpoint at all, raises CheckpointError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not head:
        raise CheckpointError(f"{path}: empty file")
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{path}: not a torch checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds objects other than tensors and plain values; not loaded") from exc
    except Exception as exc:  # any other failure of the loader: a damaged file
        raise CheckpointError(f"{path}: truncated or damaged torch checkpoint ({type(exc).__name__})") from exc
    if not isinstance(ck, dict) or not isinstance(ck.get("model_name"), str) or not isinstance(ck.get("model"), dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model_name/model entries)")
    if ck["model_name"] not in newmodel.MODELS:
        raise CheckpointError(f"{path}: unknown model {ck['model_name']!r}")
    version = ck.get("version", 1)
    if version == 1:
        try:
            ck = _upgrade_v1(ck)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: an unversioned checkpoint without its config/subjects entries") from exc
    elif version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this code reads versions 1 and "
                              f"{FORMAT_VERSION}")
    if not isinstance(ck.get("model_args"), dict):
        raise CheckpointError(f"{path}: no model_args entry")
    return ck


def model_from_checkpoint(ck: dict, path="checkpoint") -> torch.nn.Module:
    """The checkpoint's model, built from its own constructor arguments, with its weights."""
    try:
        model = newmodel.MODELS[ck["model_name"]](**ck["model_args"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {ck['model_name']} from its arguments ({exc})") from exc
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first[1:] if ln.strip()), first[0] if first else "")
        raise CheckpointError(f"{path}: weights do not fit {ck['model_name']}: {detail}") from exc
    return model


def is_keras(path) -> bool:
    return Path(path).suffix.lower() in (".h5", ".hdf5", ".keras")


def keras_checkpoint(path) -> dict:
    """A published (or any) Keras VLAAI .h5 as a checkpoint of this schema: no training state, no
    known training listeners (every listener is 'unseen' to it)."""
    try:
        model = vlaai_from_keras(path)
    except (ValueError, OSError) as exc:
        text = str(exc)
        raise CheckpointError(text if text.startswith(str(path)) else f"{path}: {text}") from exc
    return {"version": FORMAT_VERSION, "model_name": "vlaai", "model_args": {"n_chans": model.n_chans},
            "model": model.state_dict(), "subjects": [], "seed": 0, "n_chans": model.n_chans,
            "n_params": sum(p.numel() for p in model.parameters()), "config": {}, "source": str(path)}


def load_weights_file(path) -> dict:
    """A best.pt / last.pt, or a Keras VLAAI .h5 converted, as a checkpoint dict."""
    return keras_checkpoint(path) if is_keras(path) else load_checkpoint(path)


def load_model(path, device, model_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, checkpoint) from a best.pt / last.pt or a Keras VLAAI .h5.

    ``model_name``: the model the caller expects (e.g. the folder's name); another is refused."""
    ck = load_weights_file(path)
    if model_name is not None and ck["model_name"] != model_name:
        raise CheckpointError(f"{path}: holds a {ck['model_name']} model, not {model_name}")
    return model_from_checkpoint(ck, path).to(device).eval(), ck
