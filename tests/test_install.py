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


def test_training_commands_on_the_edge_install_name_the_extra(edge_venv, synth_data, small_run, tmp_path):
    """A device install has no TensorFlow: the training side's commands say which extra to add,
    and write nothing (a demo or bench folder left behind would block the run after installing)."""
    for args in (["train", synth_data, "--out", synth_data.parent / "never"], ["convert", small_run, "--force"],
                 ["data", "inspect", synth_data], ["explain", small_run, "x.jpg"],
                 ["demo", "--out", tmp_path / "demo"],
                 ["bench", "--data", synth_data, "--backbones", "mobilenet_v2:0.35@96", "--out", tmp_path / "bench"]):
        r = subprocess.run([str(edge_venv / "bin" / "edgetl"), *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
        command = "edgetl data inspect" if args[0] == "data" else f"edgetl {args[0]}"   # the whole command named
        assert 'pip install "edgetl[train]"' in r.stderr and f"`{command}`" in r.stderr, r.stderr
    assert not (synth_data.parent / "never").exists() and not list(tmp_path.iterdir())
