"""Where training runs, per Keras backend: devices, replicas, precision policy and jit.

TensorFlow: a tf.distribute strategy (default / mirrored / multi-worker from TF_CONFIG); XLA only
on GPUs (on a CPU it is 5-11x slower, measured on MobileNetV2). JAX: `keras.distribution.DataParallel` over every
local accelerator (one process; several hosts are refused for now); jit always (JAX has no
other fast path). Mixed precision: bfloat16 where the chip has it (GPUs from compute capability
8.0, TPUs), float16 on older GPUs, off on CPUs; the model's final softmax stays float32
(trainer/model.py).

``EDGETL_LOGICAL_CPUS=N`` splits the CPU into N devices (TensorFlow logical devices, JAX host
devices) so the data-parallel paths run on a machine without GPUs; tests use it.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_runtime.errors import UserError

BACKENDS = ("tensorflow", "jax")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
_configured: dict = {}


@dataclass
class Hardware:
    """What `edgetl train` prints at the start and records in config.json."""
    backend: str
    strategy: str
    devices: list[str]
    replicas: int
    gpus: int
    precision_policy: str
    mixed_precision: bool
    jit_compile: bool
    processes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        dev = ", ".join(self.devices[:4]) + (f" (+{len(self.devices) - 4})" if len(self.devices) > 4 else "")
        return (f"backend {self.backend}, devices [{dev}], {self.strategy} x{self.replicas} replica(s)"
                f"{f' in {self.processes} processes' if self.processes > 1 else ''}, "
                f"precision {self.precision_policy}, jit {'on' if self.jit_compile else 'off'}")


# ------------------------------------------------------------------------- backend choice
def configured_backend() -> str:
    """Keras' own choice without importing Keras: $KERAS_BACKEND, then keras.json, then tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


class _HideTensorFlow(importlib.abc.MetaPathFinder):
    """Under JAX, Keras still probes for TensorFlow when it is installed (when saving a model,
    when seeding): each probe would load TensorFlow (3-4 s, ~550 MB, its own CUDA context beside
    JAX's). Refusing the import makes a machine with TensorFlow train exactly like one without."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"{name} is not loaded in a --backend jax training process", name=name)
        return None


@contextlib.contextmanager
def use_backend(name: str | None):
    """Select the Keras backend for what runs inside; yields the backend's name. Keras binds its
    backend when first imported, so a process that already runs another one is refused."""
    name = name or configured_backend()
    if name not in BACKENDS:
        raise UserError(f"unknown --backend {name!r}; use {' or '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras
        if keras.backend.backend() != name:
            raise UserError(f"Keras already runs on {keras.backend.backend()} in this process; start a new "
                            f"process with KERAS_BACKEND={name} (or edgetl train --backend {name})")
    else:
        os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        try:
            import jax  # noqa: F401
        except ImportError:
            raise UserError('--backend jax needs JAX: pip install "edgetl[jax]"') from None
    hide = _HideTensorFlow() if name == "jax" and "tensorflow" not in sys.modules else None
    if hide is not None:
        sys.meta_path.insert(0, hide)
    try:
        yield name
    finally:
        if hide is not None:
            sys.meta_path.remove(hide)


# ------------------------------------------------------------------------- precision
def _policy(mixed_precision: str, accelerator: str | None, bf16: bool) -> str:
    if mixed_precision not in ("auto", "on", "off"):
        raise UserError(f"unknown --mixed-precision {mixed_precision!r}; use auto, on or off")
    if mixed_precision == "off" or (mixed_precision == "auto" and accelerator is None):
        return "float32"
    return "mixed_bfloat16" if bf16 or accelerator is None else "mixed_float16"


def _has_bf16(capability) -> bool:
    """A CUDA compute capability, as TensorFlow ((8, 0)) or JAX ("8.0") reports it: >= 8.0?"""
    try:
        major = capability[0] if isinstance(capability, tuple) else str(capability).split(".")[0]
        return int(major) >= 8
    except (TypeError, ValueError, IndexError):
        return False


# ------------------------------------------------------------------------- TensorFlow
def _setup_tensorflow(strategy: str, mixed_precision: str):
    import keras
    import tensorflow as tf

    n_logical = int(os.environ.get("EDGETL_LOGICAL_CPUS", "0") or 0)
    if n_logical > 1 and not _configured.get("tf_logical"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n_logical)
    _configured["tf_logical"] = True
    gpus = tf.config.list_physical_devices("GPU")

    def logical_devices():   # not before MultiWorkerMirroredStrategy: it configures the runtime first
        return [d.name for d in tf.config.list_logical_devices("GPU")] or \
               [d.name for d in tf.config.list_logical_devices("CPU")]

    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "default"
    if strategy == "default":
        st = tf.distribute.get_strategy()
    elif strategy == "mirrored":
        st = tf.distribute.MirroredStrategy(devices=logical_devices())
    else:  # multiworker: the cluster comes from TF_CONFIG, one process per machine
        if not os.environ.get("TF_CONFIG"):
            raise UserError("--strategy multiworker needs TF_CONFIG describing the cluster "
                            "(see the README's two-machine recipe)")
        st = tf.distribute.MultiWorkerMirroredStrategy()
    bf16 = bool(gpus) and all(_has_bf16(tf.config.experimental.get_device_details(g).get("compute_capability"))
                              for g in gpus)
    policy = _policy(mixed_precision, "gpu" if gpus else None, bf16)
    keras.mixed_precision.set_global_policy(policy)
    processes = 1
    if strategy == "multiworker":
        processes = len(json.loads(os.environ["TF_CONFIG"]).get("cluster", {}).get("worker", [1]))
    return st, Hardware(backend="tensorflow", strategy=strategy, devices=logical_devices(),
                        replicas=st.num_replicas_in_sync, gpus=len(gpus), precision_policy=policy,
                        mixed_precision=policy != "float32", jit_compile=bool(gpus), processes=processes)


# ------------------------------------------------------------------------- JAX
class _NoScope:
    """JAX places work through keras.distribution; the trainer's `with strategy.scope()` is a no-op."""
    def __init__(self, replicas: int):
        self.num_replicas_in_sync = replicas

    def scope(self):
        return contextlib.nullcontext()


