"""The package as published (issue 21): the sdist and wheel `python -m build` makes pass
``twine check`` and ``.ci/check_dist.py``, and the wheel installed into an empty virtual
environment, with numpy its one hard dependency and no extra, imports, runs the numpy core and
the CLI, and names the extra to install where a feature needs one.

The build runs offline (``--no-isolation``, on a copy of the sources, so nothing is written into
the checkout); numpy comes from a wheel ``pip download`` fetches (the registry, or the local
wheel cache when it has one), installed with ``--no-index``, so the install itself resolves the
wheel's dependency from its metadata.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nudge_rag

REPO = Path(__file__).resolve().parents[1]

IN_THE_EMPTY_VENV = """
import importlib.metadata, sys
import numpy as np
import nudge_rag
from nudge_rag import NudgeEmbeddingFinetuner, NudgeN, QuerySet
from nudge_rag.errors import DependencyError, UnsupportedStoreError

assert nudge_rag.__version__ == importlib.metadata.version("nudge-rag") == {version!r}
assert "site-packages" in nudge_rag.__file__, nudge_rag.__file__  # the wheel, not the checkout
heavy = {{"llama_index", "langchain_core", "torch", "sentence_transformers", "chromadb", "tqdm"}}
assert not heavy & {{m.split(".")[0] for m in sys.modules}}, sorted(sys.modules)
installed = {{d.metadata["Name"].lower() for d in importlib.metadata.distributions()}}
assert installed == {{"nudge-rag", "numpy"}}, installed

# the numpy core works with nothing else installed
rng = np.random.default_rng(0)
records = rng.normal(size=(40, 8)).astype(np.float32)
queries = QuerySet(rng.normal(size=(10, 8)).astype(np.float32), [[i] for i in range(10)])
res = NudgeN(gamma=0.1).fit(records, queries)
assert res.embeddings.shape == (40, 8) and res.gamma == 0.1, res

def hint(call, extra):
    try:
        call()
    except DependencyError as exc:
        assert f"pip install 'nudge-rag[{{extra}}]'" in str(exc), str(exc)
        return
    raise AssertionError(f"no DependencyError for the {{extra}} extra")

from nudge_rag.integrations import langchain, llamaindex
from nudge_rag.testing import BagOfWordsEmbedder
hint(lambda: llamaindex.pipeline(object()), "llamaindex")
hint(lambda: langchain.pipeline(object()), "langchain")
hint(lambda: BagOfWordsEmbedder(dim=8).as_langchain(), "langchain")
try:
    NudgeEmbeddingFinetuner(object())
except UnsupportedStoreError as exc:
    assert "object" in str(exc)
else:
    raise AssertionError("an unknown store was accepted")
print("ok")
"""


def run(*cmd: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert out.returncode == 0, textwrap.shorten(f"{cmd}: {out.stdout} {out.stderr}", 4000)
    return out.stdout


def build(tmp_path: Path) -> Path:
    """sdist + wheel of a copy of the sources, in ``tmp_path / "dist"``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "nudge_rag", src / "nudge_rag", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src)
    return dist


@pytest.mark.slow
def test_the_built_wheel_installs_into_an_empty_venv_and_imports_without_extras(
    tmp_path: Path,
) -> None:
    dist = build(tmp_path)
    run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    assert "look right" in run(sys.executable, REPO / ".ci" / "check_dist.py", dist)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"nudge_rag-{nudge_rag.__version__}-py3-none-any.whl"

    # numpy's wheel for this interpreter, the version this environment runs
    wheels = tmp_path / "wheelhouse"
    numpy_version = importlib.metadata.version("numpy")
    run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        f"numpy=={numpy_version}", "--dest", wheels)  # fmt: skip

    venv = tmp_path / "empty-venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    # no index, no find-links but ours, and nothing of the checkout on the path
    hermetic = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    hermetic["PIP_CONFIG_FILE"] = os.devnull
    run(sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-index",
        "--find-links", wheels, wheel, env=hermetic)  # fmt: skip

    script = IN_THE_EMPTY_VENV.format(version=nudge_rag.__version__)
    assert run(py, "-c", script, env=hermetic, cwd=tmp_path).strip() == "ok"
    cli = run(venv / "bin" / "nudge-rag", "--help", env=hermetic, cwd=tmp_path)
    assert "fine-tune" in cli.lower()
