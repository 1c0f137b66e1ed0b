"""Pipeline catalog for nfhub: which Nextflow pipelines users may run, and with which arguments.

The catalog is a YAML file (``nextflow_projects.yaml``) mapping a pipeline name (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``,
used in URLs) to its definition::

    hello:
      description: Say hello to every line of a file     # shown to users
      source: pipelines/hello            # local dir containing main.nf, relative to this file
      profiles: [standard]               # -profile standard
      config: [conf/site.config]         # -c conf/site.config (relative to this file)
      arguments:                         # the form users fill in, in display order
        inputs: {type: separator, label: Inputs}
        input: {type: path, label: Input file, required: true, must_exist: true, pattern: '\\.txt$'}
        greeting: {type: value-select, options: [Hello, {label: Bonjour, value: Bonjour}], default: Hello}
        times: {type: number, default: 1, min: 1, max: 10, integer: true}
      static_arguments:                  # fixed, never shown, not settable by users
        outdir: results                  # a path: becomes <project folder>/results
    rnaseq:
      source: nf-core/rnaseq             # remote: owner/repo or an https:// git URL
      revision: "3.24.0"                 # remote only (-r); quote it, YAML reads 3.10 as 3.1
      schema: schemas/rnaseq.json        # nf-core nextflow_schema.json; a local source's own file is used by default
      arguments:                         # replace the schema's definition of the same name, in place
        input: {type: path, label: Sample sheet, required: true, must_exist: true}
      static_arguments:
        outdir: results
        genome: GRCh38

Argument types and attributes. Every type has label (default: the parameter name), description, help, default and
required; ``separator`` only has label and description. An unknown type or attribute, a value-select without options
or a default that breaks its own rules is a CatalogError naming the pipeline and the argument.

- ``path`` / ``paths``: selectable_files (default true), selectable_folders (false), must_exist (false), pattern.
  Values are project-relative; ``paths`` takes a list and reaches Nextflow as one comma-joined string.
- ``file-glob``: pattern. A project-relative glob (``reads/*_R{1,2}.fastq.gz``), passed as an absolute glob.
- ``number``: min, max, integer.
- ``text``: multiline, pattern (a regular expression searched in the value), max_length.
- ``value-select``: options (plain values or ``{label, value}``), multiple (a list; passed comma-joined).
- ``boolean``; ``separator`` (a heading, no value).

Schema import (``import_schema``): groups in ``allOf`` order become separators (groups whose parameters are all
hidden get none); enum → value-select; format file-path / directory-path / path → path with files / folders / both
selectable and ``exists`` → must_exist; file-path-pattern → file-glob; integer/number → number; boolean → boolean;
other strings → text (pattern, maxLength); hidden: true → not shown, not settable; defaults are shown but left to the
pipeline itself. A ``static_arguments`` entry pins a parameter: it disappears from the form.

Static values are sent as written, except paths: ``{type: path, value: x}``, a parameter the schema declares as a
path, or ``outdir``. A relative static path (or path default) is placed in the project folder; absolute paths and
URLs are kept, for shared references.

Entry points: ``load_catalog``, ``import_schema``, ``check_arguments`` (user values → ArgumentsError with one
message per argument) and ``build_params`` (values → params of a ``-params-file``, which nfhub_worker.params_json
writes with ``${`` neutralised).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ---- Constants ---------------------------------------------------------------------------------------------------

PIPELINE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Parameter names become keys of the params file. Dots would build nested maps and dashes are camel-cased by
# Nextflow (nextflow.md §8.3), so only plain identifiers are accepted.
ARGUMENT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_REMOTE_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

_PIPELINE_KEYS = ("description", "source", "revision", "profiles", "config", "schema", "arguments", "static_arguments")
_COMMON_ATTRS: dict[str, Any] = {"label": None, "description": "", "help": "", "default": None, "required": False}
# `pattern` on path types is an extension of the list: nf-core schemas constrain file names with it
# (rnaseq's input: ^\S+\.csv$), and dropping it would accept values the pipeline then rejects.
_PATH_ATTRS: dict[str, Any] = {
    "selectable_files": True,
    "selectable_folders": False,
    "must_exist": False,
    "pattern": None,
}
TYPES: dict[str, dict[str, Any]] = {
    "path": {**_COMMON_ATTRS, **_PATH_ATTRS},
    "paths": {**_COMMON_ATTRS, **_PATH_ATTRS},
    "file-glob": {**_COMMON_ATTRS, "pattern": None},
    "number": {**_COMMON_ATTRS, "min": None, "max": None, "integer": False},
    "text": {**_COMMON_ATTRS, "multiline": False, "pattern": None, "max_length": None},
    "value-select": {**_COMMON_ATTRS, "options": None, "multiple": False},
    "boolean": dict(_COMMON_ATTRS),
    "separator": {"label": None, "description": ""},
}
_PATH_TYPES = ("path", "paths", "file-glob")
_BOOL_ATTRS = ("required", "selectable_files", "selectable_folders", "must_exist", "integer", "multiline", "multiple")
_STR_ATTRS = ("label", "description", "help")


# ---- Errors ------------------------------------------------------------------------------------------------------


class CatalogError(Exception):
    """The catalog (or a schema it uses) is invalid; the message names the pipeline and the argument."""


class ArgumentsError(Exception):
    """User-supplied argument values are invalid; ``details`` maps each bad argument to its message (HTTP 422)."""

    status = 422

    def __init__(self, message: str, details: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class _DefError(Exception):
    """A problem inside one argument definition; the caller adds the pipeline/argument context."""


# ---- Pipeline ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """One validated catalog entry. Treat the dicts as read-only."""

    name: str
    description: str
    source: str
    local: bool
    revision: str | None
    profiles: tuple[str, ...]
    config: tuple[str, ...]
    arguments: dict[str, dict]
    hidden: dict[str, dict]
    static_arguments: dict[str, Any]
    schema: str | None
    # Names whose definition (and default) came from the nextflow_schema.json. Their defaults are the pipeline's own
    # and are left for Nextflow to apply (see build_params).
    from_schema: frozenset[str] = field(default=frozenset())
    # Static arguments that are paths (relative ones are placed inside the project folder by build_params).
    static_paths: frozenset[str] = field(default=frozenset())

    def summary(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "local": self.local,
            "revision": self.revision,
            "profiles": list(self.profiles),
            "schema": self.schema is not None,
            "argument_count": sum(1 for d in self.arguments.values() if d["type"] != "separator"),
        }


# ---- Argument definitions ----------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _normalise_options(options: Any) -> list[dict[str, Any]]:
    if not isinstance(options, list) or not options:
        raise _DefError("value-select needs a non-empty 'options' list")
    result: list[dict[str, Any]] = []
    seen: set[tuple[type, Any]] = set()
    for option in options:
        if isinstance(option, dict):
            unknown = set(option) - {"label", "value"}
            if unknown:
                raise _DefError(f"option has unknown key {sorted(unknown)[0]!r} (allowed: label, value)")
            if "value" not in option:
                raise _DefError("option without 'value'")
            value, label = option["value"], option.get("label")
        else:
            value, label = option, None
        if not isinstance(value, (str, int, float, bool)):
            raise _DefError(f"option value must be a string, number or boolean, not {_type_name(value)}")
        if label is None:
            label = value if isinstance(value, str) else json.dumps(value)
        if not isinstance(label, str):
            raise _DefError(f"option label must be a string, not {_type_name(label)}")
        # (type, value) so that true and 1 stay different options, as they are in JSON.
        key = (type(value), value)
        if key in seen:
            raise _DefError(f"duplicate option {value!r}")
        seen.add(key)
        result.append({"label": label, "value": value})
    return result


def _normalise(name: str, raw: Any) -> dict[str, Any]:
    """Check one argument definition and return it with every attribute of its type filled in."""
    if not isinstance(raw, dict):
        raise _DefError(f"definition must be a mapping, not {_type_name(raw)}")
    if "type" not in raw:
        raise _DefError("missing 'type'")
    kind = raw["type"]
    if not isinstance(kind, str) or kind not in TYPES:
        raise _DefError(f"unknown type {kind!r} (known: {', '.join(TYPES)})")
    allowed = TYPES[kind]
    for key in raw:
        if key != "type" and key not in allowed:
            raise _DefError(f"unknown attribute {key!r} for type {kind!r}")
    defn: dict[str, Any] = {"type": kind, **copy.deepcopy(allowed), **copy.deepcopy(raw)}
    if defn["label"] is None:
        defn["label"] = name
    for attr in _STR_ATTRS:
        if attr in defn and not isinstance(defn[attr], str):
            raise _DefError(f"{attr!r} must be a string, not {_type_name(defn[attr])}")
    for attr in _BOOL_ATTRS:
        if attr in defn and not isinstance(defn[attr], bool):
            raise _DefError(f"{attr!r} must be true or false, not {defn[attr]!r}")
    if kind in ("path", "paths") and not (defn["selectable_files"] or defn["selectable_folders"]):
        raise _DefError("selectable_files and selectable_folders are both false: nothing could be selected")
    if kind == "number":
        for attr in ("min", "max"):
            if defn[attr] is not None and not (_is_number(defn[attr]) and math.isfinite(defn[attr])):
                raise _DefError(f"{attr!r} must be a number, not {defn[attr]!r}")
        if defn["min"] is not None and defn["max"] is not None and defn["min"] > defn["max"]:
            raise _DefError(f"min {defn['min']} is greater than max {defn['max']}")
    if defn.get("pattern") is not None:
        if not isinstance(defn["pattern"], str):
            raise _DefError(f"'pattern' must be a string, not {_type_name(defn['pattern'])}")
        try:
            re.compile(defn["pattern"])
        except re.error as exc:
            raise _DefError(f"invalid pattern {defn['pattern']!r}: {exc}") from None
    if kind == "text":
        max_length = defn["max_length"]
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
        ):
            raise _DefError(f"'max_length' must be a positive integer, not {max_length!r}")
    if kind == "value-select":
        defn["options"] = _normalise_options(defn["options"])
    if kind != "separator" and not _unset(defn["default"]):
        default = defn["default"]
        error = _value_error(defn, default, None)
        if not error and kind in _PATH_TYPES:
            for item in default if isinstance(default, list) else [default]:
                if _leaves_project(item):
                    error = f"relative path {item!r} leaves the project folder"
        if error:
            raise _DefError(f"default {default!r} is invalid: {error}")
    return defn


# ---- nf-core schema import ---------------------------------------------------------------------------------------


def _schema_type(prop: dict) -> str | None:
    declared = prop.get("type")
    if isinstance(declared, str) or declared is None:
        return declared
    if isinstance(declared, list):
        # A form control cannot offer a union such as ["boolean", "string"] (nf-core's --help: a flag, or the name of
        # a parameter to explain). Take the most restrictive control among the listed types; the pipeline accepts it.
        for choice in ("boolean", "integer", "number", "string"):
            if choice in declared:
                return choice
    return None


def _from_schema_property(name: str, prop: Any, required: bool) -> tuple[dict[str, Any], bool]:
    """Translate one schema property to a raw argument definition and its hidden flag."""
    if not isinstance(prop, dict):
        raise _DefError(f"schema property must be an object, not {_type_name(prop)}")
    kind = _schema_type(prop)
    fmt = prop.get("format")
    hidden = prop.get("hidden") is True
    raw: dict[str, Any]
    if "enum" in prop:
        raw = {"type": "value-select", "options": prop["enum"]}
    elif kind == "string" and fmt in ("file-path", "directory-path", "path"):
        raw = {
            "type": "path",
            "selectable_files": fmt != "directory-path",
            "selectable_folders": fmt != "file-path",
            "must_exist": prop.get("exists") is True,
        }
    elif kind == "string" and fmt == "file-path-pattern":
        raw = {"type": "file-glob"}
    elif kind == "string":
        # minLength is not mapped: nf-core uses minLength 1 to mean "not empty", and an empty value is "unset" here.
        raw = {"type": "text"}
        if "maxLength" in prop:
            raw["max_length"] = prop["maxLength"]
    elif kind in ("integer", "number"):
        raw = {"type": "number", "integer": kind == "integer"}
        if "minimum" in prop:
            raw["min"] = prop["minimum"]
        if "maximum" in prop:
            raw["max"] = prop["maximum"]
    elif kind == "boolean":
        raw = {"type": "boolean"}
    else:
        # Objects, arrays and untyped properties have no form control: they are kept hidden (accounted for, never
        # accepted from users) and the pipeline applies its own default.
        raw, hidden = {"type": "text"}, True
        prop = {k: v for k, v in prop.items() if k not in ("default", "pattern")}
    if "pattern" in prop and raw["type"] in ("text", *_PATH_TYPES):
        raw["pattern"] = prop["pattern"]
    raw["label"] = prop["title"] if isinstance(prop.get("title"), str) else name
    for src, dst in (("description", "description"), ("help_text", "help")):
        if isinstance(prop.get(src), str):
            raw[dst] = prop[src]
    if not _unset(prop.get("default")):
        raw["default"] = prop["default"]
    raw["required"] = required
    return raw, hidden


def _schema_groups(schema: dict) -> Iterator[tuple[str | None, dict]]:
    """Yield (group id, group) in display order: ungrouped top-level properties, allOf order, unreferenced groups."""
    if "properties" in schema:
        yield None, schema
    defs: dict = {}
    prefix = ""
    for key in ("$defs", "definitions"):
        if key in schema:
            if not isinstance(schema[key], dict):
                raise CatalogError(f"schema: '{key}' must be an object")
            defs, prefix = schema[key], f"#/{key}/"
            break
    referenced: list[str] = []
    all_of = schema.get("allOf", [])
    if not isinstance(all_of, list):
        raise CatalogError("schema: 'allOf' must be a list")
    for item in all_of:
        if not isinstance(item, dict) or "$ref" not in item:
            continue  # a constraint (if/then, anyOf, ...), not a group
        ref = item["$ref"]
        if not isinstance(ref, str) or not prefix or not ref.startswith(prefix) or ref[len(prefix) :] not in defs:
            raise CatalogError(f"schema: allOf entry {item!r} does not reference a group in $defs/definitions")
        group_id = ref[len(prefix) :]
        if group_id not in referenced:
            referenced.append(group_id)
    for group_id in referenced + [g for g in defs if g not in referenced]:
        if not isinstance(defs[group_id], dict):
            raise CatalogError(f"schema: group {group_id!r} must be an object")
        yield group_id, defs[group_id]


def _schema_entries(schema: Any) -> list[tuple[str, dict[str, Any], bool]]:
    """All schema parameters and group separators in display order, as (name, definition, hidden)."""
    if not isinstance(schema, dict):
        raise CatalogError(f"schema: must be a JSON object, not {_type_name(schema)}")
    entries: list[tuple[str, dict[str, Any], bool]] = []
    seen: set[str] = set()
    for group_id, group in _schema_groups(schema):
        if group_id is not None:
            if group_id in seen:
                raise CatalogError(f"schema: argument {group_id!r}: group id is also used as a parameter name")
            seen.add(group_id)
            title = group.get("title")
            description = group.get("description")
            entries.append(
                (
                    group_id,
                    {
                        "type": "separator",
                        "label": title if isinstance(title, str) else group_id,
                        "description": description if isinstance(description, str) else "",
                    },
                    False,
                )
            )
        properties = group.get("properties", {})
        required = group.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise CatalogError(f"schema: group {group_id or '(top level)'!r}: bad 'properties' or 'required'")
        for name, prop in properties.items():
            if not ARGUMENT_NAME_RE.match(name):
                raise CatalogError(f"schema: argument {name!r}: not a valid parameter name")
            if name in seen:
                raise CatalogError(f"schema: argument {name!r}: defined twice")
            seen.add(name)
            try:
                raw, hidden = _from_schema_property(name, prop, name in required)
                entries.append((name, _normalise(name, raw), hidden))
            except _DefError as exc:
                raise CatalogError(f"schema: argument {name!r}: {exc}") from None
    return entries


def _split_entries(entries: list[tuple[str, dict[str, Any], bool]], keep: frozenset[str]) -> tuple[dict, dict]:
    visible: dict[str, dict] = {}
    hidden: dict[str, dict] = {}
    pending: tuple[str, dict] | None = None
    for name, defn, is_hidden in entries:
        if is_hidden:
            hidden[name] = defn
            continue
        if defn["type"] == "separator" and name not in keep:
            # A schema group whose parameters are all hidden (or pinned) would be an empty heading: it is shown only
            # once a visible parameter follows it.
            pending = (name, defn)
            continue
        if pending is not None and defn["type"] != "separator":
            visible[pending[0]] = pending[1]
        pending = None
        visible[name] = defn
    return visible, hidden


def import_schema(schema: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """Turn an nf-core ``nextflow_schema.json`` (draft-07 ``definitions`` or 2020-12 ``$defs``) into arguments.

    Returns (visible arguments in display order, separators included; hidden arguments). Every schema property
    lands in exactly one of the two; groups without a visible parameter get no separator.
    """
    return _split_entries(_schema_entries(schema), frozenset())


# ---- Catalog loading ---------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one, hiding a pipeline or argument."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _is_json_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, (str, int, bool)):
        return True
    if isinstance(value, list):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def _escapes(rel: str) -> bool:
    return rel.startswith("/") or os.path.normpath(rel).split(os.sep)[0] == ".."


def _leaves_project(item: str) -> bool:
    """A relative path (not absolute, not a URL) that climbs out of the project folder."""
    return not os.path.isabs(item) and not _URL_RE.match(item) and _escapes(item)


def _load_source(base: Path, source: Any) -> tuple[str, bool]:
    if not isinstance(source, str) or not source.strip():
        raise _DefError("missing 'source' (a local directory with main.nf, owner/repo or an https git URL)")
    if source.startswith("https://"):
        return source, False
    if _URL_RE.match(source):
        raise _DefError(f"source {source!r}: only https:// git URLs are supported")
    local = base / source
    if local.is_dir():
        if not (local / "main.nf").is_file():
            raise _DefError(f"source {source!r}: directory has no main.nf")
        return str(local.resolve()), True
    # 'pipelines/hello' is both a relative path and a valid owner/repo. An existing local directory wins (as in
    # Nextflow); a missing one is reported when its first component exists here, so a typo is not sent to GitHub.
    first = source.split("/", 1)[0]
    looks_local = source.startswith((".", "/", "~")) or (base / first).is_dir()
    if _REMOTE_RE.match(source) and not looks_local:
        return source, False
    raise _DefError(f"source {source!r}: local directory {local} not found")


def _load_file(base: Path, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _DefError(f"{what} must be a file path, not {value!r}")
    path = base / value
    if not path.is_file():
        raise _DefError(f"{what} {value!r}: file {path} not found")
    return str(path.resolve())


def _load_schema_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise _DefError(f"schema {path}: cannot read JSON: {exc}") from None


def _load_pipeline(name: Any, raw: Any, base: Path) -> Pipeline:
    if not isinstance(name, str) or not PIPELINE_NAME_RE.match(name):
        raise CatalogError(f"pipeline {name!r}: name must match {PIPELINE_NAME_RE.pattern}")
    where = f"pipeline {name!r}"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: definition must be a mapping, not {_type_name(raw)}")
    try:
        for key in raw:
            if key not in _PIPELINE_KEYS:
                raise _DefError(f"unknown key {key!r} (known: {', '.join(_PIPELINE_KEYS)})")
        description = "" if raw.get("description") is None else raw["description"]
        if not isinstance(description, str):
            raise _DefError("'description' must be a string")
        source, local = _load_source(base, raw.get("source"))
        revision = raw.get("revision")
        if revision is not None:
            if not isinstance(revision, str) or not revision or revision.startswith("-"):
                # YAML reads 3.10 as the float 3.1.
                raise _DefError(f"'revision' must be a string (quote it), not {revision!r}")
            if local:
                raise _DefError("'revision' is only for remote sources (Nextflow refuses -r for a local script)")
        profiles = [] if raw.get("profiles") is None else raw["profiles"]
        if not isinstance(profiles, list) or not all(isinstance(p, str) and _PROFILE_RE.match(p) for p in profiles):
            raise _DefError(f"'profiles' must be a list of profile names, not {profiles!r}")
        configs = [] if raw.get("config") is None else raw["config"]
        if not isinstance(configs, list):
            raise _DefError(f"'config' must be a list of files, not {configs!r}")
        config = tuple(_load_file(base, c, "config") for c in configs)
        schema_path: str | None = None
        if raw.get("schema") is not None:
            schema_path = _load_file(base, raw["schema"], "schema")
        elif local and (Path(source) / "nextflow_schema.json").is_file():
            schema_path = str(Path(source) / "nextflow_schema.json")
        arguments_raw = {} if raw.get("arguments") is None else raw["arguments"]
        static_raw = {} if raw.get("static_arguments") is None else raw["static_arguments"]
        for key, value in (("arguments", arguments_raw), ("static_arguments", static_raw)):
            if not isinstance(value, dict):
                raise _DefError(f"'{key}' must be a mapping, not {_type_name(value)}")
    except _DefError as exc:
        raise CatalogError(f"{where}: {exc}") from None

    entries: list[tuple[str, dict[str, Any], bool]] = []
    if schema_path is not None:
        try:
            schema = _load_schema_file(schema_path)
        except _DefError as exc:
            raise CatalogError(f"{where}: {exc}") from None
        try:
            entries = _schema_entries(schema)
        except CatalogError as exc:
            raise CatalogError(f"{where}: {exc}") from None
    from_schema = {n for n, d, _ in entries if d["type"] != "separator"}

    explicit: dict[str, dict[str, Any]] = {}
    for arg_name, arg_raw in arguments_raw.items():
        if not isinstance(arg_name, str) or not ARGUMENT_NAME_RE.match(arg_name):
            raise CatalogError(f"{where}, argument {arg_name!r}: not a valid parameter name (letters, digits, _)")
        if arg_name in static_raw:
            raise CatalogError(f"{where}, argument {arg_name!r}: also listed in static_arguments")
        try:
            explicit[arg_name] = _normalise(arg_name, arg_raw)
        except _DefError as exc:
            raise CatalogError(f"{where}, argument {arg_name!r}: {exc}") from None

    # Explicit definitions replace schema ones in place (a hidden schema parameter becomes visible where the schema
    # put it); new ones follow the schema's.
    schema_types = {n: d["type"] for n, d, _ in entries}
    merged = [(n, explicit.get(n, d), False if n in explicit else h) for n, d, h in entries]
    merged += [(n, d, False) for n, d in explicit.items() if n not in schema_types]
    # A static argument pins a parameter: it is no longer shown nor accepted from users.
    merged = [(n, d, h) for n, d, h in merged if n not in static_raw or d["type"] == "separator"]
    arguments, hidden = _split_entries(merged, frozenset(n for n, d in explicit.items() if d["type"] == "separator"))

    static: dict[str, Any] = {}
    static_paths: set[str] = set()
    for key, value in static_raw.items():
        here = f"{where}, static argument {key!r}"
        if not isinstance(key, str) or not ARGUMENT_NAME_RE.match(key):
            raise CatalogError(f"{here}: not a valid parameter name (letters, digits, _)")
        if schema_types.get(key) == "separator":
            raise CatalogError(f"{here}: this name is a schema group, not a parameter")
        # Static values are plain JSON values, except paths: `{type: path, value: x}`, a parameter the schema declares
        # as a path, or `outdir` (so published results land in the project folder and can be browsed).
        is_path = key == "outdir" or schema_types.get(key) in _PATH_TYPES
        if isinstance(value, dict) and set(value) == {"type", "value"}:
            if value["type"] != "path":
                raise CatalogError(f"{here}: unknown type {value['type']!r} (only 'path' can be written this way)")
            value, is_path = value["value"], True
        if value is None:
            raise CatalogError(f"{here}: no value")
        if not _is_json_value(value):
            raise CatalogError(f"{here}: {value!r} is not a plain value (quote dates and times)")
        if is_path:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if not isinstance(item, str) or not item or "\0" in item:
                    raise CatalogError(f"{here}: path must be a string or a list of strings, not {value!r}")
                if _leaves_project(item):
                    raise CatalogError(f"{here}: relative path {item!r} leaves the project folder")
            static_paths.add(key)
        static[key] = value

    return Pipeline(
        name=name,
        description=description,
        source=source,
        local=local,
        revision=revision,
        profiles=tuple(profiles),
        config=config,
        arguments=arguments,
        hidden=hidden,
        static_arguments=static,
        schema=schema_path,
        from_schema=frozenset(from_schema - set(explicit)),
        static_paths=frozenset(static_paths),
    )


def load_catalog(path: str | os.PathLike) -> dict[str, Pipeline]:
    """Read and validate a catalog file; raise CatalogError naming the pipeline and argument at the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"catalog {path}: cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CatalogError(f"catalog {path}: top level must be a mapping of pipeline names, not {_type_name(data)}")
    base = path.resolve().parent
    return {name: _load_pipeline(name, raw, base) for name, raw in data.items()}