def _setup_jax(strategy: str, mixed_precision: str):
    n_logical = int(os.environ.get("EDGETL_LOGICAL_CPUS", "0") or 0)
    if n_logical > 1 and "jax" not in _configured:
        # must precede JAX's first use; harmless when JAX sees accelerators
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={n_logical}").strip()
    if strategy == "multiworker":
        # Keras' fit runs across JAX processes, but its predict (features, evaluation) cannot
        # fetch arrays that span other hosts: refused rather than failing after the head phase
        raise UserError("--strategy multiworker runs on TensorFlow only for now (TF_CONFIG); on JAX use one "
                        "machine's GPUs (--strategy auto), or --backend tensorflow")
    import jax
    import keras

    _configured["jax"] = True
    devices = jax.devices()
    accel = [d for d in devices if d.platform != "cpu"]
    if strategy == "auto":
        strategy = "mirrored" if len(devices) > 1 else "default"
    if strategy == "mirrored" and len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
        replicas = len(devices)
    else:
        keras.distribution.set_distribution(None)
        replicas = 1
    bf16 = any(d.platform == "tpu" for d in accel) or \
        (bool(accel) and all(_has_bf16(getattr(d, "compute_capability", None)) for d in accel))
    policy = _policy(mixed_precision, accel[0].platform if accel else None, bf16)
    keras.mixed_precision.set_global_policy(policy)
    return _NoScope(replicas), Hardware(
        backend="jax", strategy=strategy, devices=[f"{d.platform}:{d.id}" for d in devices], replicas=replicas,
        gpus=sum(d.platform == "gpu" for d in devices), precision_policy=policy,
        mixed_precision=policy != "float32", jit_compile=True, processes=jax.process_count())


def setup(backend: str, strategy: str = "auto", mixed_precision: str = "auto"):
    """Returns (strategy-like object with ``scope()`` and ``num_replicas_in_sync``, Hardware)."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy {strategy!r}; use {', '.join(STRATEGIES)}")
    if backend == "jax":
        return _setup_jax(strategy, mixed_precision)
    return _setup_tensorflow(strategy, mixed_precision)


# ------------------------------------------------------------------------- feeding
def fit_data(strategy, hw: Hardware, make):
    """What `fit` reads. ``make(shard)`` builds the batches for one process's share of every global
    batch. Several TensorFlow workers read one dataset each through
    `distribute_datasets_from_function` (no auto-sharding of a Python dataset, which would decode
    every image in every worker)."""
    if hw.processes <= 1:
        return make((0, 1))
    import tensorflow as tf

    def worker_dataset(ctx):
        batches = make((ctx.input_pipeline_id, ctx.num_input_pipelines))
        spec = tuple(tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype)) for a in batches[0])

        def gen():
            for i in range(len(batches)):
                yield batches[i]
            batches.on_epoch_end()   # next epoch, next shuffle: the same on every worker

        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(opts).prefetch(2)

    return strategy.distribute_datasets_from_function(worker_dataset)


def prepare_model(model, hw: Hardware):
    """Keras 3's TensorFlow trainer averages a first data batch across replicas to build the
    model symbolically; under MultiWorkerMirroredStrategy that reduce fails on a (x, y) batch
    (keras-team/keras#20585). Any one replica's batch has the shapes the build needs."""
    if hw.backend != "tensorflow" or hw.processes <= 1:
        return model
    import types

    import tensorflow as tf

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(symbolic_build, model)
    from keras.src.backend.tensorflow import trainer as tf_trainer
    if not getattr(tf_trainer.reduce_per_replica, "_edgetl", False):
        original = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            # its multi-worker "mean" reduces scalar logs along an axis they do not have
            if reduction == "auto" and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                return tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None)
                    if isinstance(v, tf.distribute.DistributedValues) else v, values)
            return original(values, strategy, reduction)

        reduce_per_replica._edgetl = True
        tf_trainer.reduce_per_replica = reduce_per_replica
    return model


@contextlib.contextmanager
def one_device(hw: Hardware):
    """For the tiny head on cached features: data parallelism costs more than it saves, and a
    last batch that does not split over the devices would be refused."""
    if hw.backend != "jax" or hw.replicas <= 1:
        yield
        return
    import keras
    dist = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(dist)
