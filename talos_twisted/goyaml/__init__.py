"""An emulation of go-yaml v4 (``go.yaml.in/yaml/v4``, v4.0.0-rc.6), the YAML library of
the Talos Image Factory: how it reads a document (typing, errors) and the exact text its
``Marshal`` writes, on which the factory's schematic IDs depend. Pure: no I/O.

``load`` reads nodes, ``decode`` turns them into typed values, ``representer`` turns values into
nodes (and chooses each scalar's style), ``emit`` writes their text.
"""

from talos_twisted.goyaml.decode import AnyMap, ConstructError, Decoder
from talos_twisted.goyaml.emit import dump
from talos_twisted.goyaml.load import Node, load_first
from talos_twisted.goyaml.representer import Map, Rep, Scalar, Seq, rep_str, represent
from talos_twisted.goyaml.resolve import GoTime, GoYAMLError, format_float, resolve

__all__ = [
    "AnyMap",
    "ConstructError",
    "Decoder",
    "GoTime",
    "GoYAMLError",
    "Map",
    "Node",
    "Rep",
    "Scalar",
    "Seq",
    "dump",
    "format_float",
    "load_first",
    "rep_str",
    "represent",
    "resolve",
]
