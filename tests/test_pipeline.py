"""The trainer's input pipeline: order, reshuffling, worker shards, padding, cache, augmentation."""
import numpy as np
import pytest

from edge_runtime.image import load_image
from trainer.data.pipeline import augmenter, image_dataset


@pytest.fixture(scope="module")
def files(synth_data):
    return sorted(str(p) for p in synth_data.rglob("*.jpg"))[:20]


def test_batches_are_the_device_decoders_pixels_in_order(files):
    ds = image_dataset(files, size=64, batch_size=8)
    assert len(ds) == 3
    (x,) = ds[0]
    assert x.dtype == np.uint8 and x.shape == (8, 64, 64, 3)
    assert np.array_equal(x[3], load_image(files[3], 64))
    assert len(ds[2][0]) == 4                          # the ragged end is kept ...
    assert len(image_dataset(files, size=64, batch_size=8, drop_remainder=True)) == 2   # ... or dropped


def test_shuffle_is_seeded_and_new_each_epoch(files):
    labels = np.arange(len(files))
    a = image_dataset(files, labels, 32, batch_size=20, shuffle=True, seed=3)
    b = image_dataset(files, labels, 32, batch_size=20, shuffle=True, seed=3)
    first = a[0][1]
    assert sorted(first) == list(range(20)) and not np.array_equal(first, labels)
    assert np.array_equal(first, b[0][1])
    a.on_epoch_end()
    assert not np.array_equal(a[0][1], first) and sorted(a[0][1]) == list(range(20))


def test_worker_shards_split_every_global_batch(files):
    labels = np.arange(len(files))
    whole = image_dataset(files, labels, 32, batch_size=8, shuffle=True, seed=1, drop_remainder=True)
    shards = [image_dataset(files, labels, 32, batch_size=8, shuffle=True, seed=1, drop_remainder=True,
                            shard=(k, 2)) for k in range(2)]
    for b in range(len(whole)):
        parts = [s[b][1] for s in shards]
        assert [len(p) for p in parts] == [4, 4]
        assert np.array_equal(np.concatenate(parts), whole[b][1])


def test_last_batch_is_padded_for_devices(files):
    ds = image_dataset(files[:9], size=32, batch_size=4, pad_multiple=2)
    assert [len(ds[i][0]) for i in range(len(ds))] == [4, 4, 2]
    assert np.array_equal(ds[2][0][0], ds[2][0][1])   # the last image, repeated


def test_decoded_cache_serves_the_same_pixels(files, tmp_path):
    import shutil
    copy = [shutil.copy(f, tmp_path / f"{i}.jpg") for i, f in enumerate(files[:4])]
    ds = image_dataset(copy, size=32, batch_size=4, cache=True)
    first = ds[0][0].copy()
    for f in copy:
        open(f, "wb").close()                      # the files are gone; the cache is not
    assert np.array_equal(ds[0][0], first)


def test_augmentation_compiles_on_every_backend_and_is_off_at_inference():
    aug = augmenter(0)
    aug.build((None, 32, 32, 3))
    assert all(layer.supports_jit for layer in aug._flatten_layers())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.allclose(np.asarray(aug(x, training=False)), x)
    assert not np.allclose(np.asarray(aug(x, training=True)), x)
