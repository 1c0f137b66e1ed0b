"""Tests for nfhub_catalog: catalog loading, nf-core schema import, argument checks and params building."""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import nfhub_config
from nfhub_catalog import (
    ArgumentsError,
    CatalogError,
    Pipeline,
    build_params,
    check_arguments,
    import_schema,
    load_catalog,
)
from nfhub_worker import params_json

FIXTURES = Path("/work/shared/fixtures/nf-core")
RNASEQ = FIXTURES / "rnaseq-3.24.0.nextflow_schema.json"
FETCHNGS = FIXTURES / "fetchngs-1.12.0.nextflow_schema.json"
# Nextflow's params-file placeholder regex (CmdRun/ParamsCollector PARAMS_VAR), ported to Python.
NEXTFLOW_PARAMS_VAR = re.compile(r"\$\{([A-Za-z_$][A-Za-z0-9_$]*)}")


# ---- helpers -----------------------------------------------------------------------------------------------------


def make_resolver(project: Path) -> Callable[[str], Path]:
    """A small safe resolver standing in for nfhub_files.resolve_path: relative, no escape (symlinks resolved)."""
    root = project.resolve()

    def resolve(rel: str) -> Path:
        if "\0" in rel or os.path.isabs(rel):
            raise ValueError("absolute paths are not allowed")
        target = (root / rel).resolve()
        if os.path.commonpath([str(target), str(root)]) != str(root):
            raise ValueError("path leaves the project folder")
        return target

    return resolve


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nextflow_projects.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_pipeline_dir(tmp_path: Path, rel: str = "pipelines/demo") -> Path:
    folder = tmp_path / rel
    folder.mkdir(parents=True)
    (folder / "main.nf").write_text("workflow { }\n")
    return folder


def schema_properties(schema: dict) -> dict[str, tuple[str | None, dict]]:
    """Every property of a schema, independently of the module: name -> (group id, property)."""
    defs = schema.get("$defs") or schema.get("definitions") or {}
    found: dict[str, tuple[str | None, dict]] = {
        name: (None, prop) for name, prop in schema.get("properties", {}).items()
    }
    for group_id, group in defs.items():
        for name, prop in group["properties"].items():
            assert name not in found
            found[name] = (group_id, prop)
    return found


def expected_type(prop: dict) -> str:
    """The mapping rules of the issue, written out plainly to cross-check import_schema."""
    types = prop.get("type")
    types = types if isinstance(types, list) else [types]
    if "enum" in prop:
        return "value-select"
    if "boolean" in types:
        return "boolean"
    if "integer" in types or "number" in types:
        return "number"
    if prop.get("format") in ("file-path", "directory-path", "path"):
        return "path"
    if prop.get("format") == "file-path-pattern":
        return "file-glob"
    return "text"


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---- nf-core schema import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RNASEQ, FETCHNGS], ids=["rnaseq", "fetchngs"])
def test_schema_every_parameter_accounted_for_with_types(path: Path) -> None:
    schema = load_json(path)
    props = schema_properties(schema)
    visible, hidden = import_schema(schema)
    params = {n: d for n, d in visible.items() if d["type"] != "separator"}
    assert set(params).isdisjoint(hidden)
    assert set(params) | set(hidden) == set(props)
    assert {n for n, (_, p) in props.items() if p.get("hidden") is True} == set(hidden)
    expected = Counter(expected_type(p) for _, p in props.values())
    assert Counter(d["type"] for d in [*params.values(), *hidden.values()]) == expected
    # Required is declared per group.
    required = {
        n for n, (g, _) in props.items() if n in (schema.get("$defs") or schema["definitions"])[g].get("required", [])
    }
    assert {n for n, d in params.items() if d["required"]} == required == {"input", "outdir"}
    for name, (_, prop) in props.items():
        defn = params.get(name) or hidden[name]
        assert defn["label"] == name
        assert defn["description"] == prop.get("description", "")
        assert defn["help"] == prop.get("help_text", "")
        assert defn["default"] == prop.get("default")


def test_rnaseq_hand_counted_numbers() -> None:
    visible, hidden = import_schema(load_json(RNASEQ))
    params = {n: d for n, d in visible.items() if d["type"] != "separator"}
    assert len(params) + len(hidden) == 133
    assert len(hidden) == 23
    all_types = Counter(d["type"] for d in [*params.values(), *hidden.values()])
    # 53 boolean + the ["boolean","string"] help; 15 file-path + 9 path + 2 directory-path; 5 integer + 3 number.
    assert all_types == {"boolean": 54, "text": 34, "path": 26, "value-select": 11, "number": 8}
    assert Counter(d["type"] for d in params.values()) == {
        "boolean": 47,
        "text": 22,
        "path": 23,
        "value-select": 10,
        "number": 8,
    }
    separators = [n for n, d in visible.items() if d["type"] == "separator"]
    # 11 groups in allOf order; institutional_config_options has only hidden parameters, so no empty heading.
    assert separators == [
        "input_output_options",
        "reference_genome_options",
        "read_trimming_options",
        "read_filtering_options",
        "umi_options",
        "alignment_options",
        "optional_outputs",
        "quality_control",
        "process_skipping_options",
        "generic_options",
    ]
    assert visible["input_output_options"] == {
        "type": "separator",
        "label": "Input/output options",
        "description": "Define where the pipeline should find input data and save output data.",
    }
    assert list(visible)[:6] == [
        "input_output_options",
        "input",
        "outdir",
        "email",
        "multiqc_title",
        "reference_genome_options",
    ]
    assert list(visible)[-4:] == ["multiqc_methods_description", "help", "help_full", "show_hidden"]


