"""The README's first command: the whole pipeline offline, with no weight file passed."""
import re

from conftest import run_cli

# what TensorFlow, XLA, absl and LiteRT write on their own: never shown to a user by default
NATIVE_LOG = re.compile(r"^[IWEF]\d{4} |All log messages before absl|INFO: Created TensorFlow Lite|oneDNN|"
                        r"cuInit|cuda|rebuild TensorFlow|Warning|deprecated")
AS_A_USER = {"TF_CPP_MIN_LOG_LEVEL": ""}     # nothing set, as on a fresh shell


def test_demo_runs_end_to_end_offline_on_installed_weights_with_a_clean_stderr(tmp_path):
    r = run_cli("edgetl", "demo", "--out", tmp_path / "demo",
                env={"EDGETL_CACHE": str(tmp_path / "cache"), **AS_A_USER}, process=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "random init" not in r.stderr          # Lite0's ImageNet weights were found, no fallback
    run = tmp_path / "demo" / "run"
    for f in ("config.json", "metrics.json", "model.keras", "deploy/manifest.json", "deploy/model_int8.tflite"):
        assert (run / f).is_file(), f
    assert "edge-predict leopard_0000.jpg: leopard" in r.stdout
    noise = [l for l in r.stderr.splitlines() if NATIVE_LOG.search(l)]
    assert not noise, noise[:5]
    photo = next((tmp_path / "demo" / "data" / "leopard").iterdir())
    p = run_cli("edge-predict", run / "deploy", photo, env=AS_A_USER, process=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
    v = run_cli("edgetl", "--verbose", "convert", run, "--fp32", "--out", tmp_path / "verbose", env=AS_A_USER,
                process=True)
    assert v.returncode == 0 and any(NATIVE_LOG.search(l) for l in v.stderr.splitlines()), v.stderr[-2000:]
