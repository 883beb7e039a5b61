"""nudge_rag.sources: chunking, source detection, opening each kind, exact evaluation, revert."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nudge_rag import sources
from nudge_rag.errors import ConfigError, DatasetError, StateError, UnsupportedStoreError
from nudge_rag.testing import BagOfWordsEmbedder

DOCS = {
    "a.txt": "The mitochondria is the powerhouse of the cell.\n\nPhotosynthesis turns light "
    "into chemical energy stored in glucose.",
    "sub/b.md": "# Rivers\n\nRiver deltas form where a river meets the sea.\n\nCoral reefs are "
    "built by colonies of tiny polyps in warm shallow water.",
    ".hidden/c.txt": "never read",
}


class FakeEmbedder:
    def __init__(self) -> None:
        self.inner = BagOfWordsEmbedder(dim=64)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    for rel, text in DOCS.items():
        p = tmp_path / "docs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return tmp_path / "docs"


# ---------------------------------------------------------------------------------------------
# chunking (moved from the CLI's tests; the functions stay importable from nudge_rag.cli)
# ---------------------------------------------------------------------------------------------
def test_chunk_text_keeps_paragraphs_and_bounds_length() -> None:
    text = "One.\n\nTwo.\n\n" + "A long sentence here. " * 20 + "\n\n" + "x" * 50
    chunks = sources.chunk_text(text, max_chars=60)
    assert chunks[0].startswith("One.\n\nTwo.\n\nA long sentence here.")
    assert all(0 < len(c) <= 60 for c in chunks)
    assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace(
        "\n", ""
    )


def test_read_documents_ids_are_relative_path_and_number(docs: Path) -> None:
    chunks = sources.read_documents(docs, max_chars=60)
    assert list(chunks)[:2] == ["a.txt#0", "a.txt#1"]
    assert any(k.startswith("sub/b.md#") for k in chunks)
    assert not any(k.startswith(".hidden") for k in chunks)
    assert all(0 < len(v) <= 60 for v in chunks.values())
    assert list(sources.read_documents(docs / "a.txt", 1000)) == ["a.txt#0"]  # one file
    assert not any(k.startswith("sub/") for k in sources.read_documents(docs, exclude=docs / "sub"))


def test_read_documents_refuses_binary_and_empty(docs: Path) -> None:
    (docs / "bad.txt").write_bytes(b"caf\xe9 \xff")
    with pytest.raises(DatasetError, match=r"bad\.txt: not UTF-8"):
        sources.read_documents(docs)
    (docs.parent / "blank").mkdir()
    (docs.parent / "blank" / "a.md").write_text("  \n")
    with pytest.raises(DatasetError, match="hold no text"):
        sources.read_documents(docs.parent / "blank")


# ---------------------------------------------------------------------------------------------
# detection, the LLM factory
# ---------------------------------------------------------------------------------------------
def test_detect_kind(tmp_path: Path, docs: Path) -> None:
    assert sources.detect_kind(docs) == "documents"
    assert sources.detect_kind(docs / "a.txt") == "documents"
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    (tmp_path / "beir" / "corpus.jsonl").write_text("")
    assert sources.detect_kind(tmp_path / "beir") == "beir"
    (tmp_path / "li").mkdir()
    (tmp_path / "li" / "docstore.json").write_text("{}")
    assert sources.detect_kind(tmp_path / "li") == "llamaindex"
    (tmp_path / "ch").mkdir()
    (tmp_path / "ch" / "chroma.sqlite3").write_text("")
    assert sources.detect_kind(tmp_path / "ch") == "chroma"
    with pytest.raises(DatasetError, match="does not exist"):
        sources.detect_kind(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        sources.detect_kind(tmp_path / "empty")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(UnsupportedStoreError, match="unknown kind"):
        sources.detect_kind(tmp_path / "x.pdf")


def test_load_llm_factory_or_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "llms_for_test.py").write_text(
        "def make():\n    return lambda p: 'q?'\ndef answer(prompt):\n    return 'a?'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert sources.load_llm("llms_for_test:make")("x") == "q?"
    assert sources.load_llm("llms_for_test:answer")("x") == "a?"
    for spec, needle in [("nocolon", "module:function"), ("llms_for_test:zz", "no attribute")]:
        with pytest.raises(ConfigError, match=needle):
            sources.load_llm(spec)


def test_importing_sources_loads_no_framework() -> None:
    code = (
        "import sys; before = set(sys.modules); import nudge_rag.sources\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - {'nudge_rag', 'numpy'} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------
# opening: documents (build / open / read)
# ---------------------------------------------------------------------------------------------
def test_open_documents_modes(tmp_path: Path, docs: Path) -> None:
    store = tmp_path / "store"
    read = sources.open_source(docs, store=store, mode="read", chunk_size=60)
    assert read.store is None and read.chunks() == sources.read_documents(docs, 60)
    assert not store.exists()  # reading the chunks builds nothing
    with pytest.raises(DatasetError, match="no store for"):
        sources.open_source(docs, store=store, mode="open")
    built = sources.open_source(docs, store=store, chunk_size=60, embed_model=FakeEmbedder())
    assert built.collection == "docs" and built.state_dir == store / "nudge_state" / "docs"
    assert built.adapter().count() == len(read.chunks())
    (docs / "a.txt").write_text("changed")
    with pytest.raises(ConfigError, match="built from other documents"):
        sources.open_source(docs, store=store, chunk_size=60, embed_model=FakeEmbedder())
    # revert opens the stored collection as it is, whatever the documents say now
    opened = sources.open_source(docs, store=store, mode="open", embed_model=FakeEmbedder())
    assert opened.kind == "documents" and opened.adapter().count() == len(read.chunks())


# ---------------------------------------------------------------------------------------------
# exact evaluation: the store's similarity, page by page, equal to brute force
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_exact_ranking_matches_brute_force_over_pages(
    tmp_path: Path, space: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chromadb

    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(23, 8)) * rng.uniform(0.5, 2.0, size=(23, 1))  # not unit length
    vecs[5] = vecs[4]  # a tie: the earlier record ranks first
    ids = [f"r{i:02d}" for i in range(23)]
    client = chromadb.PersistentClient(path=str(tmp_path / "c"))
    col = client.create_collection("col", configuration={"hnsw": {"space": space}})
    col.add(ids=ids, embeddings=vecs.tolist(), documents=[f"t{i}" for i in ids])
    src = sources.open_source(tmp_path / "c", embed_model=FakeEmbedder())
    monkeypatch.setattr(sources, "PAGE", 4)  # 6 pages
    q = rng.normal(size=(7, 8))
    q[0] = vecs[4] * 3
    v32 = vecs.astype(np.float32).astype(np.float64)  # what Chroma keeps
    if space == "l2":
        scores = -((q[:, None, :] - v32[None, :, :]) ** 2).sum(-1)
    elif space == "ip":
        scores = q @ v32.T
    else:
        scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            v32 / np.linalg.norm(v32, axis=1, keepdims=True)
        ).T
    expected = [[ids[j] for j in np.argsort(-s, kind="stable")[:5]] for s in scores]
    ranked, seen = src._ranked(q, 5, None)
    assert seen == set(ids)
    # equal scores can differ in the last bits between the two computations: compare sets of
    # clearly separated ranks, and the tie order where it is exact
    for got, exp, s in zip(ranked, expected, scores, strict=True):
        top = np.sort(s)[::-1]
        if top[4] - top[5] > 1e-9:
            assert set(got) == set(exp)
    assert ranked[0][:2] == ["r04", "r05"]
    # substituted vectors are used instead of the stored ones
    ranked, _ = src._ranked(q[:1], 2, {"r04": -q[0], "r05": -q[0]})
    assert not {"r04", "r05"} & set(ranked[0])


def test_evaluate_names_the_missing_ids(tmp_path: Path, docs: Path) -> None:
    src = sources.open_source(docs, store=tmp_path / "s", embed_model=FakeEmbedder())
    with pytest.raises(DatasetError, match="none of the 1 relevant ids"):
        src.evaluate([("rivers", ["elsewhere"])], k=3)
    res = src.evaluate([("river deltas sea", ["sub/b.md#0"])], k=3)
    assert res.hit_rate == 1.0


# ---------------------------------------------------------------------------------------------
# finetune, revert, and the command that undoes a run
# ---------------------------------------------------------------------------------------------
def test_finetune_then_revert_with_state_beside_the_store(tmp_path: Path, docs: Path) -> None:
    src = sources.open_source(docs, store=tmp_path / "s", chunk_size=60, embed_model=FakeEmbedder())
    before = {
        p.ids[i]: p.embeddings[i].copy()
        for p in src.adapter().iter_pages(100)
        for i in range(len(p.ids))
    }
    with pytest.raises(StateError, match=r"no fine-tuning state at .*nudge_state"):
        src.revert()
    qs = [(" ".join(text.split()[:3]), [rid]) for rid, text in src.chunks().items()]
    run = src.finetune(qs, gamma=0.4)
    assert run.report.written and run.state_dir == src.state_dir
    assert json.loads(json.dumps(run.to_dict()))["report"]["n_moved"] == run.report.n_moved
    assert "records moved" in run.summary() and "state (originals, for revert)" in run.summary()
    argv = shlex.split(run.revert_command())
    assert argv == ["nudge-rag", "revert", str(tmp_path / "s")]
    rep = src.revert()
    assert rep.ok and rep.n_restored > 0  # (a 3-word chunk equals its query: it did not move)
    assert rep.n_restored + rep.n_already_original == run.report.n_moved
    after = {
        p.ids[i]: p.embeddings[i] for p in src.adapter().iter_pages(100) for i in range(len(p.ids))
    }
    assert all(np.allclose(after[k], before[k], atol=1e-6) for k in before)
    again = src.revert()  # the state says: already reverted
    assert again.n_restored == 0 and "reverted" in again.note


def test_revert_args_quote_paths_and_name_only_what_is_needed(tmp_path: Path) -> None:
    src = sources.Source(
        "llamaindex",
        Path("x"),
        state_dir=Path("my index") / "nudge_state",
        store_dir=Path("my index"),
    )
    assert src.revert_args() == ["'my index'"]
    assert src.revert_args(Path("my index") / "nudge_state") == ["'my index'"]
    assert shlex.split(" ".join(src.revert_args("-st ate"))) == [
        "my index", "--state-dir", "./-st ate"
    ]  # fmt: skip


def test_beir_source_is_never_modified(tmp_path: Path) -> None:
    (tmp_path / "b" / "qrels").mkdir(parents=True)
    (tmp_path / "b" / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    (tmp_path / "b" / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "y"}) + "\n")
    src = sources.open_source(tmp_path / "b", mode="read")
    assert src.kind == "beir" and src.chunks() == {"d1": "x"}
    with pytest.raises(ConfigError, match="never modified"):
        src.revert()


def test_bench_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    if sources._benchmarks_dir() is not None:
        cmds = sources.bench_commands("data", quick=True)
        assert [Path(c[1]).name for c in cmds] == ["bench_quality.py", "bench_scale.py"]
        assert "--skip-finetune" in cmds[0]
    monkeypatch.setattr(sources, "_benchmarks_dir", lambda: None)
    with pytest.raises(DatasetError, match="checkout"):
        sources.bench_commands()
