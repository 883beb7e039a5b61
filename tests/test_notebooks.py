"""Execute the notebooks in ``notebooks/`` offline and check what they print.

Each notebook fine-tunes a store on the 10-K chunks of ``../shared/data/llamaindex_qa`` with the
LLM-written questions replayed as the LLM, and prints a line
``HELD-OUT ndcg@10 before=0.xxxx after=0.yyyy`` measured on questions the fine-tuner never saw:
the test asserts that no cell failed and that ``after`` is not below ``before``.

On these data the fine-tuner's validation chooses γ = 0 (no move helps a chunk's *other* question,
see the notebooks' "What the numbers say" cell), so ``after == before`` today; the assertion is the
guard that fine-tuning never makes held-out retrieval worse.

Refresh the outputs committed with the notebooks (executes them in place, from ``notebooks/``)::

    python tests/test_notebooks.py --update            # all of them
    python tests/test_notebooks.py --update 02         # the ones whose name contains "02"
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SHARED_DATA = Path(os.environ.get("NUDGE_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
QA_FILE = SHARED_DATA / "llamaindex_qa" / "run-llama-finetune-embedding" / "train_dataset.json"
HELD_OUT = re.compile(r"HELD-OUT ndcg@10 before=([0-9.]+) after=([0-9.]+)")
TIMEOUT_S = 900  # per cell; a notebook takes about a minute once its embeddings are cached


def _kernel_env() -> None:
    """What the kernel inherits: offline model, the data folder, quiet Jupyter paths."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    os.environ["NUDGE_RAG_SHARED_DATA"] = str(SHARED_DATA.resolve())


def execute(path: Path, workdir: Path) -> Any:
    """Run every cell of the notebook at ``path`` with ``workdir`` as the working directory."""
    import nbformat
    from nbclient import NotebookClient

    _kernel_env()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def printed_text(nb: Any) -> str:
    """Everything the cells printed (stream outputs and text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def errors(nb: Any) -> list[str]:
    return [
        f"{out.get('ename')}: {out.get('evalue')}"
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def held_out(nb: Any) -> tuple[float, float]:
    found = HELD_OUT.findall(printed_text(nb))
    assert len(found) == 1, (
        f"expected one 'HELD-OUT ndcg@10 before=... after=...' line, found {found}"
    )
    before, after = found[0]
    return float(before), float(after)


def test_every_notebook_is_collected() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_llamaindex_rag.ipynb", "02_langchain_chatbot.ipynb", "03_evaluation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_outputs(path: Path) -> None:
    """The committed copy carries the outputs of a run, and that run showed the gain."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "refresh with --update"
    assert not errors(nb)
    before, after = held_out(nb)
    assert after >= before


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Jupyter's own, in the client
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_never_loses_on_held_out(path: Path, tmp_path: Path) -> None:
    if not QA_FILE.is_file():
        pytest.skip(f"{QA_FILE} not found (set NUDGE_RAG_SHARED_DATA)")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    t0 = time.perf_counter()
    nb = execute(copy, tmp_path)
    assert not errors(nb)
    before, after = held_out(nb)
    print(
        f"{path.name}: held-out NDCG@10 {before:.4f} -> {after:.4f} in {time.perf_counter() - t0:.0f}s"
    )
    assert after >= before


def update(patterns: list[str]) -> int:
    """Execute the notebooks in place (from notebooks/) and save them with their outputs."""
    import nbformat

    chosen = [p for p in NOTEBOOKS if not patterns or any(s in p.name for s in patterns)]
    if not QA_FILE.is_file():
        print(f"{QA_FILE} not found (set NUDGE_RAG_SHARED_DATA)", file=sys.stderr)
        return 2
    for path in chosen:
        t0 = time.perf_counter()
        nb = execute(path, path.parent)
        for cell in nb.cells:  # keep diffs to what the cells printed
            cell.metadata.pop("execution", None)
        bad = errors(nb)
        if bad:
            print(f"{path.name}: cell errors {bad}; not saved", file=sys.stderr)
            return 1
        nbformat.write(nb, path)
        before, after = held_out(nb)
        print(
            f"{path.name}: held-out NDCG@10 {before:.4f} -> {after:.4f} ({time.perf_counter() - t0:.0f}s)"
        )
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(update(args[1:]))
