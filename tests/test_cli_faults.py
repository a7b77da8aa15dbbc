"""Every `edgetl` command, taken from click's own command tree (a new command fails this test until
it is given its cases), against a damaged run, a read-only folder and a full disk: each ends with
one `error:` line and exit 2 (or, where the fault does not concern it, succeeds), never a
traceback, and leaves no half-written file behind.

The read-only folder and the full disk are real file systems (a read-only bind mount and a tiny
tmpfs) where the machine allows mounting; elsewhere the same errors (EROFS, ENOSPC) are raised by
Python's file functions for paths under the folder, which is how a program meets them.
"""
import builtins
import contextlib
import errno
import json
import os
import shutil
import subprocess
import traceback
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLES, WEIGHTS

W035 = WEIGHTS / "mobilenet_v2_0.35_224_imagenet_no_top.h5"
PHOTO = SAMPLES / "daisy.jpg"


def command_paths(group: click.Group, prefix=()) -> list[tuple[str, ...]]:
    """Every runnable command: leaves, and groups that run without a subcommand (`edgetl bench`)."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                out.append((*prefix, name))
            out += command_paths(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def _mount(args: list[str]) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def injected(root: Path, code: int):
    """Python's file functions raise ``code`` for writes under ``root`` (no mount possible here)."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_replace, real_rename = os.replace, os.rename
    root = str(root)

    def under(p) -> bool:
        try:
            return os.path.abspath(os.fsdecode(p)).startswith(root)
        except TypeError:
            return False

    def fail(p):
        raise OSError(code, os.strerror(code), os.fsdecode(p))

    def open_(file, mode="r", *a, **kw):
        if under(file) and any(c in mode for c in "wax+"):
            fail(file)
        return real_open(file, mode, *a, **kw)

    def os_open(path, flags, *a, **kw):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            fail(path)
        return real_os_open(path, flags, *a, **kw)

    def guard(real):
        def call(src, *a, **kw):
            if under(src) or (a and under(a[0])):
                fail(src)
            return real(src, *a, **kw)
        return call
    patches = {(builtins, "open"): open_, (os, "open"): os_open, (os, "mkdir"): guard(real_mkdir),
               (os, "replace"): guard(real_replace), (os, "rename"): guard(real_rename)}
    for (mod, name), fn in patches.items():
        setattr(mod, name, fn)
    try:
        yield
    finally:
        builtins.open, os.open, os.mkdir, os.replace, os.rename = (real_open, real_os_open, real_mkdir,
                                                                   real_replace, real_rename)


@pytest.fixture(scope="module")
def places(small_run, synth_data, tmp_path_factory):
    """Three places holding a copy of the small run: damaged, read-only and full."""
    base = tmp_path_factory.mktemp("faults")
    damaged = shutil.copytree(small_run, base / "damaged" / "run", ignore=shutil.ignore_patterns("cache", "deploy"))
    (damaged / "config.json").write_text("[]")
    ro_src, ro = base / "ro_src", base / "ro"
    shutil.copytree(small_run, ro_src / "run", ignore=shutil.ignore_patterns("cache", "deploy"))
    shutil.copytree(small_run, ro_src / "run2", ignore=shutil.ignore_patterns("cache", "deploy"))
    ro.mkdir()
    ro_mounted = _mount(["--bind", str(ro_src), str(ro)]) and _mount(["-o", "remount,ro,bind", str(ro)])
    if not ro_mounted:
        shutil.rmtree(ro)
        shutil.copytree(ro_src, ro)
    full = base / "full"
    full.mkdir()
    need = sum(f.stat().st_size for f in (ro_src / "run").rglob("*") if f.is_file())
    full_mounted = _mount(["-t", "tmpfs", "-o", f"size={need + 256 * 1024}", "tmpfs", str(full)])
    shutil.copytree(ro_src / "run", full / "run")
    if full_mounted:   # fill what is left
        with contextlib.suppress(OSError), open(full / ".filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    bad_report = base / "report.json"
    bad_report.write_text(json.dumps({"kind": "edgetl-device-benchmark/1", "rows": [{"threads": "x"}],
                                      "machine": {}, "date": "", "method": ""}))
    yield {"damaged": damaged, "ro": ro, "ro_mounted": ro_mounted, "full": full, "full_mounted": full_mounted,
           "data": synth_data, "report": bad_report, "base": base}
    for folder, mounted in ((ro, ro_mounted), (full, full_mounted)):
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True, timeout=20)


