"""Property-based fault suite: whatever JSON a manifest, a run file or an Open Inference Protocol
request holds, the parser that owns it answers with a UserError naming the file (or an HTTP 4xx
with a message), never another exception. Hypothesis draws the shapes and values; each property
also runs on mutations of a valid document, where the bugs hide."""
import copy
import json
import struct

import numpy as np
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

VALID_INFER = {"id": "1", "inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8",
                                      "data": list(range(12))}],
               "outputs": [{"name": "labels", "parameters": {"top_k": 2}}, {"name": "scores"}]}


def _parse(body: bytes, header_length: str | None = None):
    """The server's own request path up to inference: parse, check, build the tensor/bytes; a
    refusal must be a 4xx (an HTTPError), never anything that would become a 500."""
    from edge_runtime.serve.http import HTTPError
    from edge_runtime.serve.oip_codec import ModelInput, parse_request

    try:
        req = parse_request(body, header_length, ModelInput(size=2))
    except HTTPError as e:
        assert 400 <= e.status < 500
        return None
    assert req.batch >= 1 and all(type(o.top_k) is int and o.top_k >= 1 for o in req.outputs)
    assert req.pixels is None or (req.pixels.dtype == np.uint8 and req.pixels.shape[1:] == (2, 2, 3))
    return req


@SETTINGS
@given(doc=st.one_of(json_values, mutated(VALID_INFER)))
def test_any_infer_request_is_accepted_or_a_4xx(doc):
    _parse(json.dumps(doc).encode())


@SETTINGS
@given(body=st.binary(max_size=64))
def test_any_infer_body_bytes_are_accepted_or_a_4xx(body):
    _parse(body)


def _binary_request(shape, datatype, size, payload: bytes, header_shift: int = 0) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + payload, str(len(header) + header_shift)


@SETTINGS
@given(shape=st.one_of(st.sampled_from([[1, 2, 2, 3], [2, 2, 2, 3], [1]]), st.lists(st.integers(-2, 70), max_size=5)),
       datatype=st.sampled_from(["UINT8", "FP32", "BYTES", "INT8"]),
       size=st.one_of(st.sampled_from([4, 8, 12, 24, 48]), st.integers(-3, 200)), payload=st.binary(max_size=160),
       header_shift=st.one_of(st.just(0), st.integers(-30, 300)))
def test_any_binary_infer_request_is_accepted_or_a_4xx(shape, datatype, size, payload, header_shift):
    _parse(*_binary_request(shape, datatype, size, payload, header_shift))


@SETTINGS
@given(header_length=st.one_of(st.text(max_size=8), st.integers(-5, 400).map(str)), body=st.binary(max_size=120))
def test_any_header_length_is_accepted_or_a_4xx(header_length, body):
    _parse(body, header_length)


def test_a_well_formed_binary_request_gives_its_pixels():
    pixels = bytes(range(12))
    req = _parse(*_binary_request([1, 2, 2, 3], "UINT8", 12, pixels))
    assert req.pixels.tobytes() == pixels and req.outputs[0].binary


@pytest.mark.parametrize("case", ["header_past_body", "size_past_data", "size_not_shape", "bytes_left_over",
                                  "bytes_element_past_data"])
def test_the_malformed_binary_requests_of_the_protocol_are_400(case):
    from edge_runtime.serve.http import HTTPError
    from edge_runtime.serve.oip_codec import ModelInput, parse_request

    body, header = {
        "header_past_body": lambda: (_binary_request([1, 2, 2, 3], "UINT8", 12, bytes(12))[0], "10000"),
        "size_past_data": lambda: _binary_request([1, 2, 2, 3], "UINT8", 12, bytes(5)),
        "size_not_shape": lambda: _binary_request([1, 2, 2, 3], "UINT8", 8, bytes(8)),
        "bytes_left_over": lambda: _binary_request([1, 2, 2, 3], "UINT8", 12, bytes(20)),
        "bytes_element_past_data": lambda: _binary_request([1], "BYTES", 8, struct.pack("<I", 99) + b"abcd"),
    }[case]()
    with pytest.raises(HTTPError) as e:
        parse_request(body, header, ModelInput(size=2))
    assert e.value.status == 400


@pytest.mark.parametrize("change", [
    lambda r: r["inputs"][0].update(shape=[True, 2, 2, 3]),
    lambda r: r["inputs"][0].update(data=[2 ** 70] * 12),
    lambda r: r["inputs"][0].update(data=[0.7] * 12),
    lambda r: r["outputs"][0].update(parameters=[1]),
    lambda r: r["outputs"][0].update(parameters={"top_k": True}),
], ids=["bool-shape", "2**70", "fraction", "parameters-list", "top_k-true"])
def test_the_reported_malformed_requests_are_400(change):
    from edge_runtime.serve.http import HTTPError
    from edge_runtime.serve.oip_codec import ModelInput, parse_request

    req = copy.deepcopy(VALID_INFER)
    change(req)
    with pytest.raises(HTTPError) as e:
        parse_request(json.dumps(req).encode(), None, ModelInput(size=2))
    assert e.value.status == 400


def test_1e400_and_deep_nesting_are_400():
    from edge_runtime.serve.http import HTTPError
    from edge_runtime.serve.oip_codec import ModelInput, parse_request

    body = json.dumps(VALID_INFER).replace('"data": [0', '"data": [1e400').encode()
    with pytest.raises(HTTPError):
        parse_request(body, None, ModelInput(size=2))
    with pytest.raises(HTTPError):
        parse_request(b"[" * 100_000 + b"]" * 100_000, None, ModelInput(size=2))


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


@SETTINGS
@given(header=st.one_of(json_values, st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
       tail=st.binary(max_size=32), length_shift=st.integers(-4, 4))
def test_any_safetensors_file_is_read_or_refused_with_a_user_error(tmp_path_factory, header, tail, length_shift):
    from trainer.backbones.safetensors import read_safetensors

    head = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    path.write_bytes(struct.pack("<Q", max(0, len(head) + length_shift)) + head + tail)
    try:
        read_safetensors(path)
    except UserError:
        pass
