"""The ``nudge-rag`` command: every sub-command's happy path and its bad-input paths.

Most tests run ``main([...])`` in-process with a deterministic bag-of-words model in place of the
local model (``nudge_rag.sources.default_embedder`` is patched); the ``slow`` ones use the real
all-MiniLM-L6-v2 and run the command as a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag import cli, sources
from nudge_rag.state import FinetuneState
from nudge_rag.testing import BagOfWordsEmbedder

REPO = Path(__file__).resolve().parents[1]

DOCS = {
    "a.txt": (
        "The mitochondria is the powerhouse of the cell. It makes ATP by oxidative "
        "phosphorylation.\n\nPhotosynthesis in plants turns light energy into chemical energy "
        "stored in glucose."
    ),
    "sub/b.md": (
        "# Rivers\n\nRiver deltas form where a river meets the sea and drops its sediment.\n\n"
        "Coral reefs are built by colonies of tiny polyps in warm shallow water.\n\n"
        "The solar wind is a stream of charged particles from the upper atmosphere of the Sun."
    ),
    "c.txt": (
        "Neural networks learn weights by gradient descent on a loss.\n\nProtein folding "
        "decides the shape and function of a protein chain."
    ),
}


class FakeEmbedder:
    """Ours-shaped (embed_documents / embed_queries) over the bag-of-words test model."""

    def __init__(self, dim: int = 64) -> None:
        self.inner = BagOfWordsEmbedder(dim=dim)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "default_embedder", lambda show_progress=False: FakeEmbedder())


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding docs/ (three small documents)."""
    for rel, text in DOCS.items():
        p = tmp_path / "docs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, one `nudge-rag: error:` line on stderr, no traceback, the message says why."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("nudge-rag: error: "), err
    for n in needles:
        assert n in err, (n, err)


def chroma_vectors(path: Path, collection: str | None = None) -> dict[str, np.ndarray]:
    import chromadb

    client = chromadb.PersistentClient(path=str(path.resolve()))
    name = collection or client.list_collections()[0].name
    got = client.get_collection(name).get(include=["embeddings"])
    return {
        i: np.asarray(v, dtype=np.float64)
        for i, v in zip(got["ids"], got["embeddings"], strict=True)
    }


