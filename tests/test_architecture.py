"""The package's structure (docs/architecture.md): import contracts, no cycles, leaves, sizes."""

import ast
import configparser
import os
import pathlib
import re
import subprocess
import sys

import grimp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "densecap_jax"
MAX_LINES = 500
# The `python -m` names that are thin aliases of a command module.
ALIASES = {
    "densecap_jax.predict": "densecap_jax.commands.predict",
    "densecap_jax.extract_features": "densecap_jax.commands.extract_features",
    "densecap_jax.serve": "densecap_jax.commands.serve",
    "densecap_jax.index": "densecap_jax.commands.index",
    "densecap_jax.search.__main__": "densecap_jax.commands.search",
    "densecap_jax.score": "densecap_jax.commands.score",
    "densecap_jax.evaluation.__main__": "densecap_jax.commands.evaluate",
    "densecap_jax.train.__main__": "densecap_jax.commands.train",
    "densecap_jax.train.pretrain": "densecap_jax.commands.pretrain",
    "densecap_jax.convert.__main__": "densecap_jax.commands.convert",
    "densecap_jax.data.preprocess": "densecap_jax.commands.preprocess",
    "densecap_jax.data.synthetic": "densecap_jax.commands.synthetic",
    "densecap_jax.fetch": "densecap_jax.commands.fetch",
}


def _modules():
  """``{module name: path}`` of every module of the package."""
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imported(node, module, is_package):
  """The densecap_jax modules an import statement names (``from X import y`` -> X.y or X)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = module.split(".") if is_package else module.split(".")[:-1]
  if node.level:
    base = base[:len(base) - (node.level - 1)]
    prefix = ".".join(base + ([node.module] if node.module else []))
  else:
    prefix = node.module
  return [f"{prefix}.{a.name}" for a in node.names] + [prefix]


def test_lint_imports_keeps_every_contract():
  done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lint-imports"),
                         "--no-cache"], cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  assert "BROKEN" not in done.stdout
  assert re.search(r"Contracts: 2 kept, 0 broken", done.stdout), done.stdout[-2000:]


def test_contracts_name_every_layer_package_and_every_command():
  """A new package or command must be placed in the contracts, not left outside them."""
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  layers = config["importlinter:contract:layers"]["layers"]
  named = set(re.findall(r"[a-z_]+", layers))
  top_level = {p.stem if p.suffix else p.name for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__")
               or (p.is_dir() and (p / "__init__.py").exists())}
  aliases = {name.split(".")[1] for name in ALIASES if name.count(".") == 1}
  data_only = {"bundled", "static", "viewer"}  # package data: HTML, JS, the model's files
  assert top_level - aliases - data_only <= named, sorted(top_level - aliases - data_only - named)
  commands = set(config["importlinter:contract:commands"]["modules"].split())
  listed = {f"densecap_jax.commands.{p.stem}" for p in (PACKAGE / "commands").glob("*.py")
            if p.stem not in ("__init__", "flags")}
  assert commands == listed


def test_no_import_cycles():
  graph = grimp.build_graph("densecap_jax")
  modules = sorted(graph.modules)
  edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
  # Tarjan's strongly connected components: any with more than one module is a cycle.
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
  for m in modules:
    if m not in index:
      visit(m)
  assert not cycles, cycles


def test_no_package_module_is_imported_inside_a_function():
  found = []
  for name, path in _modules().items():
    tree = ast.parse(path.read_text(), str(path))
    for function in ast.walk(tree):
      if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(function):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            m.startswith("densecap_jax") for m in _imported(node, name, path.name == "__init__.py")):
          found.append(f"{path.relative_to(ROOT)}:{node.lineno} in {function.name}()")
  assert not found, found


def test_commands_are_leaves_imported_only_by_their_aliases():
  modules = _modules()
  for name, path in modules.items():
    if name.startswith("densecap_jax.commands"):
      continue
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        commands = {m for m in _imported(node, name, path.name == "__init__.py")
                    if m.startswith("densecap_jax.commands.") and m in modules}
        if commands:
          assert name in ALIASES and commands == {ALIASES[name]}, (name, commands)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_python_m_aliases_are_thin(alias):
  path = _modules()[alias]
  tree = ast.parse(path.read_text())
  imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
  named = {m for n in imports for m in _imported(n, alias, False)}
  assert ALIASES[alias] in named
  assert all(m in ("sys", "densecap_jax.commands") or m.startswith(ALIASES[alias])
             for m in named), named
  assert len(path.read_text().splitlines()) <= 15


def test_modules_stay_under_the_size_limit():
  long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, long


def test_no_two_modules_share_a_name_for_different_things():
  """Module names are unique across the package, but for a command and its alias."""
  seen = {}
  for name in _modules():
    leaf = name.rsplit(".", 1)[-1]
    if name in ALIASES or name.startswith("densecap_jax.commands."):
      continue
    if name.startswith("densecap_jax.train.configs"):
      continue  # the training recipes, named as --config takes them (tiny, vgg16)
    seen.setdefault(leaf, []).append(name)
  twins = {leaf: names for leaf, names in seen.items() if len(names) > 1}
  assert not twins, twins


def test_readme_table_lists_every_command():
  """One README table names each command's python -m name, console script and module."""
  readme = (ROOT / "README.md").read_text()
  table = [line for line in readme.splitlines() if line.startswith("| ") and "`densecap-" in line]
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  scripts = dict(line.split(" = ") for line in
                 config["options.entry_points"]["console_scripts"].strip().splitlines())
  assert len(table) == len(scripts) == len(ALIASES)
  for script, target in scripts.items():
    module = target.split(":")[0]
    (row,) = [line for line in table if f"`{script}`" in line]
    (alias,) = [a for a, command in ALIASES.items() if command == module]
    assert f"`{alias.removesuffix('.__main__')}`" in row, (script, row)