def test_rnaseq_specific_parameters() -> None:
    visible, hidden = import_schema(load_json(RNASEQ))
    inp = visible["input"]
    assert (inp["type"], inp["required"], inp["pattern"], inp["must_exist"]) == ("path", True, r"^\S+\.csv$", True)
    assert (inp["selectable_files"], inp["selectable_folders"]) == (True, False)
    assert inp["help"].startswith("Provide the full path to a comma-separated sample sheet")
    out = visible["outdir"]
    assert (out["type"], out["selectable_files"], out["selectable_folders"], out["must_exist"]) == (
        "path",
        False,
        True,
        False,
    )
    star = visible["star_index"]
    assert (star["selectable_files"], star["selectable_folders"], star["must_exist"]) == (True, True, True)
    assert visible["help"]["type"] == "boolean"  # ["boolean", "string"] → boolean
    assert visible["stranded_threshold"] == {
        **visible["stranded_threshold"],
        "type": "number",
        "min": 0.5,
        "max": 1,
        "integer": False,
        "default": 0.8,
    }
    assert visible["min_trimmed_reads"]["integer"] is True
    assert visible["trimmer"]["options"] == [
        {"label": "trimgalore", "value": "trimgalore"},
        {"label": "fastp", "value": "fastp"},
    ]
    assert visible["trimmer"]["default"] == "trimgalore"
    sep = visible["umitools_umi_separator"]
    assert (sep["type"], sep["pattern"], sep["max_length"], sep["multiline"]) == ("text", r"^\S+$", 1, False)
    assert visible["hisat2_build_memory"]["pattern"] == r"^\d+(\.\d+)?\.?\s*(K|M|G|T)?B$"
    assert hidden["hook_url"]["type"] == "text"  # format: uri
    assert hidden["publish_dir_mode"]["type"] == "value-select"
    assert visible["ribo_database_manifest"]["default"] == "${projectDir}/workflows/rnaseq/assets/rrna-db-defaults.txt"


def test_fetchngs_draft07_definitions() -> None:
    visible, hidden = import_schema(load_json(FETCHNGS))
    params = {n: d for n, d in visible.items() if d["type"] != "separator"}
    assert len(params) + len(hidden) == 31
    assert len(hidden) == 21
    assert Counter(d["type"] for d in [*params.values(), *hidden.values()]) == {
        "text": 14,
        "boolean": 9,
        "value-select": 4,
        "path": 3,
        "number": 1,
    }
    # 5 groups; only input_output_options has visible parameters.
    assert [n for n, d in visible.items() if d["type"] == "separator"] == ["input_output_options"]
    assert list(visible)[:3] == ["input_output_options", "input", "ena_metadata_fields"]
    assert visible["input"]["pattern"] == r"^\S+\.(csv|tsv|txt)$"
    assert visible["input"]["required"] and visible["outdir"]["required"]
    assert visible["outdir"]["selectable_folders"] and not visible["outdir"]["selectable_files"]
    assert visible["download_method"]["default"] == "ftp"
    assert hidden["max_cpus"] == {**hidden["max_cpus"], "type": "number", "integer": True, "default": 16}
    # A boolean with enum [false] becomes a one-option select; JSON spelling for the label.
    assert hidden["force_sratools_download"]["options"] == [{"label": "false", "value": False}]


