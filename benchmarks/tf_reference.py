"""The reference TensorFlow VLAAI (``model.py`` of a clone of https://github.com/exporl/vlaai,
imported from its file at run time), timed the way ``benchmarks.throughput`` times ours: same
synthetic batch, float32, the same thread counts. TensorFlow is not in requirements.txt; without it
``measure_tf_reference`` returns None and the caller prints ``TF_MISSING``.
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from benchmarks.flops import make_batch

TF_MISSING = ("[tf reference] skipped: tensorflow is not installed in this environment "
              "(pip install tensorflow-cpu tf-keras to time the reference VLAAI)")
TF_ENV = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_DEFAULT_FPMATH_MODE", "TF_USE_LEGACY_KERAS", "ONEDNN_VERBOSE")


def tf_reference_file(folder) -> Path:
    """PATH/model.py of a clone of the reference repository, or a one-line SystemExit."""
    f = Path(folder).expanduser() / "model.py"
    if not f.is_file():
        raise SystemExit(f"--tf_reference={folder}: no model.py there; pass the folder of a clone of "
                         "https://github.com/exporl/vlaai")
    return f


def import_tensorflow():
    """tensorflow, with Keras 2 (tf-keras) when installed, which the reference's functional code
    needs (Keras 3 rejects its ``tf.zeros_like`` on a symbolic input). None if not installed."""
    if "TF_USE_LEGACY_KERAS" not in os.environ and importlib.util.find_spec("tf_keras") is not None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf


def load_tf_reference(model_py: Path):
    """The reference's model.py as a module, imported from its file (not put on sys.path)."""
    spec = importlib.util.spec_from_file_location("vlaai_tf_reference", model_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tf_info(tf, model) -> dict:
    """Versions, settings and float policy of the TensorFlow run, to judge its figures by."""
    from importlib import metadata

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    try:
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")
    return {"tensorflow": tf.__version__, "keras": version("tf-keras") if legacy else version("keras"),
            "legacy_keras": os.environ.get("TF_USE_LEGACY_KERAS"), "onednn": onednn,
            "float_policy": tf.keras.mixed_precision.global_policy().name, "params": int(model.count_params()),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "env": {k: os.environ[k] for k in TF_ENV if k in os.environ}}


def _time_loop(fn, steps: int, warmup: int) -> float:
    """Seconds per call of fn over ``steps`` calls after ``warmup`` untimed ones (as measure_model)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def measure_tf_reference(model_py: Path, *, batch: int, window: int, steps: int, warmup: int, threads: int,
                         interop_threads: int, seed: int = 0) -> dict | None:
    """Training and inference samples/s of the reference TensorFlow VLAAI (None without tensorflow).

    Training: compiled as the reference's README does (Adam, its pearson_loss and pearson_metric),
    one ``train_on_batch`` per step; inference: ``model(x, training=False)`` in a tf.function. The
    same synthetic batch as ours (make_batch), float32, the given threads."""
    tf = import_tensorflow()
    if tf is None:
        return None
    try:  # only before TF's runtime starts; a second call in one process keeps the first (reported)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(interop_threads)
    except RuntimeError:
        pass
    ref = load_tf_reference(model_py)
    tf.keras.utils.set_random_seed(seed)
    try:
        model = ref.vlaai()
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"--tf_reference: {model_py} did not build a VLAAI ({' '.join(str(exc).split())[:200]}); "
                         "it is Keras 2 code: pip install tf-keras") from exc
    model.compile(optimizer="adam", loss=ref.pearson_loss, metrics=[ref.pearson_metric])
    xt, yt, _, _ = make_batch(batch, window, seed=seed)
    x, y = tf.constant(xt.numpy()), tf.constant(yt.numpy())
    infer = tf.function(lambda t: model(t, training=False))
    samples = batch * window
    t_train = _time_loop(lambda: model.train_on_batch(x, y), steps, warmup)
    t_infer = _time_loop(lambda: infer(x).numpy(), steps, warmup)
    return {"model": "tf_vlaai", **_tf_info(tf, model), "train_step_s": t_train, "train_samples_s": samples / t_train,
            "infer_step_s": t_infer, "infer_samples_s": samples / t_infer,
            "train_call": "model.compile(optimizer='adam', loss=pearson_loss, metrics=[pearson_metric]); "
                          "model.train_on_batch(x, y)",
            "infer_call": "tf.function(lambda x: model(x, training=False))"}
