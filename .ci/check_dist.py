"""Check what `python -m build` made before it is published: python .ci/check_dist.py DIST_DIR

The wheel holds the package and its dist-info only (no tests, benchmarks or notebooks), the PEP
561 marker, the LICENSE under dist-info/licenses, the SPDX licence, the version of
nudge_rag/__init__.py, numpy as its one hard dependency and the `nudge-rag` command; the sdist
holds the LICENSE and pyproject.toml. Prints one line per problem and exits 1 if there is any.
Standard library only (tests/test_packaging.py runs it on a wheel it builds).
"""

from __future__ import annotations

import ast
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def source_version() -> str:
    """``__version__`` of nudge_rag/__init__.py, read without importing it."""
    tree = ast.parse((REPO / "nudge_rag" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    msg = "nudge_rag/__init__.py sets no __version__"
    raise SystemExit(msg)


def check_wheel(path: Path, version: str) -> list[str]:
    problems: list[str] = []
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        info = f"nudge_rag-{version}.dist-info"
        tops = {n.split("/", 1)[0] for n in names}
        if tops != {"nudge_rag", info}:
            problems.append(
                f"{path.name}: top-level entries {sorted(tops)}, expected nudge_rag and {info}"
            )
        for must in ("nudge_rag/__init__.py", "nudge_rag/py.typed", f"{info}/licenses/LICENSE"):
            if must not in names:
                problems.append(f"{path.name}: {must} is missing")
        for n in names:
            parts = n.split("/")
            if {"tests", "benchmarks", "notebooks", "__pycache__"} & set(parts) or n.endswith(
                ".pyc"
            ):
                problems.append(f"{path.name}: {n} should not ship")
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode("utf-8"))
        if meta["Version"] != version:
            problems.append(
                f"{path.name}: version {meta['Version']}, nudge_rag.__version__ {version}"
            )
        if meta["License-Expression"] != "MIT":
            problems.append(
                f"{path.name}: License-Expression {meta['License-Expression']!r}, expected 'MIT'"
            )
        if any(c.startswith("License ::") for c in meta.get_all("Classifier") or []):
            problems.append(
                f"{path.name}: a License classifier beside License-Expression (PEP 639)"
            )
        hard = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
        if [r.split(">")[0].split("=")[0].strip() for r in hard] != ["numpy"]:
            problems.append(f"{path.name}: hard dependencies {hard}, expected numpy only")
        entry = whl.read(f"{info}/entry_points.txt").decode("utf-8")
        if "nudge-rag = nudge_rag.cli:main" not in entry:
            problems.append(f"{path.name}: no nudge-rag console script")
        licence = whl.read(f"{info}/licenses/LICENSE").decode("utf-8")
        if "MIT License" not in licence or "the nudge_rag authors" not in licence:
            problems.append(f"{path.name}: LICENSE is not the MIT licence of the nudge_rag authors")
    return problems


def check_sdist(path: Path, version: str) -> list[str]:
    root = f"nudge_rag-{version}"
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    return [
        f"{path.name}: {root}/{must} is missing"
        for must in ("LICENSE", "pyproject.toml", "README.md", "nudge_rag/py.typed")
        if f"{root}/{must}" not in names
    ]


def main(argv: list[str]) -> int:
    dist = Path(argv[1] if len(argv) > 1 else REPO / "dist")
    version = source_version()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    problems: list[str] = []
    if len(wheels) != 1:
        problems.append(f"{dist}: {len(wheels)} wheels, expected 1 (clear the folder first)")
    problems += [p for w in wheels for p in check_wheel(w, version)]
    if len(sdists) > 1:
        problems.append(f"{dist}: {len(sdists)} sdists, expected at most 1")
    problems += [p for s in sdists for p in check_sdist(s, version)]
    for p in problems:
        print(p)
    if not problems:
        print(f"{dist}: {', '.join(p.name for p in wheels + sdists)} look right")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