# ---- Argument values ---------------------------------------------------------------------------------------------


def _unset(value: Any) -> bool:
    return value is None or value == "" or value == []


def _text_error(value: Any, multiline: bool) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {_type_name(value)}"
    if "\0" in value:
        return "contains a NUL character"
    if not multiline and ("\n" in value or "\r" in value):
        return "must be a single line"
    return None


def _path_error(defn: dict, value: Any, resolve: Callable[[str], Path] | None) -> str | None:
    if not isinstance(value, str):
        return f"expected a path (string), got {_type_name(value)}"
    if any(ord(c) < 32 for c in value):
        return "contains control characters"
    if defn["type"] == "paths" and "," in value:
        # paths reach Nextflow as one comma-joined string, so a comma inside a path would split it.
        return "a path in a list must not contain ','"
    if defn["type"] == "file-glob" and ".." in re.split(r"[/{},]", value):
        return "glob must not contain '..'"
    pattern = defn.get("pattern")
    if pattern and not re.search(pattern, value):
        return f"does not match pattern {pattern}"
    if resolve is not None:
        try:
            resolve(value)
        except Exception as exc:  # the resolver's own error message is the explanation
            return str(exc) or "path not allowed"
    return None


def _option_values(defn: dict) -> set[tuple[type, Any]]:
    return {(type(o["value"]), o["value"]) for o in defn["options"]}


