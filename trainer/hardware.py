"""Where training runs: tf.distribute strategy, mixed precision (GPU only), XLA (never on CPU)."""
from __future__ import annotations

import os

_configured = False


def setup(strategy: str = "auto", mixed_precision: str = "auto"):
    """Returns (strategy, facts). ``EDGETL_LOGICAL_CPUS=N`` splits the CPU into N logical devices
    so the mirrored path can be exercised on a machine without GPUs (tests do this)."""
    global _configured
    import keras
    import tensorflow as tf

    n_logical = int(os.environ.get("EDGETL_LOGICAL_CPUS", "0") or 0)
    if n_logical > 1 and not _configured:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_logical)
    _configured = True
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "default"
    if strategy == "default":
        st = tf.distribute.get_strategy()
    elif strategy == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        st = tf.distribute.MirroredStrategy(devices=devices)
    elif strategy == "multiworker":  # cluster from TF_CONFIG, one process per machine
        st = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        from edge_runtime.errors import UserError
        raise UserError(f"unknown --strategy {strategy!r}; use auto, default, mirrored or multiworker")
    mp = (mixed_precision == "on") or (mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mp else "float32")
    facts = {"strategy": strategy, "replicas": st.num_replicas_in_sync, "gpus": len(gpus),
             "mixed_precision": mp, "jit_compile": bool(gpus)}
    return st, facts