def cases(p) -> dict[tuple[str, ...], dict[str, list | None]]:
    """Per command, per fault: its arguments, or a tuple of argument lists (none: the fault cannot
    concern it, with why beside it)."""
    d, ro, full, data = p["damaged"], p["ro"], p["full"], p["data"]
    small = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--size", "96", "--weights", str(W035)]

    def run_cases(*rest):
        return {"damaged": [d, *rest], "readonly": [ro / "run", *rest], "full": [full / "run", *rest]}
    return {
        ("activations",): run_cases(PHOTO),
        ("attack",): run_cases(PHOTO),
        ("backbones",): {},                     # reads no run and writes nothing
        ("bench",): {"damaged": ["--reuse", d, "--backbones", "mobilenet_v2:0.35@96", "--data", data,
                                 "--out", p["base"] / "bench-damaged"],
                     "readonly": ["--backbones", "mobilenet_v2:0.35@96", "--weights", W035, "--data", data,
                                  "--out", ro / "bench"],
                     "full": ["--backbones", "mobilenet_v2:0.35@96", "--weights", W035, "--data", data,
                              "--out", full / "bench"]},
        ("bench", "merge"): {"damaged": [p["report"], p["report"]],
                             "readonly": [p["report"], p["report"], "--out", ro / "m"]},
        ("convert",): run_cases(),
        ("data", "inspect"): {},               # reads only; its bad-input cases are in test_dataset
        ("data", "split"): {"readonly": [data, "--out", ro / "lists"], "full": [data, "--out", full / "lists"]},
        ("data", "synth"): {"readonly": [ro / "synth"], "full": [full / "synth", "--per-class", "200"]},
        ("demo",): {"readonly": ["--out", ro / "demo"], "full": ["--out", full / "demo"]},
        ("dream",): run_cases("dotted", "--steps", "2"),
        ("eval",): {**run_cases(), "readonly": ([ro / "run"], [ro / "run", "--data", data])},
        ("explain",): run_cases(PHOTO),
        ("filters",): run_cases("--steps", "2"),
        ("imagenet",): {},                     # reads photos and prints; writes nothing
        ("runs", "compare"): {"damaged": [d, ro / "run"], "readonly": [ro / "run", ro / "run2", "--out", ro / "c"],
                              "full": [full / "run", full / "run", "--out", full / "c"]},
        ("runs", "list"): {"damaged": [d.parent]},   # listed as damaged, exit 0 (see below)
        ("train",): {"damaged": ["--resume", d], "readonly": [data, "--out", ro / "new", *small],
                     "full": [data, "--out", full / "new", *small]},
    }


def test_every_command_in_the_tree_has_fault_cases(places):
    from edgetl.cli import cli

    assert set(command_paths(cli)) == set(cases(places)), "give a new command its cases in cases()"


def _leftovers(folder: Path) -> list[str]:
    """Half-written files or stages a failed write left behind."""
    return [str(f) for f in folder.rglob("*") if f.name.startswith(".tmp-") or ".staging-" in f.name]


@pytest.mark.parametrize("fault", ["damaged", "readonly", "full"])
def test_every_command_meets_each_fault_with_one_line(places, fault):
    from edgetl.cli import cli

    ran = 0
    runs = [(path, args) for path, per_fault in sorted(cases(places).items())
            for args in (per_fault[fault] if isinstance(per_fault.get(fault), tuple) else [per_fault.get(fault)])
            if args is not None]
    for path, args in runs:
        root = {"readonly": places["ro"], "full": places["full"]}.get(fault)
        mounted = {"readonly": places["ro_mounted"], "full": places["full_mounted"]}.get(fault, True)
        code = errno.EROFS if fault == "readonly" else errno.ENOSPC
        with (injected(root, code) if not mounted else contextlib.nullcontext()):
            r = CliRunner().invoke(cli, [*path, *map(str, args)], catch_exceptions=True)
        where = f"edgetl {' '.join(path)} ({fault}): "
        assert r.exception is None or isinstance(r.exception, SystemExit), \
            where + "".join(traceback.format_exception(r.exception))[-3000:]
        lines = [line for line in r.output.splitlines() if line.strip()]
        if path == ("runs", "list"):
            assert r.exit_code == 0 and "damaged" in r.output, where + r.output
        else:
            assert r.exit_code == 2, where + r.output[-2000:]
            assert lines and lines[-1].startswith("error: ") and "Traceback" not in r.output, where + r.output[-2000:]
        if root is not None:
            assert not _leftovers(root), where + str(_leftovers(root))
        ran += 1
    assert ran >= 8
