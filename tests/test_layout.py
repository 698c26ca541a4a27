"""The README's Layout block is the map of the tree: every module named, nothing named that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("operator/pullhealth", "dev/pullhealth_dev")
PROSE_FOLDERS = {"operator/pullhealth/probes/"}  # its modules are named in one sentence


def _layout_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    block = section.split("```", 2)[1]
    return block.splitlines()[1:]


def _named_paths() -> tuple[set[str], str]:
    """Paths the block names (folders end with '/'), resolved by indentation."""
    named: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in _layout_block():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        indent, entry = len(match.group(1)), match.group(2)
        if not entry.endswith(("/", ".py")):
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (stack[-1][1] if stack else "") + entry
        named.add(path)
        if entry.endswith("/"):
            stack.append((indent, path))
    return named, "\n".join(_layout_block())


def _modules() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            found.add(path.relative_to(ROOT).as_posix())
    return found


def test_every_module_is_on_the_map() -> None:
    named, block = _named_paths()
    missing = []
    for module in sorted(_modules()):
        folder = module.rsplit("/", 1)[0] + "/"
        if module in named:
            continue
        # Folders whose modules are listed in prose (probes/) name each module by its stem.
        if folder in PROSE_FOLDERS and re.search(rf"\b{Path(module).stem}\b", block):
            continue
        missing.append(module)
    assert not missing, f"README Layout does not name: {missing}"


def test_nothing_on_the_map_is_gone() -> None:
    named, _ = _named_paths()
    gone = [path for path in sorted(named) if not (ROOT / path.rstrip("/")).exists()]
    assert not gone, f"README Layout names what does not exist: {gone}"


def test_every_package_folder_is_on_the_map() -> None:
    named, _ = _named_paths()
    folders = {
        p.relative_to(ROOT).as_posix() + "/"
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_dir() and p.name != "__pycache__" and (p / "__init__.py").exists()
    }
    assert folders <= named, f"README Layout lacks folders: {sorted(folders - named)}"


def test_test_modules_have_unique_names() -> None:
    """pytest runs tests/ and e2e/ together (rootdir-relative, no packages): two modules of
    one basename would stop the whole collection."""
    names = [p.name for d in ("tests", "e2e") for p in (ROOT / d).glob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
