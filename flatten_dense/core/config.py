"""YAML configs: `_base_` inheritance, command-line overrides, and one-line validation errors.

A run is described by one YAML file that may inherit from base files. Every problem a user can
make in a config (missing file, YAML typo, unknown key, wrong type) is raised as a `ConfigError`
whose message is a single line naming the file or the dotted key, so the CLI can print it
instead of a traceback from deep inside Lightning or a model builder.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flatten_dense.core.suggest import suggest as _suggest

__all__ = [
    "ConfigError",
    "OPEN_SECTIONS",
    "check_kwargs",
    "default_run_dir",
    "kwargs_problems",
    "load_config",
    "raise_problems",
    "resolve_run_dir",
    "to_container",
    "top_level_problems",
]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"

# Sections whose keys may be added from the command line without a `+` prefix: their contents
# are checked later against the callable that receives them (see `flatten_dense.core.validate`).
OPEN_SECTIONS: tuple[str, ...] = ("trainer",)


class ConfigError(Exception):
    """A user-facing config problem; the message is one line naming the file or dotted key."""


# --------------------------------------------------------------------------------------------
# loading


def load_config(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    open_sections: Iterable[str] = OPEN_SECTIONS,
) -> DictConfig:
    """Load `path` with its `_base_` files merged in, then apply `key=value` overrides.

    Bases merge in order and the including file last; a mapping with `_delete_: true` replaces
    the inherited mapping instead of merging into it. An override must name an existing key
    unless it starts with `+` or lies under one of `open_sections` (typo protection).
    """
    path = os.path.normpath(os.fspath(path))
    cfg = _load_with_bases(path, chain=())
    open_sections = tuple(open_sections)
    for item in overrides:
        cfg = _apply_override(cfg, item, source=path, open_sections=open_sections)
    _check_interpolations(cfg, source=path)
    return cfg


def _read_yaml(path: str, *, included_from: str | None) -> DictConfig:
    if not os.path.isfile(path):
        if included_from is not None:
            raise ConfigError(f"{included_from}: base config file not found: {path}")
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = OmegaConf.create(f.read())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got a list")
    return cfg


def _load_with_bases(path: str, *, chain: tuple[str, ...]) -> DictConfig:
    key = os.path.realpath(path)
    if key in (os.path.realpath(p) for p in chain):
        cycle = " -> ".join([*chain[[os.path.realpath(p) for p in chain].index(key) :], path])
        raise ConfigError(f"{path}: circular _base_ chain: {cycle}")
    cfg = _read_yaml(path, included_from=chain[-1] if chain else None)
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, ListConfig) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path or a list of paths")
    merged = OmegaConf.create({})
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        merged = _merge(merged, _load_with_bases(base_path, chain=(*chain, path)), source=path)
    return _merge(merged, cfg, source=path)


def _merge(base: DictConfig, child: DictConfig, *, source: str) -> DictConfig:
    """OmegaConf merge, honouring `_delete_: true` in the child (mmcv's convention)."""
    base_d = OmegaConf.to_container(base, resolve=False)
    child_d = OmegaConf.to_container(child, resolve=False)
    _drop_deleted(base_d, child_d)
    try:
        return OmegaConf.merge(OmegaConf.create(base_d), OmegaConf.create(child_d))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: cannot merge with its base: {_first_line(e)}") from None


def _drop_deleted(base: dict, child: dict) -> None:
    for key, value in child.items():
        if not isinstance(value, dict):
            continue
        if value.pop(DELETE_KEY, False):
            base.pop(key, None)
        elif isinstance(base.get(key), dict):
            _drop_deleted(base[key], value)


def _apply_override(cfg: DictConfig, item: str, *, source: str, open_sections: tuple[str, ...]) -> DictConfig:
    force_add = item.startswith("+")
    text = item[1:] if force_add else item
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected key=value")
    try:
        value = OmegaConf.from_dotlist([f"v={raw}"])["v"]
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"override '{item}': cannot parse value: {_first_line(e)}") from None
    if not force_add:
        _check_override_key(cfg, key, item=item, source=source, open_sections=open_sections)
    try:
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"override '{item}': {_first_line(e)}") from None
    return cfg


def _check_override_key(cfg: DictConfig, key: str, *, item: str, source: str, open_sections: tuple[str, ...]) -> None:
    if any(key == s or key.startswith(s + ".") for s in open_sections):
        return
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                continue
            hint = _suggest(part, [str(k) for k in node])
        elif isinstance(node, list) and part.isdigit():
            if int(part) < len(node):
                node = node[int(part)]
                continue
            hint = f" (the list has {len(node)} items)"
        else:
            prefix = ".".join(parts[:i])
            raise ConfigError(f"{source}: override '{item}': '{prefix}' is a value, not a section")
        raise ConfigError(f"{source}: unknown key '{key}' in override '{item}'{hint}; write '+{item}' to add a new key")


def _check_interpolations(cfg: DictConfig, *, source: str) -> None:
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{source}: bad interpolation at '{key}': {_first_line(e)}") from None


# --------------------------------------------------------------------------------------------
# validation


def top_level_problems(cfg: Mapping, *, allowed: Iterable[str]) -> list[str]:
    """Unknown top-level sections, the usual symptom of a misspelt section name."""
    allowed = list(allowed)
    return [
        f"unknown top-level section '{key}'{_suggest(str(key), allowed)}" for key in cfg.keys() if key not in allowed
    ]


