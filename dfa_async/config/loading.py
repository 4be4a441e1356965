"""Settings from TOML files and ``--set section.key=value`` overrides, checked against the schema; and
back to TOML (`to_toml`) and to text (`describe`)."""
from __future__ import annotations

import dataclasses
import sys
import tomllib
import typing
from pathlib import Path

import tomli_w

from .schema import SECTIONS, Config, ConfigError, check_value, section_class, validate


# Settings renamed since an earlier version: old name -> new name (CHANGELOG.md). The old name is still
# read, with a warning, so that old config files and the settings saved in old runs load.
# old name: (new name, the old value as the new setting reads it)
RENAMED = {"runtime.stages": ("runtime.blocks_per_stage", lambda v: v),
           # hidden blocks counted from 1 (0 was off); now from 0 as in every record (-1 is off)
           "bottleneck.layer": ("bottleneck.block", lambda v: v - 1 if type(v) is int else v)}


def upgrade(raw: dict, quiet: bool = False) -> dict:
    """`raw` with renamed settings under their new names (a warning for each, unless `quiet`)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, (new, convert) in RENAMED.items():
        (section, key), (_, key_new) = old.split("."), new.split(".")
        values = out.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        if key_new in values:
            raise ConfigError(f"{old}: is the old name of {new}, which is also given; keep only {new}")
        value = values[key_new] = convert(values.pop(key))
        if not quiet:
            print(f"dfa-async: warning: {old} is now called {new}; please rename it"
                  + (f" (read as {new} = {value!r})" if value != raw[section][key] else ""), file=sys.stderr, flush=True)
    return out


def from_dict(raw: dict) -> Config:
    """Build a validated Config from nested dicts (as TOML gives); unknown keys are errors."""
    cfg = Config()
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a table of sections")
    raw = upgrade(raw)
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a table of settings, got {values!r}")
        cls = section_class(section)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        target = getattr(cfg, section)
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{section}.{key}: unknown setting; {section} has {', '.join(fields)}")
            setattr(target, key, check_value(f"{section}.{key}", fields[key], hints[key], value))
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, str, object]:
    """Parse `section.key=value`; the value is TOML (numbers, true/false, [lists], "strings") or a bare word."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text}: expected section.key=value, e.g. --set optim.lr=0.01")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a TOML file (or the built-in default when None) and apply `--set` overrides, then validate."""
    raw: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path}: is a directory; give a TOML file such as "
                              "examples/configs/mnist_mlp.toml") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path}: not valid TOML ({str(err).splitlines()[0][:120]})") from None
        except OSError as err:
            raise ConfigError(f"config file {path}: cannot be read ({err.strerror})") from None
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table of settings")
        raw[section][key] = value
    return from_dict(raw)


def _shown(value) -> str:
    """A value as TOML on one line (tomli-w spreads arrays over lines)."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def to_toml(cfg: Config) -> str:
    """Write the settings as TOML (the format they load from), so each run keeps its exact settings; any
    string (a run name with a newline or a quote) round-trips."""
    return tomli_w.dumps(cfg.to_dict())


def describe() -> str:
    """Every setting with its default and docstring (for `dfa-async settings`)."""
    out = []
    for section in SECTIONS:
        cls = section_class(section)
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            meta = f.metadata
            allowed = [" | ".join(meta["choices"])] if meta["choices"] else []
            if meta["lo"] is not None or meta["hi"] is not None:
                lo = "" if meta["lo"] is None else f"{meta['lo']} {'<' if meta['lo_open'] else '<='} "
                hi = "" if meta["hi"] is None else f" {'<' if meta['hi_open'] else '<='} {meta['hi']}"
                allowed.append(f"{lo}value{hi}")
            shown = f" ({'; '.join(allowed)})" if allowed else ""
            out.append(f"{section}.{f.name} = {_shown(default)}{shown}\n    {meta['doc']}")
    return "\n".join(out)
