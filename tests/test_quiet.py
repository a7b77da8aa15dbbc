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