def same_vectors(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def make_chroma(path: Path, dim: int, *, name: str = "notes", n: int = 6) -> dict[str, np.ndarray]:
    """A persistent Chroma collection of ``n`` unit vectors of width ``dim`` (ip space)."""
    import chromadb

    rng = np.random.default_rng(0)
    texts = [f"note {i} about rivers coral reefs and solar wind number{i}" for i in range(n)]
    if dim == 64:
        vecs = FakeEmbedder().embed_documents(texts).astype(np.float64)
    else:
        vecs = rng.normal(size=(n, dim))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    client = chromadb.PersistentClient(path=str(path.resolve()))
    col = client.create_collection(name, configuration={"hnsw": {"space": "ip"}})
    col.add(ids=[f"n{i}" for i in range(n)], embeddings=vecs.tolist(), documents=texts)
    return chroma_vectors(path, name)


def make_llamaindex(work: Path, folder: str) -> dict[str, list[float]]:
    """A persisted LlamaIndex index of the documents (bag-of-words vectors); its vectors."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

    chunks = sources.read_documents(work / "docs", 90)
    index = VectorStoreIndex(
        [TextNode(id_=k, text=v) for k, v in chunks.items()],
        embed_model=as_llamaindex_embedding(FakeEmbedder()),
    )
    index.storage_context.persist(str(work / folder))
    data = json.loads((work / folder / "default__vector_store.json").read_text())
    return dict(data["embedding_dict"])


def write_queries(
    path: Path, pairs: dict[str, tuple[str, list[str]]], corpus: dict[str, str]
) -> Path:
    data = {
        "queries": {q: t for q, (t, _) in pairs.items()},
        "corpus": corpus,
        "relevant_docs": {q: ids for q, (_, ids) in pairs.items()},
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_chunk_text_and_read_documents_stay_importable_from_the_cli() -> None:
    # the library API lives in nudge_rag.sources (tested in test_sources.py)
    assert cli.chunk_text is sources.chunk_text and cli.read_documents is sources.read_documents


# ---------------------------------------------------------------------------------------------
# help, and the parser's own errors
# ---------------------------------------------------------------------------------------------
def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("finetune", "generate-queries", "evaluate", "revert", "bench", "examples:"):
        assert word in out
    for sub in ("finetune", "generate-queries", "evaluate", "revert", "bench"):
        code, out, _ = run(capsys, sub, "--help")
        assert code == 0 and "examples:" in out, sub


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "usage: nudge-rag" in out


def test_bad_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "finetune", "docs", "--k", "0")
    assert code == 2 and "expected a positive integer" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# documents folder: finetune, generate-queries, evaluate, revert
# ---------------------------------------------------------------------------------------------
def test_finetune_documents_builds_store_moves_vectors_and_reverts(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "finetune", "docs", "--gamma", "0.5", "--chunk-size", "90", "--quiet"
    )
    assert code == 0, err
    assert "records moved" in out and "undo with: nudge-rag revert nudge_store\n" in out
    store = work / "nudge_store"
    assert (store / "chroma.sqlite3").is_file()
    state = FinetuneState.load(store / "nudge_state" / "docs")
    assert state is not None and state.status == "applied" and len(state.ids) > 0
    moved = chroma_vectors(store)
    assert any(k.startswith("sub/b.md#") for k in moved)

    code, out, err = run(capsys, "revert", "docs")  # the documents need not be read again
    assert code == 0, err
    assert f"restored {len(state.ids)} record(s) to their original vectors" in out
    restored = chroma_vectors(store)
    originals = FakeEmbedder().embed_documents(
        list(sources.read_documents(work / "docs", 90).values())
    )
    assert same_vectors(
        restored,
        dict(zip(sources.read_documents(work / "docs", 90), originals, strict=True)),
        atol=1e-6,
    )
    assert not same_vectors(moved, restored, atol=1e-6)
    # Reverting twice is harmless, and says so.
    code, out, _ = run(capsys, "revert", "nudge_store")
    assert code == 0 and "nothing to revert" in out and "'reverted'" in out


def test_finetune_documents_with_gamma_selection(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "finetune", "docs", "--chunk-size", "90", "--quiet", "--out", "report.json"
    )
    assert code == 0, err
    assert "validation" in out
    rep = json.loads((work / "report.json").read_text())
    assert rep["kind"] == "documents" and rep["report"]["n_records"] == len(
        sources.read_documents(work / "docs", 90)
    )
    assert rep["report"]["curve"]["gammas"][0] == 0


def test_generate_queries_then_finetune_and_evaluate_with_them(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "generate-queries", "docs", "--chunk-size", "90", "--out", "q.json", "--quiet"
    )
    assert code == 0, err
    assert "wrote" in out
    data = json.loads((work / "q.json").read_text())
    assert set(data) >= {"queries", "corpus", "relevant_docs"}
    assert set(data["corpus"]) == set(sources.read_documents(work / "docs", 90))
    assert not (work / "nudge_store").exists()  # generating queries embeds nothing

    code, out, err = run(
        capsys,
        "finetune", "docs", "--chunk-size", "90", "--queries", "q.json", "--gamma", "0.3",
        "--eval-queries", "q.json", "--out", "rep.json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "NDCG@10" in out and "wins" in out
    rep = json.loads((work / "rep.json").read_text())
    assert rep["evaluation"]["n_queries"] == len(data["queries"])

    state = work / "nudge_store" / "nudge_state" / "docs"
    code, out, err = run(
        capsys, "evaluate", "nudge_store", "--queries", "q.json", "--compare-to", str(state),
        "--plot", "cmp.png", "--out", "ev.json",
    )  # fmt: skip
    assert code == 0, err
    assert "before" in out and (work / "cmp.png").stat().st_size > 0
    ev = json.loads((work / "ev.json").read_text())
    assert [m["metric"] for m in ev["metrics"]] == ["ndcg", "recall", "mrr", "hit_rate"]

    code, out, err = run(capsys, "evaluate", "docs", "--chunk-size", "90", "--queries", "q.json")
    assert code == 0, err
    assert "NDCG@10" in out


def test_llm_factory_writes_the_training_queries(
    work: Path,
    fake_model: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (work / "my_llms.py").write_text(
        "import json\n"
        "CALLS = []\n"
        "def make_llm():\n"
        "    def llm(prompt):\n"
        "        CALLS.append(prompt)\n"
        "        words = prompt.split('---------------------')[1].split()\n"
        "        return json.dumps(['what about ' + ' '.join(words[:4]) + '?',\n"
        "                           'tell me on ' + ' '.join(words[-4:]) + '?'])\n"
        "    return llm\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(work))
    code, out, err = run(
        capsys, "generate-queries", "docs", "--chunk-size", "90", "--llm", "my_llms:make_llm",
        "--out", "q.json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    qs = json.loads((work / "q.json").read_text())["queries"]
    assert all(q.startswith(("what about", "tell me on")) for q in qs.values())
    import my_llms  # type: ignore[import-not-found]

    assert len(my_llms.CALLS) == len(sources.read_documents(work / "docs", 90))
    code, out, err = run(
        capsys, "finetune", "docs", "--chunk-size", "90", "--llm", "my_llms:make_llm", "--quiet"
    )
    assert code == 0, err
    assert "function" in out


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_colon", "module:function"),
        ("nosuchmodule_xyz:make", "cannot import module"),
        ("json:nosuchattr", "has no attribute"),
        ("json:__name__", "not a function"),
    ],
)
def test_bad_llm_spec(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str], spec: str, needle: str
) -> None:
    code, _, err = run(capsys, "finetune", "docs", "--llm", spec)
    assert_clean_error(code, err, needle)
    assert not (work / "nudge_store").exists()


# ---------------------------------------------------------------------------------------------
# persisted LlamaIndex index, Chroma directory, BEIR folder
# ---------------------------------------------------------------------------------------------
def test_llamaindex_index_finetune_persist_revert(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    original = make_llamaindex(work, "storage")
    vs_file = work / "storage" / "default__vector_store.json"

    code, out, err = run(capsys, "finetune", "storage", "--gamma", "0.4", "--quiet")
    assert code == 0, err
    assert "index persisted" in out
    moved = json.loads(vs_file.read_text())["embedding_dict"]
    assert moved.keys() == original.keys() and moved != original

    code, out, err = run(capsys, "generate-queries", "storage", "--out", "q.json", "--quiet")
    assert code == 0, err
    code, out, err = run(
        capsys, "evaluate", "storage", "--queries", "q.json", "--compare-to", "storage/nudge_state"
    )
    assert code == 0, err
    assert "Hit rate@10" in out

    code, out, err = run(capsys, "revert", "storage")
    assert code == 0, err
    back = json.loads(vs_file.read_text())["embedding_dict"]
    assert all(np.allclose(back[k], original[k], rtol=0, atol=0) for k in original)


def test_chroma_directory_finetune_and_revert(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_chroma(work / "chroma_dir", 64)
    code, out, err = run(capsys, "finetune", "chroma_dir", "--gamma", "0.3", "--quiet")
    assert code == 0, err
    assert "Chroma collection 'notes'" in out
    assert not same_vectors(chroma_vectors(work / "chroma_dir"), before, atol=1e-6)
    code, out, err = run(
        capsys, "revert", "chroma_dir", "--state-dir", "chroma_dir/nudge_state/notes"
    )
    assert code == 0, err
    assert same_vectors(chroma_vectors(work / "chroma_dir"), before, atol=1e-6)


def test_chroma_directory_with_two_collections_needs_collection(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    make_chroma(work / "cd", 64, name="one")
    make_chroma(work / "cd", 64, name="two")
    code, _, err = run(capsys, "finetune", "cd", "--quiet")
    assert_clean_error(code, err, "--collection", "one", "two")
    code, _, err = run(capsys, "finetune", "cd", "--collection", "three", "--quiet")
    assert_clean_error(code, err, "'three'")
    code, _, err = run(capsys, "finetune", "cd", "--collection", "two", "--gamma", "0.2", "--quiet")
    assert code == 0, err


def make_beir(root: Path, n_docs: int = 12, n_queries: int = 30) -> Path:
    topics = ["river", "coral", "solar", "protein", "neural", "glucose"]
    docs = [
        {
            "_id": f"d{i}",
            "title": f"{topics[i % 6]} study {i}",
            "text": f"{topics[i % 6]} facts w{i}",
        }
        for i in range(n_docs)
    ]
    queries = [
        {"_id": f"q{j}", "text": f"what about {topics[j % 6]} w{j % n_docs}"}
        for j in range(n_queries)
    ]
    root.mkdir()
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"q{j}\td{j % n_docs}\t1" for j in range(n_queries)]
    half = len(rows) // 2
    (root / "qrels" / "train.tsv").write_text("\n".join(rows[:half]) + "\n")
    (root / "qrels" / "test.tsv").write_text("\n".join([rows[0], *rows[half:]]) + "\n")
    return root


def test_evaluate_and_generate_on_beir_folder(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    make_beir(work / "beir")
    code, out, err = run(capsys, "evaluate", "beir", "--k", "5", "--out", "m.json")
    assert code == 0, err
    assert "NDCG@5" in out
    assert json.loads((work / "m.json").read_text())["k"] == 5
    code, out, err = run(capsys, "generate-queries", "beir", "--out", "q.json", "--quiet")
    assert code == 0, err
    assert set(json.loads((work / "q.json").read_text())["corpus"]) == {f"d{i}" for i in range(12)}
    code, _, err = run(capsys, "finetune", "beir", "--llm", "x:y")
    assert_clean_error(code, err, "--llm", "BEIR")
    code, _, err = run(capsys, "revert", "beir")
    assert_clean_error(code, err, "nothing to revert")


def test_finetune_without_source_and_without_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sources, "default_data_folder", lambda: None)
    code, _, err = run(capsys, "finetune")
    assert_clean_error(code, err, "../shared/data/scifact", "BEIR")


def test_bench(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if sources._benchmarks_dir() is not None:
        code, out, _ = run(capsys, "bench", "--dry-run", "--data", str(REPO))
        assert code == 0 and "bench_quality.py" in out and "bench_scale.py" in out
        code, out, _ = run(capsys, "bench", "--quick", "--dry-run", "--data", str(REPO))
        assert code == 0 and "--skip-finetune" in out
    monkeypatch.setattr(sources, "_benchmarks_dir", lambda: None)
    code, _, err = run(capsys, "bench", "--quick")
    assert_clean_error(code, err, "benchmarks/", "checkout")


# ---------------------------------------------------------------------------------------------
# bad input: clear message, exit 2, no traceback, store untouched
# ---------------------------------------------------------------------------------------------
def test_missing_folder(work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    for sub in (["finetune"], ["evaluate", "--queries", "x.json"], ["revert"]):
        code, _, err = run(capsys, sub[0], "no_such_folder", *sub[1:])
        assert_clean_error(code, err, "no_such_folder")
    code, _, err = run(capsys, "generate-queries", "no_such_folder", "--out", "q.json")
    assert_clean_error(code, err, "does not exist")


def test_empty_corpus(work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "empty").mkdir()
    code, _, err = run(capsys, "finetune", "empty")
    assert_clean_error(code, err, "empty corpus")
    (work / "blank").mkdir()
    (work / "blank" / "a.txt").write_text("  \n\n ")
    code, _, err = run(capsys, "finetune", "blank")
    assert_clean_error(code, err, "empty corpus", "hold no text")
    import chromadb

    client = chromadb.PersistentClient(path=str((work / "empty_chroma").resolve()))
    client.create_collection("void")
    code, _, err = run(capsys, "finetune", "empty_chroma")
    assert_clean_error(code, err, "empty corpus", "'void'")


def test_unreadable_files(work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    # Tests run as root, so chmod 000 reads fine: unreadable is made real with bytes and shapes.
    (work / "docs" / "binary.txt").write_bytes(b"caf\xe9 \xff\xfe")
    code, _, err = run(capsys, "finetune", "docs")
    assert_clean_error(code, err, "binary.txt", "not UTF-8")
    assert not (work / "nudge_store").exists()
    (work / "docs" / "binary.txt").unlink()

    (work / "bad.json").write_text('{"queries": {')
    code, _, err = run(capsys, "finetune", "docs", "--queries", "bad.json")
    assert_clean_error(code, err, "bad.json", "not valid JSON")
    code, _, err = run(capsys, "finetune", "docs", "--queries", "docs")
    assert_clean_error(code, err, "--queries", "directory")
    assert not (work / "nudge_store").exists()  # inputs are checked before anything is built

    (work / "li").mkdir()
    (work / "li" / "docstore.json").write_text("{not json")
    (work / "li" / "index_store.json").write_text("{}")
    (work / "li" / "default__vector_store.json").write_text("{}")
    code, _, err = run(capsys, "finetune", "li")
    assert_clean_error(code, err, "docstore.json", "JSON")

    (work / "li2").mkdir()
    (work / "li2" / "docstore.json").mkdir()  # a directory where a file is expected
    code, _, err = run(capsys, "finetune", "li2")
    assert_clean_error(code, err, "directory")

    (work / "badchroma").mkdir()
    (work / "badchroma" / "chroma.sqlite3").write_text("this is not a database")
    code, _, err = run(capsys, "finetune", "badchroma")
    assert_clean_error(code, err, "cannot open the Chroma directory")


def test_dimension_mismatch_leaves_store_untouched(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_chroma(work / "narrow", 8)  # built with another embedding width
    code, _, err = run(capsys, "finetune", "narrow", "--quiet")
    assert_clean_error(code, err, "width 8", "64")
    write_queries(work / "q.json", {"q": ("note about rivers", ["n1"])}, {"n1": "x"})
    code, _, err = run(
        capsys, "finetune", "narrow", "--queries", "q.json", "--gamma", "0.5", "--quiet"
    )
    assert_clean_error(code, err, "width 8")
    code, _, err = run(capsys, "evaluate", "narrow", "--queries", "q.json")
    assert_clean_error(code, err, "width 8")
    assert same_vectors(chroma_vectors(work / "narrow"), before)
    assert not (work / "narrow" / "nudge_state" / "notes" / "manifest.json").exists()


def test_unknown_store(work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "faiss_dir").mkdir()
    (work / "faiss_dir" / "index.faiss").write_bytes(b"\x00" * 16)
    (work / "faiss_dir" / "index.pkl").write_bytes(b"\x80")
    for sub in (["finetune"], ["evaluate", "--queries", "q.json"], ["revert"]):
        code, _, err = run(capsys, sub[0], "faiss_dir", *sub[1:])
        assert_clean_error(code, err, "unknown store", "index.faiss", "Chroma directory")
    (work / "notes.pdf").write_bytes(b"%PDF")
    code, _, err = run(capsys, "finetune", "notes.pdf")
    assert_clean_error(code, err, "unknown kind")


def test_queries_for_another_store_leave_store_untouched(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_chroma(work / "cd", 64)
    write_queries(work / "q.json", {"q": ("rivers", ["elsewhere-7"])}, {"elsewhere-7": "x"})
    code, _, err = run(capsys, "finetune", "cd", "--queries", "q.json", "--gamma", "0.5", "--quiet")
    assert_clean_error(code, err, "elsewhere-7", "not in the")
    code, _, err = run(capsys, "evaluate", "cd", "--queries", "q.json")
    assert_clean_error(code, err, "none of the 1 relevant ids")
    assert same_vectors(chroma_vectors(work / "cd"), before)


def test_store_option_errors(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "finetune", "docs", "--method", "both")
    assert_clean_error(code, err, "--method both")
    code, _, err = run(capsys, "finetune", "docs", "--objective", "nonsense", "--quiet")
    assert_clean_error(code, err, "nonsense")
    code, _, err = run(capsys, "evaluate", "docs", "--quiet")
    assert_clean_error(code, err, "--queries FILE is required")
    code, _, err = run(capsys, "revert", "docs")
    assert_clean_error(code, err, "no store", "run `nudge-rag finetune docs` first")
    # A store built from other documents is never overwritten.
    assert run(capsys, "finetune", "docs", "--gamma", "0.2", "--quiet")[0] == 0
    before = chroma_vectors(work / "nudge_store")
    (work / "docs" / "a.txt").write_text("Entirely new text about volcanoes.")
    code, _, err = run(capsys, "finetune", "docs", "--quiet")
    assert_clean_error(code, err, "built from other documents")
    assert same_vectors(chroma_vectors(work / "nudge_store"), before)
    code, _, err = run(capsys, "revert", "nudge_store", "--state-dir", "nowhere")
    assert_clean_error(code, err, "no fine-tuning state")


# ---------------------------------------------------------------------------------------------
# what the command suggests works when pasted; revert says what it found
# ---------------------------------------------------------------------------------------------
def undo_argv(out: str) -> list[str]:
    """The printed undo command, split by a real shell (bash) exactly as a paste would be."""
    line = next(x for x in out.splitlines() if x.startswith("undo with: "))
    cmd = line.removeprefix("undo with: ")
    assert cmd.startswith("nudge-rag revert ")
    shell = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {cmd}"], capture_output=True, text=True, check=True
    )
    return shell.stdout.split("\0")[:-1]


def test_undo_command_works_when_pasted(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Paths a shell would split or expand, and a name argparse would take for an option.
    (work / "docs").rename(work / "my docs")
    store = "-store's $HOME dir"
    code, out, err = run(
        capsys, "finetune", "my docs", "--store", store, "--gamma", "0.4", "--quiet"
    )
    assert code == 0, err
    argv = undo_argv(out)
    # One collection in the store: no --collection; the state where revert looks: no --state-dir.
    assert argv == ["nudge-rag", "revert", f"./{store}"], out
    before_undo = chroma_vectors(work / store)
    code, out, err = run(capsys, *argv[1:])
    assert code == 0 and "restored" in out, err
    assert not same_vectors(chroma_vectors(work / store), before_undo, atol=1e-6)

    # A second collection in the same store, and the state elsewhere: both are named.
    (work / "more").mkdir()
    (work / "more" / "x.md").write_text(DOCS["c.txt"] + "\n\n" + DOCS["a.txt"])
    code, out, err = run(
        capsys, "finetune", "more", "--store", store, "--collection", "extra notes",
        "--state-dir", "st ate", "--gamma", "0.4", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    argv = undo_argv(out)
    assert argv == [
        "nudge-rag", "revert", f"./{store}", "--collection", "extra_notes", "--state-dir", "st ate"
    ]  # fmt: skip
    code, out, err = run(capsys, *argv[1:])
    assert code == 0 and "restored" in out, err
    code, out, err = run(capsys, "revert", f"./{store}")  # two collections: which one?
    assert_clean_error(code, err, "--collection", "extra_notes", "my_docs")


def test_llamaindex_undo_command_and_crash_safe_save(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    make_llamaindex(work, "my storage")
    code, out, err = run(capsys, "finetune", "my storage", "--gamma", "0.4", "--quiet")
    assert code == 0, err
    assert undo_argv(out) == ["nudge-rag", "revert", "my storage"]
    assert not list((work / "my storage").glob(".nudge-tmp-*"))  # saved through a temporary copy
    # The index moves with its folder: its state still belongs to it.
    (work / "my storage").rename(work / "moved")
    code, out, err = run(capsys, "revert", "moved")
    assert code == 0 and "restored" in out, err


CHILD = (
    "import sys; sys.path.insert(0, {tests!r}); from test_cli import FakeEmbedder; "
    "from nudge_rag import cli, sources; "
    "sources.default_embedder = lambda show_progress=False: FakeEmbedder(); "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def cli_with_fake_model(cwd: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``nudge-rag ARGV`` in a fresh process, with the bag-of-words model (no real model)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_RAG_")}
    code = CHILD.format(tests=str(Path(__file__).parent))
    return subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", code, *argv],
        cwd=cwd, env={**full, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("sweep", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_finetune_killed_while_saving_the_index_loses_nothing_and_reverts(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str], sweep: bool
) -> None:
    """SIGKILL at a crash point of the index save (sweep: at each one, after the temporary copy
    is written and after each file is switched in): the index loads, holds every record with its
    whole old or whole new vector, and `nudge-rag revert` brings back the originals exactly."""
    pytest.importorskip("llama_index.core")
    original = make_llamaindex(work, "storage")
    pristine = work / "pristine"
    shutil.copytree(work / "storage", pristine)
    # the vector store's file is switched in first: killed there, it is new and the rest old
    points, moved = ["persist.file#1"], None
    if sweep:
        log = work / "points.log"
        r = cli_with_fake_model(work, "finetune", "storage", "--gamma", "0.4", "--quiet",
                                NUDGE_RAG_FAULT_LOG=str(log))  # fmt: skip
        assert r.returncode == 0, r.stderr
        moved = json.loads((work / "storage" / "default__vector_store.json").read_text())
        moved = moved["embedding_dict"]
        points = [p for p in log.read_text().split() if p.startswith("persist.")]
        assert points[0] == "persist.written#1"
        assert len(points) == 1 + len(list(pristine.iterdir()))
    for point in points:
        shutil.rmtree(work / "storage")
        shutil.copytree(pristine, work / "storage")
        r = cli_with_fake_model(work, "finetune", "storage", "--gamma", "0.4", "--quiet",
                                NUDGE_RAG_KILL_AT=point)  # fmt: skip
        assert r.returncode == -9, (point, r.returncode, r.stderr)
        from llama_index.core import StorageContext, load_index_from_storage

        from nudge_rag.integrations.llamaindex import as_llamaindex_embedding

        ctx = StorageContext.from_defaults(persist_dir=str(work / "storage"))
        index = load_index_from_storage(ctx, embed_model=as_llamaindex_embedding(FakeEmbedder()))
        on_disk = dict(index.vector_store.data.embedding_dict)
        assert on_disk.keys() == original.keys(), point
        if moved is not None:
            assert on_disk in (original, moved), point  # whole old or whole new, never a mix
        else:  # killed after the vector store's file was switched in: the new vectors
            assert on_disk != original
        assert len(index.docstore.docs) == len(original), point
        code, _, err = run(capsys, "revert", "storage")
        assert code == 0, (point, err)
        back = json.loads((work / "storage" / "default__vector_store.json").read_text())
        assert back["embedding_dict"] == original, point


def test_revert_without_state_says_where_it_looked_and_exits_2(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    make_chroma(work / "cd", 64)
    code, _, err = run(capsys, "revert", "cd")  # never fine-tuned
    assert_clean_error(code, err, "no fine-tuning state", str(Path("cd") / "nudge_state" / "notes"))
    code, _, err = run(capsys, "finetune", "cd", "--gamma", "0.4", "--quiet")
    assert code == 0, err
    shutil.rmtree(work / "cd" / "nudge_state")  # the state is gone
    code, _, err = run(capsys, "revert", "cd")
    assert_clean_error(code, err, "no fine-tuning state", "nudge_state")
    code, _, err = run(capsys, "revert", "cd", "--state-dir", "elsewhere")
    assert_clean_error(code, err, "no fine-tuning state at 'elsewhere'")


def test_a_changed_store_is_never_advised_deleted(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "finetune", "docs", "--gamma", "0.2", "--quiet")[0] == 0
    (work / "docs" / "a.txt").write_text("Entirely new text about volcanoes.")
    code, _, err = run(capsys, "finetune", "docs", "--quiet")
    assert_clean_error(code, err, "built from other documents", "another --store or --collection")
    assert "delete" not in err.lower() and "remove" not in err.lower()
    # The command it offers (fine-tune the stored collection as it is) works when pasted.
    suggested = err.split("as it is: ")[1].strip()
    argv = shlex.split(suggested)
    assert argv == ["nudge-rag", "finetune", "nudge_store"]  # its only collection: no --collection
    code, _, err = run(capsys, *argv[1:], "--gamma", "0.3", "--quiet")
    assert code == 0, err


def test_unexpected_error_is_one_line_exit_1(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(show_progress: bool = False) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(sources, "default_embedder", boom)
    code, _, err = run(capsys, "finetune", "docs", "--quiet")
    assert code == 1 and "RuntimeError: disk on fire" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "finetune", "docs", "--quiet"])


# ---------------------------------------------------------------------------------------------
# as a user runs it: a subprocess, the real local model
# ---------------------------------------------------------------------------------------------
def _cli(cwd: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nudge_rag.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_subprocess_bad_input_exit_code_and_message(tmp_path: Path) -> None:
    r = _cli(tmp_path, "finetune", "missing_docs")
    assert r.returncode == 2
    assert r.stderr.startswith("nudge-rag: error: SOURCE 'missing_docs' does not exist")
    assert "Traceback" not in r.stderr
    r = _cli(tmp_path, "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


@pytest.mark.slow
def test_subprocess_real_model_documents_round_trip(work: Path) -> None:
    r = _cli(work, "finetune", "docs", "--chunk-size", "90", "--gamma", "0.3", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "records moved" in r.stdout
    store = work / "nudge_store"
    moved = chroma_vectors(store)
    assert len(next(iter(moved.values()))) == 384
    r = _cli(work, "generate-queries", "docs", "--chunk-size", "90", "--out", "q.json", "--quiet")
    assert r.returncode == 0, r.stderr
    r = _cli(
        work, "evaluate", "nudge_store", "--queries", "q.json", "--compare-to",
        "nudge_store/nudge_state/docs", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "NDCG@10" in r.stdout
    state = FinetuneState.load(store / "nudge_state" / "docs")
    assert state is not None
    r = _cli(work, "revert", "docs", "--quiet")
    assert r.returncode == 0, r.stderr
    # (Chroma caches segments per process: the revert is checked through its own report.)
    assert f"restored {len(state.ids)} record(s) to their original vectors" in r.stdout


@pytest.mark.slow
def test_subprocess_real_model_beir_paper_protocol(tmp_path: Path) -> None:
    make_beir(tmp_path / "beir", n_docs=20, n_queries=60)
    r = _cli(tmp_path, "finetune", "beir", "--quiet", "--out", "out")
    assert r.returncode == 0, r.stderr
    assert "no fine-tuning" in r.stdout and "nudge-n: test NDCG@10" in r.stdout
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["name"] for r in rows] == ["no fine-tuning", "nudge-n", "nudge-m"]


# -- --embed-model (issue 12) ------------------------------------------------------------------
class RotatedEmbedder(FakeEmbedder):
    """Another model of the same width: the bag-of-words vectors turned by a fixed rotation."""

    def __init__(self) -> None:
        super().__init__()
        self.turn = np.linalg.qr(np.random.default_rng(7).normal(size=(64, 64)))[0]

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return super().embed_documents(texts) @ self.turn

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return super().embed_queries(texts) @ self.turn


@pytest.fixture
def model_dirs(work: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Two sentence-transformers-shaped folders: same_model/ (loaded as the bag-of-words model
    the stores are built with) and other_model/ (a rotated one); LocalEmbedder is replaced by a
    stand-in that records the folders it was given (the list returned)."""
    loaded: list[Path] = []
    for name in ("same_model", "other_model"):
        (work / name).mkdir()
        (work / name / "modules.json").write_text("[]", encoding="utf-8")

    def local_embedder(model_path: Path, show_progress: bool = False) -> FakeEmbedder:
        loaded.append(Path(model_path).resolve())
        return RotatedEmbedder() if Path(model_path).name == "other_model" else FakeEmbedder()

    import nudge_rag.embedding

    monkeypatch.setattr(nudge_rag.embedding, "LocalEmbedder", local_embedder)
    return loaded


def test_embed_model_of_another_store_is_refused_before_any_write(
    work: Path, fake_model: None, model_dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = make_chroma(work / "chroma_dir", 64)  # built with the bag-of-words model
    code, _, err = run(
        capsys, "finetune", "chroma_dir", "--embed-model", "other_model", "--gamma", "0.3", "--quiet"
    )  # fmt: skip
    assert_clean_error(code, err, "does not look like the model that built", "median cosine")
    assert model_dirs == [work.resolve() / "other_model"]
    assert same_vectors(chroma_vectors(work / "chroma_dir"), before)
    assert not (work / "chroma_dir" / "nudge_state" / "notes" / "manifest.json").exists()


def test_embed_model_of_a_llamaindex_index_is_refused_before_any_write(
    work: Path, fake_model: None, model_dirs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_index.core")
    original = make_llamaindex(work, "storage")
    vs_file = work / "storage" / "default__vector_store.json"
    code, _, err = run(capsys, "finetune", "storage", "--embed-model", "other_model", "--quiet")
    assert_clean_error(code, err, "does not look like the model that built")
    assert json.loads(vs_file.read_text())["embedding_dict"] == original
    assert not (work / "storage" / "nudge_state").exists()


def test_embed_model_is_used_by_finetune_evaluate_and_revert(
    work: Path,
    model_dirs: list[Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_default(show_progress: bool = False) -> Any:
        raise AssertionError("the default model was used despite --embed-model")

    monkeypatch.setattr(sources, "default_embedder", no_default)
    before = make_chroma(work / "chroma_dir", 64)
    code, _, err = run(capsys, "finetune", "chroma_dir", "--embed-model", "same_model", "--gamma", "0.3", "--quiet")  # fmt: skip
    assert code == 0, err
    assert not same_vectors(chroma_vectors(work / "chroma_dir"), before, atol=1e-6)
    state = "chroma_dir/nudge_state/notes"
    write_queries(work / "q.json", {"q": ("note 1 about rivers number1", ["n1"])}, {"n1": "x"})
    code, _, err = run(
        capsys, "evaluate", "chroma_dir", "--queries", "q.json", "--embed-model", "./same_model",
        "--compare-to", state, "--plot", "cmp.png",
    )  # fmt: skip
    assert code == 0, err
    assert (work / "cmp.png").stat().st_size > 0
    code, _, err = run(capsys, "revert", "chroma_dir", "--embed-model", "same_model")
    assert code == 0, err
    assert same_vectors(chroma_vectors(work / "chroma_dir"), before, atol=1e-6)
    assert model_dirs == [work.resolve() / "same_model"] * 3


def test_bad_embed_model_is_refused_before_anything_is_built(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "finetune", "docs", "--embed-model", "no_such_model", "--quiet")
    assert_clean_error(code, err, "--embed-model 'no_such_model' is not a folder holding a sentence-transformers model")  # fmt: skip
    assert not (work / "nudge_store").exists()
    (work / "empty_model").mkdir()
    code, _, err = run(capsys, "evaluate", "docs", "--queries", "docs/a.txt", "--embed-model", "empty_model")  # fmt: skip
    assert_clean_error(code, err, "--embed-model 'empty_model'")
    # the shipped model's id is the default model
    assert sources.embedder_from("sentence-transformers/all-MiniLM-L6-v2") is None
    assert sources.embedder_from("all-MiniLM-L6-v2") is None


def test_help_documents_embed_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "--embed-model PATH_OR_ID" in out and "bge-small" in out
    for command in ("finetune", "evaluate", "revert", "generate-queries"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "--embed-model PATH_OR_ID" in out, command


def test_plot_gamma_panel_draws_the_state_curve_or_says_why_not(
    work: Path, fake_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "finetune", "docs", "--gamma", "0.5", "--chunk-size", "90", "--quiet"
    )
    assert code == 0, err
    curve, why = sources.state_curve(work / "nudge_store" / "nudge_state" / "docs")
    assert curve is None and why == "γ = 0.5 was fixed: no validation curve"
    code, _, err = run(capsys, "finetune", "docs", "--chunk-size", "90", "--quiet")  # γ chosen
    assert code == 0, err
    got, why = sources.state_curve(work / "nudge_store" / "nudge_state" / "docs")
    # the state now keeps the validation curve of a chosen γ: the panel draws it
    assert (
        why is None and got is not None and got.curve.objective == "ndcg@10"
    )  # method auto: held-out NDCG@10 per γ
    assert len(got.curve.gammas) == len(got.curve.scores) > 1