def _value_error(defn: dict, value: Any, resolve: Callable[[str], Path] | None) -> str | None:
    """Why ``value`` (already known to be set) breaks ``defn``; resolve=None skips the path-safety check."""
    kind = defn["type"]
    if kind == "path" or kind == "file-glob":
        return _path_error(defn, value, resolve)
    if kind == "paths":
        if not isinstance(value, list) or not value:
            return f"expected a list of paths, got {_type_name(value)}"
        for item in value:
            error = _path_error(defn, item, resolve)
            if error:
                return f"{item!r}: {error}"
        return None
    if kind == "number":
        # NaN and infinities are not numbers a user can mean; beyond 2**53 a number no longer survives JSON
        # round trips (and math.isfinite overflows on huge ints).
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            return f"expected a number, got {_type_name(value)}"
        if abs(value) > 2**53:
            return "number out of range"
        if defn["integer"] and not (isinstance(value, int) or value.is_integer()):
            return f"expected an integer, got {value}"
        if defn["min"] is not None and value < defn["min"]:
            return f"must be at least {defn['min']}"
        if defn["max"] is not None and value > defn["max"]:
            return f"must be at most {defn['max']}"
        return None
    if kind == "text":
        error = _text_error(value, defn["multiline"])
        if error:
            return error
        if defn["max_length"] is not None and len(value) > defn["max_length"]:
            return f"longer than {defn['max_length']} characters"
        if defn["pattern"] is not None and not re.search(defn["pattern"], value):
            return f"does not match pattern {defn['pattern']}"
        return None
    if kind == "value-select":
        allowed = _option_values(defn)
        chosen = value if defn["multiple"] else [value]
        if defn["multiple"] and not isinstance(value, list):
            return f"expected a list of options, got {_type_name(value)}"
        for item in chosen:
            if not isinstance(item, (str, int, float, bool)) or (type(item), item) not in allowed:
                return f"{item!r} is not one of the options"
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else f"expected true or false, got {_type_name(value)}"
    return "a separator takes no value"


