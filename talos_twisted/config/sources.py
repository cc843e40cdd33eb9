"""Where settings come from and how they combine: defaults < YAML file < ``TALOS_*`` < command line."""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterator, Mapping

import yaml
from yaml.constructor import ConstructorError

from .convert import ConfigError, check_keys, fail, kind
from .paths import default_cache_directory, expand_path
from .schema import CONVERTERS, DEFAULT_LISTEN, TALOS_KEYS, TALOS_SCHEMA, TOP_LEVEL_KEYS, Config, TalosConfig

ENV_PREFIX = "TALOS_"

Setting = tuple[str, Any, str]  # (key, raw value, label naming its source)


# --------------------------------------------------------------------------- the YAML file


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: the later one would silently win, hiding a mistake."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if duplicate:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _file_settings(path: str) -> Iterator[Setting]:
    document = _read_yaml(path)
    if document is None:  # an empty file, or only comments: all defaults
        return
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping with 'listen' and 'talos' keys, not {kind(document)}")
    check_keys(document, TOP_LEVEL_KEYS, "")
    if "listen" in document:
        yield "listen", document["listen"], "listen"
    talos = document.get("talos")
    if talos is None:  # `talos:` with every key commented out
        return
    if not isinstance(talos, Mapping):
        fail("talos", f"expected a mapping of settings, not {kind(talos)}")
    check_keys(talos, TALOS_KEYS, "talos.")
    for key, value in talos.items():
        yield key, value, f"talos.{key}"


# --------------------------------------------------------------------------- environment, command line


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _env_settings(environ: Mapping[str, str]) -> Iterator[Setting]:
    # Only our own names are read: other tools (talosctl...) set TALOS_* variables too.
    for key in TALOS_SCHEMA:
        name = env_name(key.name)
        if key.env and name in environ:
            yield key.name, environ[name], name


# the command line's short spelling of a key, where it differs from the key
_OPTION_NAMES = {"cache_directory": "--cache-dir"}


def option_name(key: str) -> str:
    return _OPTION_NAMES.get(key, "--" + key.replace("_", "-"))


def _override_settings(overrides: Mapping[str, object]) -> Iterator[Setting]:
    for key, value in overrides.items():
        if value is None:  # an option not given on the command line
            continue
        if key not in CONVERTERS:
            close = difflib.get_close_matches(str(key), list(CONVERTERS), n=1)
            hint = f" (did you mean {option_name(close[0])}?)" if close else ""
            fail(option_name(str(key)), f"unknown option{hint}")
        yield key, value, option_name(key)


# --------------------------------------------------------------------------- combining


def _check_prefetch_platforms(talos: TalosConfig, prefetch_label: str) -> None:
    """A prefetched image must be one the daemon would serve, or it only wastes disk."""
    for i, image in enumerate(talos.prefetch):
        if image.platform not in talos.platforms:
            fail(
                f"{prefetch_label}[{i}].platform",
                f"{image.platform!r} is not one of the served platforms ({', '.join(talos.platforms)})",
            )


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """defaults < YAML file < environment ``TALOS_<KEY>`` < overrides (command line).

    ``overrides`` keys are ``"listen"`` or any TalosConfig field name; values are strings
    (as typed on a command line) or already-typed values; ``None`` values are ignored.
    Raises ConfigError (one line) for any problem.
    """
    env = os.environ if environ is None else environ
    sources: list[Iterator[Setting]] = []
    if path is not None:
        sources.append(_file_settings(os.fspath(path)))
    sources.append(_env_settings(env))
    if overrides:
        sources.append(_override_settings(overrides))

    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for source in sources:
        for key, raw, label in source:
            # Every source's value is validated, even one a later source replaces: a broken
            # file should not start working by accident because an override happens to be set.
            values[key] = CONVERTERS[key](raw, label)
            labels[key] = label

    listen = values.pop("listen", DEFAULT_LISTEN)
    if "cache_directory" in values:
        values["cache_directory"] = expand_path(values["cache_directory"], env)
    else:
        values["cache_directory"] = default_cache_directory(env)
    talos = TalosConfig(**values)
    _check_prefetch_platforms(talos, labels.get("prefetch", "talos.prefetch"))
    return Config(listen=listen, talos=talos)
