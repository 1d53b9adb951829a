"""The code's layout rules, checked on the source: imports run downward, functions stay short, and the
concepts with one owner (checkpoint reading, the model folder's metadata file) are not spelt elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nnsdm"
# top (may import everything below it) to bottom (imports nothing above it); see the README's Development
LAYERS = ["cli", "scaleout", "demo", "report", "inference", "evaluation", "export", "training", "trainer",
          "phantom", "postprocessing", "model_folder", "planning", "datasets", "checkpoints", "model_json", "locking",
          "device", "network", "sdm", "orientation", "labels", "workspace", "fileio", "errors"]
# siblings that must not import each other either way: prediction needs no training code
SIDEWAYS = {("inference", "training"), ("inference", "trainer")}
MAX_FUNCTION_LINES = 80


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, path.relative_to(SRC).with_suffix("").parts, ast.parse(path.read_text(encoding="utf-8"))


def test_imports_run_downward_and_inference_takes_nothing_from_training():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path, parts, tree in _modules():
        me = parts[0]
        if me not in rank:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnsdm."):
                other = node.module.split(".")[1]
                if other != me and other in rank and rank[other] < rank[me] or (me, other) in SIDEWAYS:
                    upward.append(f"{path.relative_to(SRC)}:{node.lineno} imports {node.module}")
    assert not upward, upward


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, _, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "build_parser"
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_checkpoints_are_read_in_one_place_and_the_metadata_file_is_named_once():
    loads, names = [], []
    for path, parts, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", "") == "torch" \
                    and parts != ("checkpoints",):
                loads.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value == "nnsdm.json" and parts != ("model_folder",):
                names.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not loads, f"torch.load outside nnsdm.checkpoints.read_checkpoint: {loads}"
    assert not names, f'"nnsdm.json" outside nnsdm.model_folder.METADATA_FILE: {names}'


def test_benchmarks_import_what_nnsdm_has():
    """The benchmarks are not run by the tests; their imports of nnsdm are checked here."""
    import importlib

    missing = []
    for path in sorted((SRC.parents[1] / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nnsdm":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}:{node.lineno} {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)]
    assert not missing, missing
