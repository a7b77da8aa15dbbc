"""`tfds:<name>` sources: materialised as folders with tfds' mock data; offline fails fast."""
import time

import pytest

from trainer.data import DataError, load_dataset, tfds_source


@pytest.mark.timeout(180)
def test_tfds_source_becomes_a_folder_dataset(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    monkeypatch.setattr(tfds_source, "online", lambda timeout=3.0: True)
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("tfds:tf_flowers")
    assert ds.root == (tmp_path / "tfds" / "tf_flowers").resolve()
    assert set(ds.classes) <= {"dandelion", "daisy", "tulips", "sunflowers", "roses"}
    assert len(ds.images) == 12 and not ds.bad
    assert "tfds:tf_flowers: writing its images once as JPEG files" in capsys.readouterr().err
    # second use reads the cache: no tfds involved at all
    monkeypatch.setattr(tfds_source, "online", lambda timeout=3.0: pytest.fail("re-downloaded"))
    assert len(load_dataset("tfds:tf_flowers").images) == 12


@pytest.mark.timeout(60)
def test_tfds_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_data"))
    monkeypatch.setattr(tfds_source, "online", lambda timeout=3.0: False)
    t = time.monotonic()
    with pytest.raises(DataError, match="offline.*folder-per-class path"):
        load_dataset("tfds:cats_vs_dogs")
    assert time.monotonic() - t < 30


def test_offline_check_itself_answers_quickly():
    t = time.monotonic()
    tfds_source.online(timeout=2.0)
    assert time.monotonic() - t < 10
