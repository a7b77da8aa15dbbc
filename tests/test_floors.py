"""The floors of the house, as code: edgetl (CLI) > benchmarks > converter > trainer > edge_runtime.
A room imports only from its own floor and the ones below; edge_runtime, what a device installs,
imports only the standard library, numpy, Pillow, a TFLite interpreter and its extras' packages
(never TensorFlow). Every import counts, also the ones inside functions. Studies (studies/) may
import the product's public names only."""
import ast
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import ROOT

FLOORS = ["edge_runtime", "trainer", "converter", "benchmarks", "edgetl"]   # bottom to top
DEVICE_PACKAGES = {"numpy", "PIL", "ai_edge_litert", "tflite_runtime", "click",
                   "cv2", "picamera2",                                         # [camera]
                   "fastapi", "starlette", "uvicorn", "prometheus_client",    # [serve]
                   "grpc", "google"}                                          # [serve-grpc]: grpcio, protobuf


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", FLOORS)
def test_a_room_imports_nothing_from_a_floor_above_it(package):
    above = set(FLOORS[FLOORS.index(package) + 1:]) | {"studies", "tests"}
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in files(package) for line, mod in imports(f)
           if mod.split(".")[0] in above]
    assert not bad, "\n".join(bad)


def test_the_device_package_imports_only_what_a_device_installs():
    allowed = set(sys.stdlib_module_names) | DEVICE_PACKAGES | {"edge_runtime"}
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in files("edge_runtime") for line, mod in imports(f)
           if mod.split(".")[0] not in allowed]
    assert not bad, "\n".join(bad)


def test_studies_use_only_public_names_of_the_product():
    product = set(FLOORS)
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in sorted((ROOT / "studies").rglob("*.py"))
           for line, mod in imports(f)
           if mod.split(".")[0] in product and any(part.startswith("_") for part in mod.split(".")[1:])]
    assert not bad, "\n".join(bad)


def test_the_wheel_packages_no_studies():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith("studies") for p in include) and "benchmarks*" in include
    assert not (ROOT / "studies" / "__init__.py").exists() or "studies*" not in include


def test_no_function_takes_more_than_seven_positional_parameters():
    """Past seven, a call site cannot be read without the signature beside it: the rest are
    keyword-only (click command callbacks excepted: click passes their options by name)."""
    bad = []
    for package in FLOORS:
        for f in files(package):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                decorators = " ".join(ast.unparse(d) for d in node.decorator_list)
                if any(k in decorators for k in ("command", "option", "argument", "friendly", "pass_context")):
                    continue
                if len(node.args.posonlyargs) + len(node.args.args) > 7:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not bad, "\n".join(bad)


def _commands():
    from converter.config import ConvertConfig
    from edge_runtime.serve.cli import serve
    from edge_runtime.serve.config import ServeConfig
    from edgetl.cli import cli
    from trainer.config import TrainConfig

    return [(cli.commands["train"], TrainConfig), (cli.commands["convert"], ConvertConfig), (serve, ServeConfig)]


@pytest.mark.parametrize("index", range(3), ids=["train", "convert", "edge-serve"])
def test_every_option_default_comes_from_its_config(index):
    """Each option named like a config field shows that field's default in --help, and every
    field meant for the command line has its option: a default lives in one place only."""
    import dataclasses

    command, config = _commands()[index]
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    for f in dataclasses.fields(config):
        if f.metadata.get("cli", True) is False:   # arguments, or options shared by several commands
            continue
        assert f.name in options, f"{command.name}: no option for {config.__name__}.{f.name}"
        shown = options[f.name].default
        want = ",".join(f"{v:g}" for v in f.default) if isinstance(f.default, tuple) else f.default
        assert shown == want, f"--{f.name}: option default {shown!r}, {config.__name__} default {want!r}"


def test_data_split_shares_the_training_split_defaults():
    from edgetl.cli import cli
    from trainer.config import TrainConfig

    split = {p.name: p.default for p in cli.commands["data"].commands["split"].params}
    assert split["fractions"] == ",".join(f"{v:g}" for v in TrainConfig.fractions) and split["seed"] == TrainConfig.seed


def test_rooms_stay_small():
    """A module over 500 lines or a function over 80 is two ideas in one place (tests excepted)."""
    long_modules, long_functions = [], []
    for package in FLOORS:
        for f in files(package):
            text = f.read_text(encoding="utf-8")
            if len(text.splitlines()) > 500:
                long_modules.append(str(f.relative_to(ROOT)))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    long_functions.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long_modules and not long_functions, long_modules + long_functions