def _exists_error(defn: dict, rel: str, resolve: Callable[[str], Path]) -> str | None:
    try:
        target = resolve(rel)
    except Exception as exc:  # the resolver's own error message is the explanation
        return str(exc) or "path not allowed"
    if not target.exists():
        return f"{rel!r} does not exist" if defn["must_exist"] else None
    if target.is_dir() and not defn["selectable_folders"]:
        return f"{rel!r} is a folder, a file is expected"
    if not target.is_dir() and not defn["selectable_files"]:
        return f"{rel!r} is a file, a folder is expected"
    return None


def check_arguments(pipeline: Pipeline, values: dict, resolve: Callable[[str], Path], *, complete: bool) -> None:
    """Validate user values for ``pipeline``; raise ArgumentsError with one message per bad argument.

    ``resolve(rel)`` maps a project-relative path to a real path or raises (its message is reported). With
    ``complete`` (when a run is scheduled) required values must be present and paths must exist as the right kind.
    None, "" and [] mean "unset".
    """
    if not isinstance(values, dict):
        raise ArgumentsError("workflow arguments must be an object", {})
    details: dict[str, str] = {}
    for name, value in values.items():
        defn = pipeline.arguments.get(name)
        if defn is None:
            if name in pipeline.hidden or name in pipeline.static_arguments:
                details[str(name)] = "fixed by the pipeline catalog; cannot be set"
            else:
                details[str(name)] = "unknown argument"
        elif defn["type"] == "separator":
            details[name] = "a heading, not an argument"
        elif not _unset(value):
            error = _value_error(defn, value, resolve)
            if error:
                details[name] = error
    if complete:
        for name, defn in pipeline.arguments.items():
            if name in details or defn["type"] == "separator":
                continue
            value = values.get(name)
            if _unset(value):
                if defn["required"] and _unset(defn["default"]):
                    details[name] = "required"
                continue
            if defn["type"] in ("path", "paths"):
                for rel in value if defn["type"] == "paths" else [value]:
                    error = _exists_error(defn, rel, resolve)
                    if error:
                        details[name] = error
                        break
    if details:
        names = ", ".join(details)
        raise ArgumentsError(f"invalid workflow arguments: {names}", details)


