"""Execute the notebooks in ``notebooks/`` offline and check what they print.

Each notebook runs two held-out experiments through its framework's store and prints one line for each:

* the 10-K chunks of ``../shared/data/llamaindex_qa`` with their LLM-written questions replayed as the
  LLM: ``HELD-OUT ndcg@10 before=0.xxxx after=0.yyyy`` on questions the fine-tuner never saw. On these
  data the fine-tuner's validation chooses γ = 0 (no move helps a chunk's *other* question, see the
  notebooks' "What the numbers say" cell), so ``after == before`` today; the test asserts
  ``after >= before``, the guard that fine-tuning never makes held-out retrieval worse.
* SciFact (``../shared/data/scifact``), its train + validation claims replayed as the LLM's questions
  and its test claims held out: ``HELD-OUT (SciFact test) ndcg@10 before=0.xxxx after=0.yyyy``. The
  test asserts ``after > before + 0.05`` (measured: about 0.67 -> 0.87).

Every notebook must also run without a cell error.

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
SCIFACT_DIR = SHARED_DATA / "scifact"
HELD_OUT = re.compile(r"^HELD-OUT ndcg@10 before=([0-9.]+) after=([0-9.]+)$", re.M)
SCIFACT = re.compile(r"^HELD-OUT \(SciFact test\) ndcg@10 before=([0-9.]+) after=([0-9.]+)$", re.M)
SCIFACT_MIN_GAIN = 0.05
TIMEOUT_S = 900  # per cell; a notebook takes one to two minutes once its embeddings are cached


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


def _one_line(nb: Any, pattern: re.Pattern[str], what: str) -> tuple[float, float]:
    found = pattern.findall(printed_text(nb))
    assert len(found) == 1, f"expected one '{what} before=... after=...' line, found {found}"
    before, after = found[0]
    return float(before), float(after)


def held_out(nb: Any) -> tuple[float, float]:
    """NDCG@10 before and after on the held-out 10-K questions."""
    return _one_line(nb, HELD_OUT, "HELD-OUT ndcg@10")


def held_out_scifact(nb: Any) -> tuple[float, float]:
    """NDCG@10 before and after on the held-out SciFact test claims."""
    return _one_line(nb, SCIFACT, "HELD-OUT (SciFact test) ndcg@10")


def check_printed(nb: Any) -> str:
    """Assert what a run must show; return a one-line account of its numbers."""
    assert not errors(nb), errors(nb)
    before, after = held_out(nb)
    assert after >= before, f"10-K held-out NDCG@10 fell: {before:.4f} -> {after:.4f}"
    sf_before, sf_after = held_out_scifact(nb)
    assert sf_after > sf_before + SCIFACT_MIN_GAIN, (
        f"SciFact held-out NDCG@10 {sf_before:.4f} -> {sf_after:.4f}, not {SCIFACT_MIN_GAIN} above"
    )
    return (
        f"10-K held-out NDCG@10 {before:.4f} -> {after:.4f}; "
        f"SciFact test NDCG@10 {sf_before:.4f} -> {sf_after:.4f}"
    )


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
    check_printed(nb)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Jupyter's own, in the client
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_wins_on_held_out(path: Path, tmp_path: Path) -> None:
    for needed in (QA_FILE, SCIFACT_DIR / "corpus.jsonl"):
        if not needed.is_file():
            pytest.skip(f"{needed} not found (set NUDGE_RAG_SHARED_DATA)")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    t0 = time.perf_counter()
    nb = execute(copy, tmp_path)
    account = check_printed(nb)
    print(f"{path.name}: {account} in {time.perf_counter() - t0:.0f}s")


def update(patterns: list[str]) -> int:
    """Execute the notebooks in place (from notebooks/) and save them with their outputs."""
    import nbformat

    chosen = [p for p in NOTEBOOKS if not patterns or any(s in p.name for s in patterns)]
    for needed in (QA_FILE, SCIFACT_DIR / "corpus.jsonl"):
        if not needed.is_file():
            print(f"{needed} not found (set NUDGE_RAG_SHARED_DATA)", file=sys.stderr)
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
        try:
            account = check_printed(nb)
        except AssertionError as exc:
            print(f"{path.name}: {exc}; not saved", file=sys.stderr)
            return 1
        nbformat.write(nb, path)
        print(f"{path.name}: {account} ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(update(args[1:]))