def test_schema_ungrouped_unreferenced_and_unrepresentable_properties() -> None:
    schema = {
        "$defs": {
            "b": {"title": "B", "properties": {"b1": {"type": "string", "format": "file-path-pattern"}}},
            "a": {"title": "A", "required": ["a1"], "properties": {"a1": {"type": "integer", "minimum": 1}}},
            "c": {"properties": {"c1": {"type": "array", "default": [1]}, "c2": {"type": "object"}, "c3": {}}},
        },
        "properties": {"top": {"type": "boolean", "default": True}},
        "required": ["top"],
        "allOf": [{"$ref": "#/$defs/a"}, {"if": {}, "then": {}}, {"$ref": "#/$defs/b"}],
    }
    visible, hidden = import_schema(schema)
    # Ungrouped properties first, then allOf order, then groups nothing references.
    assert list(visible) == ["top", "a", "a1", "b", "b1"]
    assert visible["top"]["required"] and visible["top"]["default"] is True
    assert visible["a1"]["required"] and visible["a1"]["min"] == 1
    assert visible["b1"]["type"] == "file-glob"
    assert visible["a"]["label"] == "A"
    # No form control for arrays/objects/untyped: hidden, pipeline default applies.
    assert set(hidden) == {"c1", "c2", "c3"}
    assert hidden["c1"]["default"] is None


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$defs": {}, "allOf": [{"$ref": "#/$defs/missing"}]}, "does not reference a group"),
        ([], "must be a JSON object"),
        ({"properties": {"a.b": {"type": "string"}}}, "argument 'a.b': not a valid parameter name"),
        ({"properties": {"n": {"type": "integer", "default": "x"}}}, "argument 'n': default 'x' is invalid"),
        ({"properties": {"n": {"type": "integer", "minimum": 5, "default": 1}}}, "must be at least 5"),
        ({"properties": {"t": {"type": "string", "pattern": "("}}}, "argument 't': invalid pattern"),
        (
            {"properties": {"x": {"type": "string"}}, "$defs": {"g": {"properties": {"x": {"type": "string"}}}}},
            "argument 'x': defined twice",
        ),
    ],
)
def test_schema_errors(schema: object, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        import_schema(schema)  # type: ignore[arg-type]


# ---- catalog loading ---------------------------------------------------------------------------------------------

DEMO = """\
demo:
  description: Demo pipeline
  source: pipelines/demo
  profiles: [test, docker]
  config: [site.config]
  arguments:
    inputs_heading: {type: separator, label: Inputs, description: What to read}
    input: {type: path, label: Sample sheet, required: true, must_exist: true, pattern: '\\.csv$'}
    reads: {type: paths, selectable_folders: true}
    glob: {type: file-glob, default: "reads/*.fq"}
    ref_dir: {type: path, selectable_files: false, selectable_folders: true, must_exist: true}
    threads: {type: number, label: Threads, default: 4, min: 1, max: 64, integer: true}
    ratio: {type: number, min: 0, max: 1}
    title: {type: text, pattern: '^[A-Za-z -]*$', max_length: 20}
    notes: {type: text, multiline: true}
    extra: {type: text}
    mode: {type: value-select, options: [fast, {label: Thorough, value: slow}], default: fast}
    levels: {type: value-select, options: [1, 2, 3], multiple: true}
    verbose: {type: boolean, default: false}
    sample_name: {type: text, required: true, default: sample}
  static_arguments:
    outdir: results
    genome: /srv/refs/genome.fa
    cache_dir: {type: path, value: cache}
    max_cpus: 8
    tags: [a, b]
"""


@pytest.fixture
def demo_catalog(tmp_path: Path) -> Path:
    make_pipeline_dir(tmp_path)
    (tmp_path / "site.config").write_text("process.cpus = 1\n")
    return write_catalog(tmp_path, DEMO)


@pytest.fixture
def demo(demo_catalog: Path) -> Pipeline:
    return load_catalog(demo_catalog)["demo"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "samples.csv").write_text("sample\n")
    (folder / "data" / "notes.txt").write_text("x\n")
    (folder / "refs").mkdir()
    return folder


def test_load_catalog_normalises_everything(demo: Pipeline, tmp_path: Path) -> None:
    assert demo.name == "demo"
    assert demo.description == "Demo pipeline"
    assert demo.source == str((tmp_path / "pipelines/demo").resolve())
    assert demo.local is True and demo.revision is None and demo.schema is None
    assert demo.profiles == ("test", "docker")
    assert demo.config == (str((tmp_path / "site.config").resolve()),)
    assert list(demo.arguments)[:3] == ["inputs_heading", "input", "reads"]
    assert demo.arguments["inputs_heading"] == {"type": "separator", "label": "Inputs", "description": "What to read"}
    assert demo.arguments["threads"] == {
        "type": "number",
        "label": "Threads",
        "description": "",
        "help": "",
        "default": 4,
        "required": False,
        "min": 1,
        "max": 64,
        "integer": True,
    }
    assert demo.arguments["reads"]["label"] == "reads"
    assert demo.arguments["reads"]["selectable_files"] is True and demo.arguments["reads"]["must_exist"] is False
    assert demo.arguments["mode"]["options"] == [
        {"label": "fast", "value": "fast"},
        {"label": "Thorough", "value": "slow"},
    ]
    assert demo.arguments["levels"]["options"][0] == {"label": "1", "value": 1}
    assert demo.arguments["notes"] == {
        "type": "text",
        "label": "notes",
        "description": "",
        "help": "",
        "default": None,
        "required": False,
        "multiline": True,
        "pattern": None,
        "max_length": None,
    }
    assert demo.hidden == {}
    assert "outdir" not in demo.arguments
    assert demo.static_arguments == {
        "outdir": "results",
        "genome": "/srv/refs/genome.fa",
        "cache_dir": "cache",
        "max_cpus": 8,
        "tags": ["a", "b"],
    }
    assert demo.summary() == {
        "name": "demo",
        "description": "Demo pipeline",
        "source": demo.source,
        "local": True,
        "revision": None,
        "profiles": ["test", "docker"],
        "schema": False,
        "argument_count": 13,
    }
    json.dumps(demo.summary())
    json.dumps(demo.arguments)  # the API serves these as they are


def test_remote_sources_with_schema_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    shutil.copy(RNASEQ, tmp_path / "schemas/rnaseq.json")
    (tmp_path / "pipelines").mkdir()  # a local 'pipelines' dir must not make nf-core/rnaseq look local
    path = write_catalog(
        tmp_path,
        """\
        rnaseq:
          source: nf-core/rnaseq
          revision: "3.24.0"
          schema: schemas/rnaseq.json
          arguments:
            input: {type: path, label: Sample sheet, required: true, pattern: '\\.csv$'}
            igenomes_base: {type: text, label: iGenomes base}
            my_extra: {type: boolean}
          static_arguments:
            outdir: results
            publish_dir_mode: symlink
        viaurl:
          source: https://github.com/nf-core/fetchngs.git
        """,
    )
    catalog = load_catalog(path)
    rnaseq = catalog["rnaseq"]
    assert (rnaseq.source, rnaseq.local, rnaseq.revision) == ("nf-core/rnaseq", False, "3.24.0")
    assert rnaseq.schema == str((tmp_path / "schemas/rnaseq.json").resolve())
    names = list(rnaseq.arguments)
    # Explicit definitions replace schema ones in place; a hidden schema parameter becomes visible in its group.
    assert names[:3] == ["input_output_options", "input", "email"]
    assert rnaseq.arguments["input"]["label"] == "Sample sheet" and rnaseq.arguments["input"]["must_exist"] is False
    # igenomes_ignore and arm (hidden) sit between them in the schema.
    assert names.index("igenomes_base") == names.index("featurecounts_feature_type") + 1
    assert "igenomes_base" not in rnaseq.hidden
    assert names[-1] == "my_extra"
    # Static arguments pin parameters: no longer shown, nor hidden, nor accepted.
    for pinned in ("outdir", "publish_dir_mode"):
        assert pinned not in rnaseq.arguments and pinned not in rnaseq.hidden
    assert rnaseq.static_paths == frozenset({"outdir"})
    assert len(rnaseq.hidden) == 21  # 23 minus igenomes_base (made visible) and publish_dir_mode (pinned)
    assert rnaseq.summary()["schema"] is True
    assert rnaseq.summary()["argument_count"] == 133 - 23 - 1 + 1 + 1  # visible - outdir + igenomes_base + my_extra
    assert (catalog["viaurl"].source, catalog["viaurl"].local) == ("https://github.com/nf-core/fetchngs.git", False)


def test_local_source_uses_its_nextflow_schema(tmp_path: Path) -> None:
    folder = make_pipeline_dir(tmp_path, "pipelines/fetchngs")
    shutil.copy(FETCHNGS, folder / "nextflow_schema.json")
    path = write_catalog(tmp_path, "fetchngs:\n  source: ./pipelines/fetchngs\n")
    pipeline = load_catalog(path)["fetchngs"]
    assert pipeline.schema == str(folder.resolve() / "nextflow_schema.json")
    assert "input" in pipeline.arguments and len(pipeline.hidden) == 21
    assert pipeline.summary()["argument_count"] == 10


def test_empty_catalog_is_empty(tmp_path: Path) -> None:
    assert load_catalog(write_catalog(tmp_path, "# nothing yet\n")) == {}


def _catalog_case(arguments: str = "", extra: str = "", static: str = "") -> str:
    text = "hello:\n  source: pipelines/hello\n" + extra
    if arguments:
        text += "  arguments:\n" + textwrap.indent(textwrap.dedent(arguments), "    ") + "\n"
    if static:
        text += "  static_arguments:\n" + textwrap.indent(textwrap.dedent(static), "    ") + "\n"
    return text


CATALOG_ERRORS = [
    # (id, catalog text, exact start of the message)
    ("unknown-type", _catalog_case("reads: {type: fastq}"), "pipeline 'hello', argument 'reads': unknown type 'fastq'"),
    ("missing-type", _catalog_case("reads: {label: x}"), "pipeline 'hello', argument 'reads': missing 'type'"),
    (
        "unknown-attribute",
        _catalog_case("reads: {type: path, colour: red}"),
        "pipeline 'hello', argument 'reads': unknown attribute 'colour' for type 'path'",
    ),
    (
        "attribute-of-other-type",
        _catalog_case("n: {type: number, multiline: true}"),
        "pipeline 'hello', argument 'n': unknown attribute 'multiline'",
    ),
    (
        "separator-with-default",
        _catalog_case("h: {type: separator, default: x}"),
        "pipeline 'hello', argument 'h': unknown attribute 'default' for type 'separator'",
    ),
    ("missing-source", "hello:\n  description: x\n", "pipeline 'hello': missing 'source'"),
    (
        "typo-local-source",
        "hello:\n  source: pipelines/helo\n",
        "pipeline 'hello': source 'pipelines/helo': local directory",
    ),
    ("dotted-local-source", "hello:\n  source: ./nowhere\n", "pipeline 'hello': source './nowhere': local directory"),
    (
        "no-main-nf",
        "hello:\n  source: pipelines/empty\n",
        "pipeline 'hello': source 'pipelines/empty': directory has no main.nf",
    ),
    (
        "http-source",
        "hello:\n  source: http://example.org/x.git\n",
        "pipeline 'hello': source 'http://example.org/x.git': only https",
    ),
    (
        "select-without-options",
        _catalog_case("mode: {type: value-select}"),
        "pipeline 'hello', argument 'mode': value-select needs a non-empty 'options' list",
    ),
    (
        "select-empty-options",
        _catalog_case("mode: {type: value-select, options: []}"),
        "pipeline 'hello', argument 'mode': value-select needs a non-empty 'options' list",
    ),
    (
        "duplicate-option",
        _catalog_case("mode: {type: value-select, options: [a, {value: a, label: A}]}"),
        "pipeline 'hello', argument 'mode': duplicate option 'a'",
    ),
    (
        "default-out-of-range",
        _catalog_case("n: {type: number, min: 1, max: 8, default: 9}"),
        "pipeline 'hello', argument 'n': default 9 is invalid: must be at most 8",
    ),
    (
        "default-not-integer",
        _catalog_case("n: {type: number, integer: true, default: 2.5}"),
        "pipeline 'hello', argument 'n': default 2.5 is invalid: expected an integer",
    ),
    (
        "default-wrong-type",
        _catalog_case("n: {type: number, default: '4'}"),
        "pipeline 'hello', argument 'n': default '4' is invalid: expected a number, got str",
    ),
    (
        "default-bool-wrong-type",
        _catalog_case("b: {type: boolean, default: 'no'}"),
        "pipeline 'hello', argument 'b': default 'no' is invalid: expected true or false",
    ),
    (
        "default-pattern",
        _catalog_case("t: {type: text, pattern: '^[a-z]+$', default: ABC}"),
        "pipeline 'hello', argument 't': default 'ABC' is invalid: does not match pattern ^[a-z]+$",
    ),
    (
        "default-too-long",
        _catalog_case("t: {type: text, max_length: 2, default: abc}"),
        "pipeline 'hello', argument 't': default 'abc' is invalid: longer than 2 characters",
    ),
    (
        "default-not-in-options",
        _catalog_case("mode: {type: value-select, options: [a, b], default: c}"),
        "pipeline 'hello', argument 'mode': default 'c' is invalid: 'c' is not one of the options",
    ),
    (
        "default-multiple-not-list",
        _catalog_case("mode: {type: value-select, options: [a, b], multiple: true, default: a}"),
        "pipeline 'hello', argument 'mode': default 'a' is invalid: expected a list of options",
    ),
    (
        "default-path-escapes",
        _catalog_case("p: {type: path, default: ../secret}"),
        "pipeline 'hello', argument 'p': default '../secret' is invalid: relative path '../secret' leaves",
    ),
    (
        "min-above-max",
        _catalog_case("n: {type: number, min: 5, max: 1}"),
        "pipeline 'hello', argument 'n': min 5 is greater than max 1",
    ),
    (
        "bad-regex",
        _catalog_case("t: {type: text, pattern: '('}"),
        "pipeline 'hello', argument 't': invalid pattern '('",
    ),
    (
        "bad-max-length",
        _catalog_case("t: {type: text, max_length: 0}"),
        "pipeline 'hello', argument 't': 'max_length' must be",
    ),
    (
        "bool-attribute",
        _catalog_case("t: {type: text, multiline: 'yes'}"),
        "pipeline 'hello', argument 't': 'multiline' must be true",
    ),
    (
        "nothing-selectable",
        _catalog_case("p: {type: path, selectable_files: false}"),
        "pipeline 'hello', argument 'p': selectable_files and selectable_folders are both false",
    ),
    ("argument-not-mapping", _catalog_case("p: path"), "pipeline 'hello', argument 'p': definition must be a mapping"),
    (
        "bad-argument-name",
        _catalog_case("a.b: {type: text}"),
        "pipeline 'hello', argument 'a.b': not a valid parameter name",
    ),
    (
        "dash-argument-name",
        _catalog_case("-c: {type: text}"),
        "pipeline 'hello', argument '-c': not a valid parameter name",
    ),
    (
        "argument-and-static",
        _catalog_case("outdir: {type: path}", static="outdir: results"),
        "pipeline 'hello', argument 'outdir': also listed in static_arguments",
    ),
    (
        "static-escapes",
        _catalog_case(static="outdir: ../elsewhere"),
        "pipeline 'hello', static argument 'outdir': relative path",
    ),
    (
        "static-typed-escapes",
        _catalog_case(static="x: {type: path, value: a/../../b}"),
        "pipeline 'hello', static argument 'x': relative",
    ),
    (
        "static-bad-type",
        _catalog_case(static="x: {type: number, value: 1}"),
        "pipeline 'hello', static argument 'x': unknown type 'number'",
    ),
    ("static-no-value", _catalog_case(static="x:"), "pipeline 'hello', static argument 'x': no value"),
    (
        "static-date",
        _catalog_case(static="x: 2024-01-01"),
        "pipeline 'hello', static argument 'x': datetime.date(2024, 1, 1) is not",
    ),
    (
        "static-bad-name",
        _catalog_case(static="a-b: 1"),
        "pipeline 'hello', static argument 'a-b': not a valid parameter name",
    ),
    (
        "arguments-not-mapping",
        _catalog_case(extra="  arguments: [a]\n"),
        "pipeline 'hello': 'arguments' must be a mapping",
    ),
    ("unknown-pipeline-key", _catalog_case(extra="  colour: red\n"), "pipeline 'hello': unknown key 'colour'"),
    (
        "revision-on-local",
        _catalog_case(extra="  revision: main\n"),
        "pipeline 'hello': 'revision' is only for remote sources",
    ),
    (
        "revision-float",
        "x:\n  source: nf-core/x\n  revision: 3.10\n",
        "pipeline 'x': 'revision' must be a string (quote it), not 3.1",
    ),
    (
        "bad-profile",
        _catalog_case(extra="  profiles: 'a,b'\n"),
        "pipeline 'hello': 'profiles' must be a list of profile names",
    ),
    (
        "missing-config",
        _catalog_case(extra="  config: [nope.config]\n"),
        "pipeline 'hello': config 'nope.config': file",
    ),
    ("missing-schema", _catalog_case(extra="  schema: nope.json\n"), "pipeline 'hello': schema 'nope.json': file"),
    ("invalid-schema-json", _catalog_case(extra="  schema: broken.json\n"), "pipeline 'hello': schema "),
    (
        "schema-bad-default",
        _catalog_case(extra="  schema: baddefault.json\n"),
        "pipeline 'hello': schema: argument 'n': default 99 is invalid: must be at most 10",
    ),
    (
        "description-type",
        _catalog_case(extra="  description: [x]\n"),
        "pipeline 'hello': 'description' must be a string",
    ),
    ("pipeline-not-mapping", "hello: pipelines/hello\n", "pipeline 'hello': definition must be a mapping, not str"),
    ("bad-pipeline-name", "'../x':\n  source: pipelines/hello\n", "pipeline '../x': name must match"),
    ("duplicate-pipeline", "a:\n  source: pipelines/hello\na:\n  source: pipelines/hello\n", "invalid YAML: "),
    ("duplicate-argument", _catalog_case("t: {type: text}\nt: {type: path}"), "duplicate key 't'"),
    ("bad-yaml", "hello: [unclosed\n", "invalid YAML"),
    ("top-level-list", "- hello\n", "top level must be a mapping of pipeline names, not list"),
    ("top-level-scalar", "just text\n", "top level must be a mapping of pipeline names, not str"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CATALOG_ERRORS], ids=[c[0] for c in CATALOG_ERRORS])
def test_catalog_errors(tmp_path: Path, text: str, message: str) -> None:
    make_pipeline_dir(tmp_path, "pipelines/hello")
    (tmp_path / "pipelines/empty").mkdir()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "baddefault.json").write_text(
        json.dumps({"properties": {"n": {"type": "integer", "maximum": 10, "default": 99}}})
    )
    path = write_catalog(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert message in str(info.value)
    if message.startswith("pipeline"):
        assert str(info.value).startswith(message)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")


# ---- check_arguments ---------------------------------------------------------------------------------------------


def test_valid_values_pass(demo: Pipeline, project: Path) -> None:
    values = {
        "input": "data/samples.csv",
        "reads": ["data/samples.csv", "data"],
        "glob": "reads/*_{1,2}.fq.gz",
        "ref_dir": "refs",
        "threads": 8,
        "ratio": 0.5,
        "title": "My run",
        "notes": "line 1\nline 2",
        "extra": "-resume",
        "mode": "slow",
        "levels": [1, 3],
        "verbose": True,
        "sample_name": None,
    }
    check_arguments(demo, values, make_resolver(project), complete=True)
    check_arguments(demo, {}, make_resolver(project), complete=False)  # nothing set is fine while editing
    check_arguments(demo, {"threads": 4.0}, make_resolver(project), complete=False)  # integral float is an integer


VALUE_ERRORS = [
    # (id, values, {argument: message fragment})
    ("unknown", {"nope": 1}, {"nope": "unknown argument"}),
    ("separator", {"inputs_heading": "x"}, {"inputs_heading": "a heading, not an argument"}),
    ("static", {"outdir": "/"}, {"outdir": "fixed by the pipeline catalog"}),
    ("number-as-string", {"threads": "8"}, {"threads": "expected a number, got str"}),
    ("number-as-bool", {"threads": True}, {"threads": "expected a number, got bool"}),
    ("number-nan", {"ratio": float("nan")}, {"ratio": "expected a number"}),
    ("number-inf", {"ratio": float("inf")}, {"ratio": "expected a number"}),
    ("not-integer", {"threads": 2.5}, {"threads": "expected an integer"}),
    ("below-min", {"threads": 0}, {"threads": "must be at least 1"}),
    ("above-max", {"ratio": 1.5}, {"ratio": "must be at most 1"}),
    ("bool-as-string", {"verbose": "yes"}, {"verbose": "expected true or false, got str"}),
    ("bool-as-int", {"verbose": 1}, {"verbose": "expected true or false, got int"}),
    ("text-as-number", {"extra": 5}, {"extra": "expected a string, got int"}),
    ("text-pattern", {"title": "x1"}, {"title": "does not match pattern"}),
    ("text-too-long", {"title": "a" * 21}, {"title": "longer than 20 characters"}),
    ("text-newline", {"extra": "a\nb"}, {"extra": "must be a single line"}),
    ("text-nul", {"notes": "a\0b"}, {"notes": "NUL"}),
    ("option-not-allowed", {"mode": "Thorough"}, {"mode": "'Thorough' is not one of the options"}),
    ("option-type-matters", {"levels": [True]}, {"levels": "True is not one of the options"}),
    ("option-as-string", {"levels": ["1"]}, {"levels": "'1' is not one of the options"}),
    ("multiple-not-list", {"levels": 1}, {"levels": "expected a list of options"}),
    ("single-given-list", {"mode": ["fast"]}, {"mode": "is not one of the options"}),
    ("path-escapes", {"input": "../x.csv"}, {"input": "path leaves the project folder"}),
    ("path-absolute", {"ref_dir": "/etc"}, {"ref_dir": "absolute paths are not allowed"}),
    ("path-symlink-escape", {"ref_dir": "link"}, {"ref_dir": "path leaves the project folder"}),
    ("path-not-string", {"input": ["data/samples.csv"]}, {"input": "expected a path (string), got list"}),
    ("path-pattern", {"input": "data/notes.txt"}, {"input": "does not match pattern"}),
    ("path-control-char", {"ref_dir": "a\nb"}, {"ref_dir": "control characters"}),
    ("paths-not-list", {"reads": "data"}, {"reads": "expected a list of paths, got str"}),
    ("paths-comma", {"reads": ["a,b"]}, {"reads": "must not contain ','"}),
    ("paths-escape", {"reads": ["data", "../../x"]}, {"reads": "'../../x': path leaves"}),
    ("glob-dotdot", {"glob": "data/{..,x}/*"}, {"glob": "glob must not contain '..'"}),
    ("glob-escape", {"glob": "../*.fq"}, {"glob": "glob must not contain '..'"}),
]


@pytest.mark.parametrize(("values", "details"), [c[1:] for c in VALUE_ERRORS], ids=[c[0] for c in VALUE_ERRORS])
def test_value_errors(demo: Pipeline, project: Path, tmp_path: Path, values: dict, details: dict) -> None:
    (project / "link").symlink_to(tmp_path)
    with pytest.raises(ArgumentsError) as info:
        check_arguments(demo, values, make_resolver(project), complete=False)
    assert info.value.status == 422
    assert set(info.value.details) == set(details)
    for name, fragment in details.items():
        assert fragment in info.value.details[name]
    assert info.value.message.startswith("invalid workflow arguments: ")


def test_all_errors_reported_at_once(demo: Pipeline, project: Path) -> None:
    with pytest.raises(ArgumentsError) as info:
        check_arguments(
            demo, {"threads": 100, "mode": "x", "nope": 1, "input": "../a.csv"}, make_resolver(project), complete=False
        )
    assert set(info.value.details) == {"threads", "mode", "nope", "input"}
    assert info.value.message == "invalid workflow arguments: threads, mode, nope, input"


def test_values_must_be_an_object(demo: Pipeline, project: Path) -> None:
    with pytest.raises(ArgumentsError) as info:
        check_arguments(demo, ["threads"], make_resolver(project), complete=False)  # type: ignore[arg-type]
    assert info.value.details == {}


def test_hidden_arguments_are_not_accepted(tmp_path: Path, project: Path) -> None:
    shutil.copy(RNASEQ, tmp_path / "rnaseq.json")
    path = write_catalog(tmp_path, "rnaseq:\n  source: nf-core/rnaseq\n  schema: rnaseq.json\n")
    rnaseq = load_catalog(path)["rnaseq"]
    with pytest.raises(ArgumentsError) as info:
        check_arguments(rnaseq, {"custom_config_base": "https://evil.example"}, make_resolver(project), complete=False)
    assert info.value.details == {"custom_config_base": "fixed by the pipeline catalog; cannot be set"}


COMPLETE_ERRORS = [
    ("required-missing", {"ref_dir": "refs"}, {"input": "required"}),
    ("required-empty", {"input": "", "ref_dir": "refs"}, {"input": "required"}),
    ("must-exist", {"input": "data/missing.csv", "ref_dir": "refs"}, {"input": "'data/missing.csv' does not exist"}),
    (
        "file-for-folder",
        {"input": "data/samples.csv", "ref_dir": "data/samples.csv"},
        {"ref_dir": "is a file, a folder"},
    ),
    ("folder-for-file", {"input": "data.csv", "ref_dir": "refs"}, {"input": "is a folder, a file is expected"}),
    ("paths-kind-checked", {"input": "data/samples.csv", "ref_dir": "refs", "reads": ["data.csv"]}, {}),
    ("optional-need-not-exist", {"input": "data/samples.csv", "ref_dir": "refs", "reads": ["data", "x.csv"]}, {}),
]


@pytest.mark.parametrize(("values", "details"), [c[1:] for c in COMPLETE_ERRORS], ids=[c[0] for c in COMPLETE_ERRORS])
def test_completeness(demo: Pipeline, project: Path, values: dict, details: dict) -> None:
    (project / "data.csv").mkdir()
    resolve = make_resolver(project)
    check_arguments(demo, values, resolve, complete=False)  # editing never checks completeness
    if not details:
        check_arguments(demo, values, resolve, complete=True)
        return
    with pytest.raises(ArgumentsError) as info:
        check_arguments(demo, values, resolve, complete=True)
    assert set(info.value.details) == set(details)
    for name, fragment in details.items():
        assert fragment in info.value.details[name]


def test_required_with_default_counts_as_present(demo: Pipeline, project: Path) -> None:
    assert demo.arguments["sample_name"]["required"] and demo.arguments["sample_name"]["default"] == "sample"
    check_arguments(demo, {"input": "data/samples.csv", "ref_dir": "refs"}, make_resolver(project), complete=True)


def test_pinned_required_schema_parameter_is_not_required(tmp_path: Path, project: Path) -> None:
    shutil.copy(FETCHNGS, tmp_path / "fetchngs.json")
    path = write_catalog(
        tmp_path, "f:\n  source: nf-core/fetchngs\n  schema: fetchngs.json\n  static_arguments: {outdir: results}\n"
    )
    pipeline = load_catalog(path)["f"]
    resolve = make_resolver(project)
    with pytest.raises(ArgumentsError) as info:
        check_arguments(pipeline, {}, resolve, complete=True)
    assert info.value.details == {"input": "required"}  # outdir is pinned by the static argument
    (project / "ids.csv").write_text("SRR1\n")
    check_arguments(pipeline, {"input": "ids.csv", "download_method": "sratools"}, resolve, complete=True)


# ---- build_params ------------------------------------------------------------------------------------------------


def test_build_params(demo: Pipeline, project: Path) -> None:
    values = {
        "input": "data/samples.csv",
        "reads": ["data/samples.csv", "data"],
        "glob": "reads/*_{1,2}.fq.gz",
        "threads": 8,
        "ratio": 0.25,
        "extra": "-resume",
        "title": "",
        "notes": "--outdir=/ -c evil.config",
        "levels": [1, 3],
        "verbose": True,
        "ref_dir": None,
    }
    params = build_params(demo, values, project)
    assert params == {
        "input": f"{project}/data/samples.csv",
        "reads": f"{project}/data/samples.csv,{project}/data",
        "glob": f"{project}/reads/*_{{1,2}}.fq.gz",
        "threads": 8,
        "ratio": 0.25,
        "notes": "--outdir=/ -c evil.config",
        "extra": "-resume",
        "mode": "fast",
        "levels": "1,3",
        "verbose": True,
        "sample_name": "sample",
        "outdir": f"{project}/results",
        "genome": "/srv/refs/genome.fa",
        "cache_dir": f"{project}/cache",
        "max_cpus": 8,
        "tags": ["a", "b"],
    }
    assert type(params["threads"]) is int and type(params["ratio"]) is float and params["verbose"] is True
    assert "inputs_heading" not in params and "title" not in params and "ref_dir" not in params


def test_build_params_defaults(demo: Pipeline, project: Path) -> None:
    params = build_params(demo, {"threads": 2.0, "verbose": False}, project)
    assert params["threads"] == 2 and type(params["threads"]) is int
    assert params["verbose"] is False  # False is a value, not "unset"
    assert params["glob"] == f"{project}/reads/*.fq"  # catalog default, placed in the project
    assert params["mode"] == "fast"


def test_build_params_leaves_schema_defaults_to_the_pipeline(tmp_path: Path, project: Path) -> None:
    shutil.copy(RNASEQ, tmp_path / "rnaseq.json")
    path = write_catalog(
        tmp_path,
        """\
        rnaseq:
          source: nf-core/rnaseq
          schema: rnaseq.json
          arguments:
            trimmer: {type: value-select, options: [trimgalore, fastp], default: fastp}
          static_arguments:
            outdir: results
            multiqc_title: "${launchDir}"
        """,
    )
    rnaseq = load_catalog(path)["rnaseq"]
    params = build_params(rnaseq, {"input": "data/samples.csv", "stranded_threshold": 0.9, "skip_qc": True}, project)
    # Schema defaults (ribo_database_manifest: ${projectDir}/...) stay with Nextflow; explicit ones are sent.
    assert params == {
        "input": f"{project}/data/samples.csv",
        "trimmer": "fastp",
        "stranded_threshold": 0.9,
        "skip_qc": True,
        "outdir": f"{project}/results",
        "multiqc_title": "${launchDir}",
    }


def test_build_params_refuses_escapes_on_its_own(demo: Pipeline, project: Path) -> None:
    for values in ({"input": "../../etc/x.csv"}, {"reads": ["data", "../.."]}, {"glob": "a/../../*"}, {"nope": 1}):
        with pytest.raises(ArgumentsError):
            build_params(demo, values, project)
    # A leading slash means the project root, never the server's root.
    assert build_params(demo, {"input": "/data/samples.csv"}, project)["input"] == f"{project}/data/samples.csv"
    with pytest.raises(ValueError, match="absolute"):
        build_params(demo, {}, Path("relative/project"))


def test_params_json_neutralises_placeholders(demo: Pipeline, project: Path, tmp_path: Path) -> None:
    values = {"extra": "${launchDir} and ${projectDir}/x $HOME ${ 1}", "notes": "multi\n${baseDir}"}
    params = build_params(demo, values, project)
    assert params["extra"] == values["extra"]  # build_params keeps the user's literal
    text = params_json(params)
    assert "${" not in text and "$" not in text
    assert NEXTFLOW_PARAMS_VAR.search(text) is None  # nothing for Nextflow to substitute
    assert json.loads(text) == params  # any JSON parser (Groovy's JsonSlurper too) decodes \u0024 back to $
    target = tmp_path / "params.json"
    target.write_text(text, encoding="utf-8")
    assert json.loads(target.read_text(encoding="utf-8"))["extra"] == values["extra"]
    # Without the escaping the placeholder would be there for Nextflow to rewrite.
    assert NEXTFLOW_PARAMS_VAR.search(json.dumps(params))


def test_params_json_keeps_types_and_unicode() -> None:
    params = {"n": 3, "x": 0.5, "b": False, "s": "Grüße", "l": ["a", "b"]}
    text = params_json(params)
    assert json.loads(text) == params and text.isascii()
    with pytest.raises(ValueError):
        params_json({"x": float("nan")})


def test_documented_example_loads(tmp_path: Path, project: Path) -> None:
    """The example in the module docstring is a valid catalog (so the documentation stays true)."""
    import nfhub_catalog

    doc = nfhub_catalog.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    make_pipeline_dir(tmp_path, "pipelines/hello")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/site.config").write_text("")
    (tmp_path / "schemas").mkdir()
    shutil.copy(RNASEQ, tmp_path / "schemas/rnaseq.json")
    catalog = load_catalog(write_catalog(tmp_path, block))
    assert set(catalog) == {"hello", "rnaseq"}
    hello = catalog["hello"]
    assert list(hello.arguments) == ["inputs", "input", "greeting", "times"]
    (project / "names.txt").write_text("World\n")
    check_arguments(hello, {"input": "names.txt"}, make_resolver(project), complete=True)
    assert build_params(hello, {"input": "names.txt"}, project) == {
        "input": f"{project}/names.txt",
        "greeting": "Hello",
        "times": 1,
        "outdir": f"{project}/results",
    }
    assert catalog["rnaseq"].static_arguments == {"outdir": "results", "genome": "GRCh38"}


def test_catalog_file_changes_are_picked_up_without_a_restart(catalog: Path, live_settings: dict, config_file: Path,
                                                              make_user, monkeypatch, caplog) -> None:
    """An admin edits nextflow_projects.yaml: a valid catalog replaces the one in use; an invalid one is refused
    with the startup's message, and the previous catalog keeps serving."""
    import yaml

    import nfhub
    from conftest import LiveServer, wait_for

    monkeypatch.setattr(nfhub, "CATALOG_POLL", 0.05)
    config_file.write_text(yaml.safe_dump(live_settings))
    with LiveServer(nfhub_config.load_config(config_file, environ={})) as server:
        token = {"x-access-token": make_user("ada")}
        names = lambda: server.http.get("/api/nextflow-projects", headers=token).json()["nextflow_projects"]  # noqa: E731
        before = names()
        assert "extra" not in before
        entries = yaml.safe_load(catalog.read_text())
        entries["extra"] = {"description": "added while running", "source": entries["hello"]["source"]}
        catalog.write_text(yaml.safe_dump(entries))
        wait_for(lambda: "extra" in names(), 10, what="the new pipeline")
        r = server.http.get("/api/nextflow-projects/extra", headers=token)
        assert r.status_code == 200 and r.json()["nextflow_project"]["description"] == "added while running"
        # a broken edit: refused, the catalog in use stays
        entries["broken"] = {"description": "x", "source": entries["hello"]["source"],
                             "arguments": {"n": {"type": "no-such-type"}}}
        catalog.write_text(yaml.safe_dump(entries))
        wait_for(lambda: any("not reloaded" in r.getMessage() and "broken" in r.getMessage()
                             for r in caplog.records), 10, what="the refusal in the log")
        assert sorted(names()) == sorted([*before, "extra"])
        # removed again: gone from the list, and a project set to it cannot be scheduled
        del entries["broken"], entries["extra"]
        catalog.write_text(yaml.safe_dump(entries))
        wait_for(lambda: "extra" not in names(), 10, what="the pipeline to go")
        assert server.http.get("/api/nextflow-projects/extra", headers=token).status_code == 404
