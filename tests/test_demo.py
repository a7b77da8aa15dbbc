"""The README's first command: the whole pipeline offline, with no weight file passed."""
from conftest import run_cli


def test_demo_runs_end_to_end_offline_on_installed_weights(tmp_path):
    r = run_cli("edgetl", "demo", "--out", tmp_path / "demo", env={"EDGETL_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "random init" not in r.stderr          # Lite0's ImageNet weights were found, no fallback
    run = tmp_path / "demo" / "run"
    for f in ("config.json", "metrics.json", "model.keras", "deploy/manifest.json", "deploy/model_int8.tflite"):
        assert (run / f).is_file(), f
    assert "edge-predict leopard_0000.jpg: leopard" in r.stdout
