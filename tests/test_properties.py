"""Property-based fault suite: whatever JSON a manifest, a run file or an Open Inference Protocol
request holds, the parser that owns it answers with a UserError naming the file (or an HTTP 4xx
with a message), never another exception. Hypothesis draws the shapes and values; each property
also runs on mutations of a valid document, where the bugs hide."""
import copy
import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.errors import UserError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**80, max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)

VALID_MANIFEST = {
    "format": "edgetl-manifest/1", "labels": ["cat", "dog"], "labels_file": "labels.txt",
    "input": {"size": 96, "color": "RGB", "range": [0, 255], "layout": "NHWC", "resize": "bilinear"},
    "default": "fp32",
    "artifacts": [{"file": "model_fp32.tflite", "precision": "fp32", "sha256": "0" * 64, "bytes": 10,
                   "input": {"dtype": "float32", "scale": 0.0, "zero_point": 0},
                   "output": {"dtype": "float32", "scale": 0.0, "zero_point": 0, "probabilities": True},
                   "verification": {"status": "passed"}}],
}


def _paths(doc, prefix=()):
    """Every key path into a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def mutated(valid):
    """A valid document with one value somewhere replaced by any JSON value (or removed)."""
    paths = list(_paths(valid))

    @st.composite
    def build(draw):
        doc = copy.deepcopy(valid)
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
        return doc
    return build()


def _write(path, doc):
    try:
        path.write_text(json.dumps(doc))
    except ValueError:   # out-of-range float; json writes NaN/Infinity, never raises, but be safe
        path.write_text("{}")


def _read_manifest(folder):
    from edge_runtime.manifest import load_manifest

    try:
        m = load_manifest(folder)
        m.artifact()
        assert m.size > 0 and m.labels and m.resize
    except UserError as e:
        assert str(e).startswith(str(folder)), str(e)


@SETTINGS
@given(doc=st.one_of(json_values, mutated(VALID_MANIFEST)))
def test_any_manifest_is_read_or_refused_with_a_user_error(tmp_path, doc):
    _write(tmp_path / "manifest.json", doc)
    _read_manifest(tmp_path)


def test_a_deeply_nested_manifest_or_a_manifest_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="damaged manifest"):
        _read_manifest_strict(tmp_path / "a")
    (tmp_path / "b" / "manifest.json").mkdir(parents=True)
    with pytest.raises(UserError, match="cannot be read"):
        _read_manifest_strict(tmp_path / "b")


def _read_manifest_strict(folder):
    from edge_runtime.manifest import load_manifest

    return load_manifest(folder)


@pytest.mark.parametrize("file", [".", "..", "sub/model.tflite", "../model.tflite"])
def test_an_artifact_file_outside_the_folder_is_refused(tmp_path, file):
    doc = copy.deepcopy(VALID_MANIFEST)
    doc["artifacts"][0]["file"] = file
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="must be a file name inside the deploy folder"):
        _read_manifest_strict(tmp_path)


# -- run files --------------------------------------------------------------------------------------

VALID_CONFIG = {"train": {"data": "/d", "out": "/r", "backbone": "mobilenet_v2", "size": 96, "lr": 0.001},
                "backbone": {"name": "mobilenet_v2", "size": 96, "alpha": 0.35},
                "input": {"size": 96, "resize": "bilinear"}, "hardware": {"precision_policy": "float32"}}
VALID_METRICS = {"test": {"accuracy": 0.9, "class_avg_accuracy": 0.9, "n": 10, "per_class": {"cat": {"f1": 1}},
                          "misclassified": [{"file": "/d/cat/1.jpg", "predicted": "dog"}]}}


@SETTINGS
@given(split=json_values, config=st.one_of(json_values, mutated(VALID_CONFIG)),
       metrics=st.one_of(json_values, mutated(VALID_METRICS)), state=json_values)
def test_any_run_file_is_read_or_refused_with_a_user_error(tmp_path, split, config, metrics, state):
    from trainer.runs import rundir as R
    from trainer.runs.run import read_config, read_metrics, read_state

    (tmp_path / "split").mkdir(exist_ok=True)
    for name, doc in (("split/split.json", split), ("config.json", config), ("metrics.json", metrics),
                      ("state.json", state)):
        _write(tmp_path / name, doc)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    for read in (R.read_labels, R.read_resize, read_metrics, read_state,
                 lambda run: read_config(run).train_config()):
        try:
            read(tmp_path)
        except UserError as e:
            assert str(tmp_path) in str(e) or str(e).startswith("--"), str(e)


@SETTINGS
@given(config=st.one_of(json_values, mutated(VALID_CONFIG)), metrics=st.one_of(json_values, mutated(VALID_METRICS)))
def test_runs_lists_a_damaged_run_and_still_lists_the_others(tmp_path_factory, config, metrics):
    from trainer.runs.history import list_runs

    root = tmp_path_factory.mktemp("runs")
    for name, cfg in (("good", VALID_CONFIG), ("damaged", config)):
        (root / name).mkdir()
        (root / name / "labels.txt").write_text("cat\ndog\n")
        _write(root / name / "config.json", cfg)
        _write(root / name / "metrics.json", VALID_METRICS if name == "good" else metrics)
    rows = {r.run.rsplit("/", 1)[-1]: r for r in list_runs([root])}
    assert set(rows) == {"good", "damaged"} and rows["good"].accuracy == 0.9
    assert rows["damaged"].status.startswith(("damaged: ", "done", "incomplete"))


@pytest.mark.parametrize("arrays", [
    {"files": ["a", "b"], "y": [0, 5], "probs": [[1.0, 0.0], [0.0, 1.0]], "classes": ["x", "y"]},   # class 5 of 2
    {"files": ["a"], "y": [0], "probs": [[1.0]], "classes": ["x", "y"]},                          # short row
    {"files": ["a"], "y": [0]},                                                                   # keys missing
], ids=["class-out-of-range", "shape", "missing-keys"])
def test_damaged_predictions_are_one_user_error(tmp_path, arrays):
    import numpy as np

    from trainer.runs.run import read_predictions

    (tmp_path / "predictions").mkdir()
    np.savez(tmp_path / "predictions" / "test.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(UserError, match="test.npz"):
        read_predictions(tmp_path)
    (tmp_path / "predictions" / "test.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="damaged"):
        read_predictions(tmp_path)


# -- Open Inference Protocol requests ---------------------------------------------------------------

GEN = SimpleNamespace(first=SimpleNamespace(size=2))
VALID_INFER = {"id": "1", "inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8",
                                      "data": list(range(12))}],
               "outputs": [{"name": "labels", "parameters": {"top_k": 2}}, {"name": "scores"}]}


def _parse(body: bytes):
    """The server's own request path up to inference: parse, check, build the tensor/bytes."""
    from edge_runtime.serve.app import HTTPError, _decode_bytes, _json_request, _parse_infer, _tensor

    try:
        req = _json_request(body)
        inp, outputs, top_k = _parse_infer(req, GEN)
        (_decode_bytes(inp) if inp["datatype"] == "BYTES" else _tensor(inp, GEN))
        assert type(top_k) is int and top_k >= 1
    except HTTPError as e:
        assert 400 <= e.status < 500


