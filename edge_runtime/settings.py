"""Typed settings: one dataclass per stage (TrainConfig, ConvertConfig, ServeConfig), each field
carrying its command-line help, choices and allowed range. The CLIs derive their options from the
fields (``options_from``), so a default or a description lives in one place; a value out of range
is one UserError naming the option, raised when the config is made, before anything is written.
Here, on the device floor, because edge-serve derives its options the same way."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import click

from .errors import UserError


def opt(default, help: str, choices: tuple | None = None, flag: str | None = None, range: Range | None = None,
        click: dict | None = None):
    """A config field with its CLI help; ``flag`` names the switch of a boolean (e.g. --no-refit,
    or --pin/--no-pin); ``range``: the values that make sense (checked when the config is made,
    shown in --help); ``click``: further click.option settings (an envvar, a parsing callback)."""
    meta = {"help": help + (f" [{range.text()}]" if range else "")}
    if click:
        meta["click"] = dict(click)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if flag is not None:
        meta["flag"] = flag
    if range is not None:
        meta["range"] = range
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low``/``high`` bounds, open (excluded) or closed. NaN and
    infinities are never allowed: they train nothing and write NaN into every result."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.low_open else '<='} "
        return f"{lo}x {'<' if self.high_open else '<='} {self.high:g}"

    def holds(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))


def check_ranges(config) -> None:
    """One UserError naming the first option of ``config`` outside its range (fields with a
    ``range`` in their metadata; a tuple is checked element by element)."""
    for f in fields(config):
        rng = f.metadata.get("range")
        value = getattr(config, f.name)
        if rng is None or value is None:
            continue
        for x in (value if isinstance(value, (tuple, list)) else (value,)):
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not rng.holds(float(x)):
                shown = ",".join(map(_shown, value)) if isinstance(value, (tuple, list)) else _shown(value)
                raise UserError(f"--{f.name.replace('_', '-')} {shown}: must be {rng.text()}")


def _shown(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)


def comma_floats(n: int):
    """A click callback: ``a,b,c`` -> a tuple of ``n`` floats, or a usage error."""
    def parse(ctx, param, value):
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(float(x) for x in str(value).split(","))
        except ValueError:
            parts = ()
        if len(parts) != n:
            raise click.BadParameter(f"expected {n} comma-separated numbers like 0.8,0.1,0.1, got {value!r}")
        return parts
    return parse


def options_from(cls):
    """Click options for every field of the dataclass ``cls`` (except those marked ``cli: False``):
    name, default, type, choices and help come from the field, so they cannot drift from the
    Python API. Booleans become their ``flag`` switch; tuples of floats take ``a,b,c``."""
    def decorate(fn):
        for f in reversed(fields(cls)):
            meta = f.metadata
            if meta.get("cli", True) is False:
                continue
            name = "--" + f.name.replace("_", "-")
            kw = {"help": meta.get("help", ""), "show_default": f.default is not None}
            if isinstance(f.default, bool):
                flag = meta.get("flag", name)
                switch = {"show_default": True} if "/" in flag else {"flag_value": not f.default}
                fn = click.option(flag, f.name, default=f.default, help=kw["help"], **switch)(fn)
                continue
            if isinstance(f.default, tuple):
                kw.update(default=",".join(f"{v:g}" for v in f.default), callback=comma_floats(len(f.default)))
            elif "choices" in meta:
                kw.update(type=click.Choice(list(meta["choices"])), default=f.default)
            elif f.default is None:
                kw.update(type={"int | None": int, "float | None": float}.get(str(f.type), str), default=None)
            else:
                kw.update(type=type(f.default), default=f.default)
            kw.update(meta.get("click", {}))
            fn = click.option(name, f.name, **kw)(fn)
        return fn
    return decorate
