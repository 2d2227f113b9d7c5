"""The import rules that keep the layers of the package apart, read from the source (every import, at the
top of a module or inside a function):

    storage      where artifacts live: local paths and object-store URIs through pyarrow (no torch, Ray, DeepSpeed)
    evaluation   metrics and the predictions format: numpy only (no torch, no Ray, no DeepSpeed)
    data         records, readers, partial labels, simulator, demo world, feature store
    method       models, losses, batching, text encoder: plain PyTorch, no Ray, no DeepSpeed
    config       the run configuration (may build the method's settings)
    console      what the terminal shows
    stages       encode, cluster, implicit, pseudo-label, explicit, report: Ray Data, Ray Train, DeepSpeed
    ops          the pipeline, search, ablation, comparison, job submission
    cli          the command

A module may import its own layer and the layers listed above it here, except that data and method, side
by side, do not import each other. Nothing imports a layer below it in this list ("upward").
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "cu_scale"
RANKS = {"storage": 0, "evaluation": 1, "data": 2, "method": 2, "config": 3, "console": 4, "stages": 5, "ops": 6, "cli": 7}
FORBIDDEN = {"storage": ("ray", "deepspeed", "torch"), "evaluation": ("ray", "deepspeed", "torch"), "method": ("ray", "deepspeed")}


def _layer(module: str) -> str | None:
    """`cu_scale.stages.explicit` → stages; `cu_scale.config` → config; None outside the package."""
    parts = module.split(".")
    if parts[0] != "cu_scale" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: pathlib.Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative imports resolved."""
    found = []
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "cu_scale":  # `from cu_scale import config`: the names are the modules
                found += [(node.lineno, f"cu_scale.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def violations(package: pathlib.Path) -> list[str]:
    """Every import in `package` (a directory named cu_scale) that breaks a rule, as 'file:line: why'."""
    broken = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        layer = _layer(module)
        if layer not in RANKS:
            continue
        for line, imported in _imports(path, module):
            top = imported.split(".")[0]
            where = f"{path.relative_to(package.parent)}:{line}"
            if top in FORBIDDEN.get(layer, ()):
                broken.append(f"{where}: {layer} imports {imported}")
                continue
            target = _layer(imported)
            if target is None or target == layer or target not in RANKS:
                continue
            if RANKS[target] > RANKS[layer]:
                broken.append(f"{where}: {layer} imports {imported}, a layer above it")
            elif RANKS[target] == RANKS[layer]:
                broken.append(f"{where}: {layer} imports {imported}, a layer beside it")
    return broken


def test_the_package_keeps_its_import_rules():
    broken = violations(PACKAGE)
    assert not broken, "imports that break the layers:\n" + "\n".join(broken)


def test_every_module_of_the_package_sits_in_a_layer():
    stray = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _layer(".".join(("cu_scale", *p.relative_to(PACKAGE).with_suffix("").parts))) not in RANKS and p.name != "__init__.py"]
    assert not stray, f"modules outside every layer (add them to one, or a layer to RANKS): {stray}"


def test_a_broken_rule_is_found_and_named(tmp_path):
    package = tmp_path / "cu_scale"
    for folder in ("data", "method", "evaluation", "stages"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "method" / "losses.py").write_text("import torch\n\ndef f():\n    import ray\n")
    (package / "data" / "store.py").write_text("from cu_scale.stages.encode import EMBEDDINGS_DIR\nfrom cu_scale.method import losses\n")
    (package / "evaluation" / "metrics.py").write_text("import numpy\nfrom ..data.store import x\nimport torch\n")
    (package / "stages" / "encode.py").write_text("from cu_scale.data.store import FeatureStore\nfrom cu_scale.method.losses import f\nimport ray\n")
    assert violations(package) == [
        "cu_scale/data/store.py:1: data imports cu_scale.stages.encode, a layer above it",
        "cu_scale/data/store.py:2: data imports cu_scale.method, a layer beside it",
        "cu_scale/evaluation/metrics.py:2: evaluation imports cu_scale.data.store, a layer above it",
        "cu_scale/evaluation/metrics.py:3: evaluation imports torch",
        "cu_scale/method/losses.py:4: method imports ray",
    ]