@SETTINGS
@given(doc=st.one_of(json_values, mutated(VALID_INFER)))
def test_any_infer_request_is_accepted_or_a_4xx(doc):
    _parse(json.dumps(doc).encode())


@SETTINGS
@given(body=st.binary(max_size=64))
def test_any_infer_body_bytes_are_accepted_or_a_4xx(body):
    _parse(body)


@pytest.mark.parametrize("change", [
    lambda r: r["inputs"][0].update(shape=[True, 2, 2, 3]),
    lambda r: r["inputs"][0].update(data=[2 ** 70] * 12),
    lambda r: r["inputs"][0].update(data=[0.7] * 12),
    lambda r: r["outputs"][0].update(parameters=[1]),
    lambda r: r["outputs"][0].update(parameters={"top_k": True}),
], ids=["bool-shape", "2**70", "fraction", "parameters-list", "top_k-true"])
def test_the_reported_malformed_requests_are_400(change):
    from edge_runtime.serve.app import HTTPError, _parse_infer, _tensor

    req = copy.deepcopy(VALID_INFER)
    change(req)
    with pytest.raises(HTTPError) as e:
        inp, _, _ = _parse_infer(req, GEN)
        _tensor(inp, GEN)
    assert e.value.status == 400


def test_1e400_and_deep_nesting_are_400():
    from edge_runtime.serve.app import HTTPError, _json_request, _parse_infer, _tensor

    body = json.dumps(VALID_INFER).replace('"data": [0', '"data": [1e400').encode()
    with pytest.raises(HTTPError):
        inp, _, _ = _parse_infer(_json_request(body), GEN)
        _tensor(inp, GEN)
    with pytest.raises(HTTPError):
        _json_request(b"[" * 100_000 + b"]" * 100_000)


@SETTINGS
@given(report=st.one_of(json_values, mutated({"kind": "edgetl-device-benchmark/1", "rows": [
    {"sha256": "a" * 64, "threads": 2, "end_to_end_ms": {"median": 5.0}}]})))
def test_a_damaged_device_benchmark_never_stops_the_run_listing(tmp_path_factory, report):
    from trainer.runs.history import list_runs

    root = tmp_path_factory.mktemp("runs")
    run = root / "run"
    (run / "deploy").mkdir(parents=True)
    (run / "labels.txt").write_text("cat\ndog\n")
    _write(run / "config.json", VALID_CONFIG)
    _write(run / "metrics.json", VALID_METRICS)
    _write(run / "deploy" / "benchmark.json", report)
    assert [r.accuracy for r in list_runs([root])] == [0.9]