def kwargs_problems(fn_or_class: Callable, kwargs: Mapping, *, where: str) -> list[str]:
    """Every problem of a config section against the signature of the callable that receives it.

    Unknown keys are reported with a close-match suggestion; values are checked against simple
    annotations (int/float/bool/str, containers, Optional, Literal, unions). Annotations naming
    other classes or callables are not judged, so a check never rejects a value the callable
    might accept.
    """
    if isinstance(kwargs, DictConfig):
        try:
            kwargs = OmegaConf.to_container(kwargs, resolve=True)
        except OmegaConfBaseException as e:
            return [f"{where}: {_first_line(e)}"]
    if not isinstance(kwargs, Mapping):
        return [f"'{where}' must be a mapping, got {type(kwargs).__name__} {kwargs!r}"]
    try:
        signature = inspect.signature(fn_or_class)
    except (TypeError, ValueError):
        return []
    params = {
        name: p for name, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    hints = _type_hints(fn_or_class)
    problems = []
    for key, value in kwargs.items():
        key = str(key)
        if key not in params:
            if not accepts_any:
                problems.append(f"unknown key '{where}.{key}'{_suggest(key, list(params))}")
            continue
        annotation = hints.get(key, params[key].annotation)
        if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
            continue
        if not _matches(value, annotation):
            problems.append(f"'{where}.{key}' must be {_describe(annotation)}, got {type(value).__name__} {value!r}")
    return problems


def raise_problems(problems: Sequence[str], *, source: str | os.PathLike | None = None) -> None:
    """One ConfigError line for all problems found (none: nothing happens)."""
    if not problems:
        return
    if len(problems) == 1:
        raise ConfigError(f"{_prefix(source)}{problems[0]}")
    raise ConfigError(f"{_prefix(source)}{len(problems)} problems: " + "; ".join(problems))


def check_kwargs(fn_or_class: Callable, kwargs: Mapping, *, where: str, source: str | None = None) -> None:
    """`kwargs_problems`, raised as one ConfigError line."""
    raise_problems(kwargs_problems(fn_or_class, kwargs, where=where), source=source)


def _type_hints(fn_or_class: Callable) -> dict[str, Any]:
    target = fn_or_class.__init__ if inspect.isclass(fn_or_class) else fn_or_class
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return {}


_SEQUENCE_ORIGINS = (
    list,
    tuple,
    set,
    frozenset,
    cabc.Sequence,
    cabc.MutableSequence,
    cabc.Iterable,
    cabc.Collection,
    cabc.Set,
    cabc.MutableSet,
)
_MAPPING_ORIGINS = (dict, cabc.Mapping, cabc.MutableMapping)


def _matches(value: Any, tp: Any) -> bool:
    """Whether a config value fits annotation `tp`; unknown kinds of annotation always fit."""
    if tp is Any or isinstance(tp, typing.TypeVar):
        return True
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (Path, os.PathLike) or origin is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    container = origin if origin is not None else tp
    if container in _SEQUENCE_ORIGINS:
        if not isinstance(value, (list, tuple, set, frozenset, ListConfig)):
            return False
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(map(_matches, value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if container in _MAPPING_ORIGINS:
        if not isinstance(value, (dict, DictConfig)):
            return False
        if len(args) != 2:
            return True
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return True


def _describe(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        # Literal members of a union read best as one list: "one of 16, '16-mixed' or None"
        is_literal = [typing.get_origin(a) is typing.Literal for a in args]
        literals = [v for a, lit in zip(args, is_literal) if lit for v in typing.get_args(a)]
        parts = [_describe(a) for a, lit in zip(args, is_literal) if not lit]
        if literals:
            parts.insert(0, "one of " + ", ".join(repr(v) for v in literals))
        return " or ".join(parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is None and isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("collections.abc.", "")


# --------------------------------------------------------------------------------------------
# conveniences


def to_container(cfg_section: Any) -> dict:
    """A plain, resolved dict of a config section (an empty dict for a missing section)."""
    if cfg_section is None:
        return {}
    if isinstance(cfg_section, DictConfig):
        try:
            return OmegaConf.to_container(cfg_section, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"'{getattr(e, 'full_key', '?')}': {_first_line(e)}") from None
    if isinstance(cfg_section, Mapping):
        return dict(cfg_section)
    raise ConfigError(f"expected a mapping, got {type(cfg_section).__name__} {cfg_section!r}")


def default_run_dir(config_path: str | os.PathLike) -> Path:
    """`runs/<config file stem>`: where a run writes when the config names no directory."""
    return Path("runs") / Path(config_path).stem


def resolve_run_dir(cfg: DictConfig, *, config_path: str | os.PathLike) -> Path:
    """Where a run writes: `trainer.default_root_dir`, `run_dir`, else the default."""
    trainer = cfg.get("trainer") or {}
    for candidate in (trainer.get("default_root_dir"), cfg.get("run_dir")):
        if candidate:
            return Path(str(candidate))
    return default_run_dir(config_path)


def _prefix(source: str | os.PathLike | None) -> str:
    return f"{os.fspath(source)}: " if source else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
