"""Dependencies run one way: stages import the plumbing and their own parts, never another stage; the plumbing
never imports a stage or eval/; eval/ renders and studies what stages wrote, and imports no stage either."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

from pipeline.stages import STAGES

STAGE_MODULES = {spec.module for spec in STAGES.values()}
# Drivers run stages by design: the chain runner, the command line, and the W2S sweep over model pairs.
DRIVERS = {"pipeline.__main__", "pipeline.chain", "pipeline.w2s.sweep"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function ("from a import b" counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_modules() -> dict[str, set[str]]:
    files = [*REPO.glob("pipeline/**/*.py"), *REPO.glob("eval/**/*.py")]
    return {module_name(path): imported_modules(path) for path in files}


def test_the_layering_rules_see_every_stage_and_its_imports():
    modules = project_modules()
    assert STAGE_MODULES <= set(modules)
    assert "pipeline.finetuning" in modules["pipeline.sft"]


def test_no_stage_imports_another_stage():
    offences = {
        module: sorted((imports & STAGE_MODULES) - {module})
        for module, imports in project_modules().items()
        if module in STAGE_MODULES
    }
    assert not {module: found for module, found in offences.items() if found}


def test_plumbing_and_eval_import_no_stage_and_plumbing_imports_no_eval():
    offences = {}
    for module, imports in project_modules().items():
        if module in STAGE_MODULES or module in DRIVERS:
            continue
        found = imports & STAGE_MODULES
        if module.startswith("pipeline"):
            found |= {name for name in imports if name == "eval" or name.startswith("eval.")}
        if found:
            offences[module] = sorted(found)
    assert not offences
