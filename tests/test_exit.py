"""A command ends without TensorFlow's interpreter teardown, and loses nothing by it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

# A program that leaves everything a normal exit takes care of: buffered output, an atexit
# handler, a temporary folder cleaned up by its finalizer, a non-daemon thread still writing,
# and an object whose __del__ runs only in the interpreter's teardown.
PROGRAM = textwrap.dedent("""
    import atexit, sys, tempfile, threading, time, types
    from pathlib import Path
    out = Path(sys.argv[1])
    if sys.argv[2] == "heavy":
        sys.modules["tensorflow"] = types.ModuleType("tensorflow")   # as if the command had loaded it
    from edge_runtime.exit import exit_now

    class Teardown:
        def __del__(self):
            sys.stderr.write("teardown ran\\n")
    KEEP = Teardown()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    tmp = tempfile.TemporaryDirectory()
    (out / "tmpdir").write_text(tmp.name)
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
    sys.stdout.write("result line without a newline")
    exit_now(sys.argv[3] if sys.argv[3] == "message" else int(sys.argv[3]))
""")


def _run(tmp_path, mode: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), mode, code], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("code", ["0", "3"])
def test_with_tensorflow_loaded_the_exit_skips_teardown_but_keeps_status_output_handlers_and_threads(tmp_path, code):
    p = _run(tmp_path, "heavy", code)
    assert p.returncode == int(code)
    assert p.stdout == "result line without a newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert not Path((tmp_path / "tmpdir").read_text()).exists()   # finalizers ran
    assert "teardown ran" not in p.stderr                         # the interpreter's teardown did not


def test_a_message_exit_prints_it_and_exits_1(tmp_path):
    p = _run(tmp_path, "heavy", "message")
    assert p.returncode == 1 and p.stderr.strip() == "message"


def test_without_tensorflow_the_plain_interpreter_exit_is_kept(tmp_path):
    p = _run(tmp_path, "light", "3")
    assert p.returncode == 3
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    assert "teardown ran" in p.stderr
