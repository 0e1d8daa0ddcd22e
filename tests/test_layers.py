"""The import graph of swirl_jax/ against the layer order written in docs/design.md."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "swirl_jax")


def documented_layers() -> dict[str, int]:
  """{'records': 1, 'data/': 2, ...} from the table under '## Layers' in docs/design.md."""
  with open(os.path.join(REPO, "docs", "design.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
  layers = {}
  for line in section.splitlines():
    match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
    if match:
      for name in re.findall(r"`([^`]+)`", match.group(2)):
        layers[name] = int(match.group(1))
  return layers


def module_files() -> dict[str, str]:
  """{'swirl_jax.data.filters': path, ...} for every module of the package but its __init__."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


def layer_of(module: str, layers: dict[str, int]) -> int | None:
  parts = module.split(".")[1:]
  if not parts:
    return None  # swirl_jax/__init__.py: the lazy public API, above everything
  if parts[0] in layers and len(parts) == 1:
    return layers[parts[0]]
  return layers.get(parts[0] + "/")


def imports(path: str, module: str) -> list[tuple[str, int, bool]]:
  """(imported swirl_jax module, line, inside a function?) for every import in the file."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
  top = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        stem = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(stem + ([node.module] if node.module else []))
      names = [f"{base}.{alias.name}" for alias in node.names] if base else []
      names = names + [base]
    elif isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    for name in names:
      if name.startswith("swirl_jax"):
        found.append((name, node.lineno, id(node) not in top))
  return found


def test_every_module_has_a_layer_and_every_listed_module_exists():
  layers = documented_layers()
  assert layers, "docs/design.md has no layer table"
  modules = module_files()
  unplaced = [m for m in modules if m != "swirl_jax" and layer_of(m, layers) is None]
  assert not unplaced, f"modules without a layer in docs/design.md: {unplaced}"
  for name in layers:
    path = os.path.join(PACKAGE, name.rstrip("/"))
    assert os.path.isdir(path) if name.endswith("/") else os.path.isfile(path + ".py"), (
        f"docs/design.md lists {name!r}, which is not in swirl_jax/")


def test_no_module_imports_a_layer_above_it_or_inside_a_function():
  layers = documented_layers()
  modules = module_files()
  upward, local = [], []
  for module, path in modules.items():
    own = layer_of(module, layers)
    for name, line, in_function in imports(path, module):
      target = name
      while target not in modules and "." in target:  # `from pkg import name` names a symbol
        target = target.rsplit(".", 1)[0]
      if in_function:
        local.append(f"{os.path.relpath(path, REPO)}:{line} imports {name}")
      their = layer_of(target, layers)
      if own is not None and their is not None and their > own:
        upward.append(f"{os.path.relpath(path, REPO)}:{line} (layer {own}) imports {target} (layer {their})")
  assert not upward, "imports of a higher layer:\n" + "\n".join(upward)
  assert not local, "swirl_jax imports inside functions (put them at the top):\n" + "\n".join(local)


def test_the_checker_sees_an_upward_import(tmp_path):
  """The graph walk finds a module-level and a function-local import (so the checks above can fail)."""
  path = tmp_path / "probe.py"
  path.write_text("from swirl_jax.training import trainer\n\ndef f():\n  from swirl_jax import main\n")
  found = imports(str(path), "swirl_jax.records")
  assert ("swirl_jax.training.trainer", 1, False) in found
  assert ("swirl_jax.main", 4, True) in found
  assert layer_of("swirl_jax.training.trainer", documented_layers()) > layer_of("swirl_jax.records", documented_layers())