# ---- From values to Nextflow -------------------------------------------------------------------------------------


def _user_path(project: str, rel: str) -> str:
    # Values were checked by the real resolver; this lexical check keeps build_params safe on its own.
    joined = os.path.normpath(os.path.join(project, rel.lstrip("/")))
    if os.path.commonpath([joined, project]) != project:
        raise ValueError(f"{rel!r} leaves the project folder")
    return joined


def _lexical_resolver(project: str) -> Callable[[str], Path]:
    return lambda rel: Path(_user_path(project, rel))


def _admin_path(project: str, value: str) -> str:
    # Catalog-written paths (static values, defaults) may be absolute or URLs on purpose: e.g. a shared reference.
    if os.path.isabs(value) or _URL_RE.match(value):
        return value
    return os.path.normpath(os.path.join(project, value))


def build_params(pipeline: Pipeline, values: dict, project_dir: Path) -> dict:
    """Turn checked user values into the params of Nextflow's ``-params-file`` (nfhub_worker.params_json writes it).

    Catalog defaults, then user values, then static arguments. Paths become absolute paths inside ``project_dir``,
    ``paths`` and multiple selections one comma-joined string, numbers and booleans keep their JSON types,
    separators are dropped, unset values are omitted. Defaults that came from the nextflow_schema.json are omitted
    too: they are the pipeline's own and Nextflow applies them (they may even use `${projectDir}`).
    """
    project = str(project_dir)
    if not os.path.isabs(project):
        raise ValueError(f"project folder must be absolute: {project}")
    project = os.path.normpath(project)
    check_arguments(pipeline, values, _lexical_resolver(project), complete=False)
    params: dict[str, Any] = {}
    for name, defn in pipeline.arguments.items():
        kind = defn["type"]
        if kind == "separator":
            continue
        value = values.get(name)
        from_user = not _unset(value)
        if not from_user:
            if name in pipeline.from_schema or _unset(defn["default"]):
                continue
            value = defn["default"]
        place = (lambda rel: _user_path(project, rel)) if from_user else (lambda rel: _admin_path(project, rel))
        if kind in ("path", "file-glob"):
            params[name] = place(value)
        elif kind == "paths":
            params[name] = ",".join(place(rel) for rel in value)
        elif kind == "number" and defn["integer"]:
            params[name] = int(value)
        elif kind == "value-select" and defn["multiple"]:
            params[name] = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
        else:
            params[name] = copy.deepcopy(value)
    for name, value in pipeline.static_arguments.items():
        if name in pipeline.static_paths:
            items = value if isinstance(value, list) else [value]
            params[name] = ",".join(_admin_path(project, item) for item in items)
        else:
            params[name] = copy.deepcopy(value)
    return params

