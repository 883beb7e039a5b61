"""The public surface, and the promise that `import nudge_rag` loads no framework."""

from __future__ import annotations

import subprocess
import sys

import nudge_rag

HEAVY = [
    "torch",
    "sentence_transformers",
    "llama_index",
    "langchain_core",
    "langchain_chroma",
    "langchain_qdrant",
    "langchain_community",
    "chromadb",
    "qdrant_client",
    "faiss",
    "matplotlib",
    "transformers",
]


def test_import_loads_no_framework_store_client_or_torch():
    code = (
        "import sys, nudge_rag, nudge_rag.core, nudge_rag.stores, nudge_rag.testing, "
        "nudge_rag.evaluation, nudge_rag.integrations\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_imports_numpy_and_stdlib_only():
    code = (
        "import sys; before = set(sys.modules); import nudge_rag.core\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - {'nudge_rag', 'numpy'} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    # The nouns a user needs; streaming internals (UnmovedTopK, ...) stay in nudge_rag.core.
    assert set(nudge_rag.__all__) == {
        "Comparison",
        "EvaluationResult",
        "FinetuneReport",
        "JudgedQueries",
        "NudgeEmbeddingFinetuner",
        "NudgeError",
        "NudgeM",
        "NudgeN",
        "NudgeResult",
        "QADataset",
        "QuerySet",
        "RevertReport",
        "ValidationCurve",
        "__version__",
        "aevaluate",
        "agenerate_queries",
        "compare",
        "evaluate",
        "generate_queries",
    }
    for name in nudge_rag.__all__:
        assert getattr(nudge_rag, name) is not None


def test_the_package_is_typed_and_silent_by_default():
    from pathlib import Path

    assert (Path(nudge_rag.__file__).parent / "py.typed").is_file()
    code = "import logging, nudge_rag\nlogging.getLogger('nudge_rag.finetuner').warning('hello')\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""  # a NullHandler: no "last resort" printing to stderr


def test_py_typed_is_declared_as_package_data():
    """The PEP 561 marker is in the package folder and pyproject ships it in the wheel."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    assert (root / "nudge_rag" / "py.typed").is_file()
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["build-system"]["build-backend"] == "setuptools.build_meta"
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["nudge_rag"]


def test_error_tree():
    from nudge_rag import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.NudgeError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.UnsupportedStoreError, TypeError)
    assert issubclass(errors.DependencyError, ImportError)
