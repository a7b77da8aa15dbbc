"""Packaging promises: the device install stays free of TensorFlow."""
import subprocess


def test_edge_extra_installs_no_tensorflow(edge_venv):
    out = subprocess.run([str(edge_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                         capture_output=True, text=True, check=True).stdout.lower()
    names = {line.split("==")[0] for line in out.splitlines()}
    assert "ai-edge-litert" in names and "numpy" in names and "pillow" in names
    assert not {n for n in names if n.startswith(("tensorflow", "keras", "tf-keras", "tf_keras"))}


def test_edge_install_provides_both_commands(edge_venv):
    for cmd in ("edgetl",):
        r = subprocess.run([str(edge_venv / "bin" / cmd), "--help"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
