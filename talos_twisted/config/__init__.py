"""The daemon's configuration: defaults < YAML file < ``TALOS_*`` environment < command line.

Pure (no Twisted, no reactor): everything here can be tested with plain function calls.
Every problem is reported as a :class:`ConfigError` whose text is one line naming the key
(or environment variable, or command-line option) and what is wrong with it, because the
message ends up in a single log line or a terminal when ``twistd`` refuses to start.

Split by job: ``units`` parses sizes, durations and booleans; ``convert`` checks one raw
value; ``schema`` defines every key once (type, default, converter, doc) and the config
objects; ``sources`` reads the file, the environment and overrides and combines them.
"""

from talos_twisted.names import ARCHES, COMPRESSIONS

from .convert import ConfigError
from .paths import default_cache_directory, expand_path
from .schema import (
    DEFAULT_LISTEN,
    PREFETCH_KEYS,
    TALOS_KEYS,
    TALOS_SCHEMA,
    TOP_LEVEL_KEYS,
    Config,
    Key,
    PrefetchImage,
    Profile,
    TalosConfig,
)
from .sources import ENV_PREFIX, env_name, load_config, option_name
from .units import parse_bool, parse_duration, parse_size

__all__ = [
    "ARCHES",
    "COMPRESSIONS",
    "DEFAULT_LISTEN",
    "ENV_PREFIX",
    "PREFETCH_KEYS",
    "TALOS_KEYS",
    "TALOS_SCHEMA",
    "TOP_LEVEL_KEYS",
    "Config",
    "ConfigError",
    "Key",
    "PrefetchImage",
    "Profile",
    "TalosConfig",
    "default_cache_directory",
    "env_name",
    "expand_path",
    "load_config",
    "option_name",
    "parse_bool",
    "parse_duration",
    "parse_size",
]
