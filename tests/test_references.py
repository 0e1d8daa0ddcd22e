"""Every reference in the code and the docs points at a file of this repository."""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted({p for pattern in ("README.md", "docs/*.md", "swirl_jax/**/*.py", "gin/**/*.gin", "experiments/**/*",
                                    "benchmarks/*.py", "launch/*", "tests/*.py", "Makefile", "setup.py")
                  for p in glob.glob(os.path.join(REPO, pattern), recursive=True)
                  if os.path.isfile(p) and p.endswith((".md", ".py", ".gin", ".sh", "Makefile"))})
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATH = re.compile(r"(?<![\w/.])((?:docs|swirl_jax|gin|experiments|benchmarks|launch|tests|requirements)/"
                   r"[\w./-]*\.(?:md|py|gin|txt|sh|png|json))\b")
# Documents that live outside this repository, or nowhere.
_OUTSIDE = re.compile(r"DESIGN\.md|PAPER\.md|\.\./shared|\b[Ii]ssue \d+\b")


def references(path: str) -> list[tuple[int, str]]:
  """(line, target) of every link and repository path named in a file."""
  found = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      for link in _LINK.findall(line) if path.endswith(".md") else ():
        if not re.match(r"[a-z]+:", link) and not link.startswith("#"):
          target = os.path.normpath(os.path.join(os.path.dirname(path), link.split("#")[0]))
          found.append((number, os.path.relpath(target, REPO)))
      found += [(number, p.rstrip(".")) for p in _PATH.findall(line)]
  return found


def test_every_named_file_exists():
  missing = [f"{os.path.relpath(path, REPO)}:{line} -> {target}" for path in SOURCES if path != os.path.abspath(__file__)
             for line, target in references(path) if not os.path.exists(os.path.join(REPO, target))]
  assert not missing, "references to files that are not in the repository:\n" + "\n".join(missing)


def test_nothing_refers_to_documents_outside_the_repository():
  outside = []
  for path in SOURCES:
    if path == os.path.abspath(__file__):
      continue
    with open(path, encoding="utf-8") as f:
      outside += [f"{os.path.relpath(path, REPO)}:{n}: {m.group(0)}" for n, line in enumerate(f, 1)
                  for m in [_OUTSIDE.search(line)] if m]
  assert not outside, "references outside the repository:\n" + "\n".join(outside)


def test_the_scan_sees_links_and_paths(tmp_path):
  doc = tmp_path / "doc.md"
  doc.write_text("See [the design](design.md#layers) and `swirl_jax/records.py`.\n")
  assert (1, os.path.relpath(str(tmp_path / "design.md"), REPO)) in references(str(doc))
  assert (1, "swirl_jax/records.py") in references(str(doc))
