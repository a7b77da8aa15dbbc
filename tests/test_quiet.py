"""Native logs held back during a quiet block never break Python logging afterwards."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT

PROGRAM = textwrap.dedent("""
    import logging, os
    from edge_runtime import quiet
    quiet.enable()
    with quiet.native_stderr():
        os.write(2, b"native noise\\n")                 # held back
        handler = logging.StreamHandler()               # made here, as TensorFlow's logger makes its own
    log = logging.getLogger("late")
    log.addHandler(handler)
    log.warning("a warning after the block")
    with quiet.native_stderr():                         # a second block reuses the same stream
        log.warning("a warning inside a later block")
""")


def test_a_handler_made_inside_a_quiet_block_still_writes_after_it():
    p = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0
    assert "native noise" not in p.stderr
    assert "a warning after the block" in p.stderr and "a warning inside a later block" in p.stderr
    assert "Logging error" not in p.stderr


LOGGER_PROGRAM = textwrap.dedent("""
    import logging, sys
    from edge_runtime import quiet
    quiet.enable()
    if sys.argv[1] == "verbose":
        quiet.show_all()
    tf_log = logging.getLogger("tensorflow")           # the logger TensorFlow's Python side writes to
    tf_log.addHandler(logging.StreamHandler())
    tf_log.warning("5 out of the last 10 calls triggered tf.function retracing")
    tf_log.error("an error TensorFlow reports")
""")


def _logger_run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOGGER_PROGRAM, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})


def test_tensorflow_python_warnings_are_held_back_but_its_errors_are_shown():
    p = _logger_run("quiet")
    assert "retracing" not in p.stderr and "an error TensorFlow reports" in p.stderr


def test_verbose_shows_tensorflow_python_warnings_again():
    assert "retracing" in _logger_run("verbose").stderr
