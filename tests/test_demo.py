"""``make demo`` (nudge_rag.demo) and the CLI's ``--embed-backend``, with the bag-of-words model.

The demo's two steps run on small hand-made data: 10-K-shaped LlamaIndex QA files (two questions
per chunk) and a BEIR folder; the local model is replaced by the deterministic test model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag import cli, demo, embedding, sources
from nudge_rag.testing import BagOfWordsEmbedder
from tests.beir_files import write_beir_folder

TOPICS = [
    "mitochondria powerhouse cell energy", "river delta sediment sea", "coral reef polyps warm",
    "solar wind charged particles", "neural network gradient descent", "protein folding chain shape",
    "glacier ice melt mountain", "volcano lava eruption magma", "desert dune sand wind",
    "forest canopy tree leaves", "ocean tide moon gravity", "comet tail ice dust",
]  # fmt: skip


class Fake:
    """Ours-shaped (embed_documents / embed_queries / as_langchain) over the bag-of-words model."""

    backend = "torch"
    cache_dir = Path("/nowhere")

    def __init__(self) -> None:
        self.inner = BagOfWordsEmbedder(dim=64)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(list(texts))

    def as_langchain(self) -> Any:
        return self.inner.as_langchain()


def write_tenk(root: Path, n: int = 48) -> Path:
    """``root/llamaindex_qa/run-llama-finetune-embedding/{train,val}_dataset.json``: n chunks,
    two questions each (the second one shares a rare word with its chunk)."""
    folder = root / demo.TENK_FOLDER
    folder.mkdir(parents=True)
    for name, half in (("train_dataset.json", 0), ("val_dataset.json", 1)):
        corpus, queries, rel = {}, {}, {}
        for i in range(half, n, 2):
            topic = TOPICS[i % len(TOPICS)]
            corpus[f"c{i}"] = f"{topic} report number{i} section{i % 5}"
            for j, q in enumerate((f"what about {topic}", f"number{i} {topic.split()[0]}")):
                queries[f"q{i}-{j}"] = q
                rel[f"q{i}-{j}"] = [f"c{i}"]
        data = {"corpus": corpus, "queries": queries, "relevant_docs": rel, "mode": "text"}
        (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


def write_scifact(root: Path) -> Path:
    corpus = {f"d{i}": f"{TOPICS[i % len(TOPICS)]} study {i}" for i in range(24)}
    queries = {f"q{i}": f"{TOPICS[i % len(TOPICS)].split()[1]} question {i}" for i in range(60)}
    rows = [(f"q{i}", f"d{i % 24}", 1) for i in range(60)]
    return write_beir_folder(
        root / "scifact", corpus, queries, {"train": rows[:40], "test": rows[40:]}
    )


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """LocalEmbedder replaced by Fake; the list records the keyword arguments of each one."""
    made: list[dict[str, Any]] = []

    def make(*args: Any, **kwargs: Any) -> Fake:
        made.append({"args": args, **kwargs})
        return Fake()

    monkeypatch.setattr(embedding, "LocalEmbedder", make)
    monkeypatch.setattr(sources, "default_embedder", lambda show_progress=False: make())
    return made


def test_sister_split_protocol() -> None:
    qs = {f"c{i}": [f"q{i}a", f"q{i}b"] for i in range(80)}
    qs["lonely"] = ["only question"]
    train, test = demo.sister_split(qs, seed=3)
    both = {c for c in qs if sum(c == t for _, t in train) == 2}
    assert len(both) == 10  # 1/8 of the 80 chunks with two questions
    assert {c for _, c in train} == set(qs)  # every chunk trains
    assert {c for _, c in test} == set(qs) - both - {"lonely"}  # the other sisters test
    assert not {q for q, _ in train} & {q for q, _ in test}
    assert demo.sister_split(qs, seed=3) == (train, test)  # seeded


def test_find_data(tmp_path: Path) -> None:
    assert demo.find_data(str(tmp_path)) == (None, None)
    tenk = write_tenk(tmp_path)
    sci = write_scifact(tmp_path)
    assert demo.find_data(str(tmp_path)) == (tenk, sci)
    assert demo.find_data(str(sci)) == (None, sci)  # one BEIR folder: its table only


def test_no_data_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "make demo ARGS=PATH" in err and "corpus.jsonl" in err and "train_dataset.json" in err


def test_demo_runs_both_steps(
    tmp_path: Path, fake_local: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    write_tenk(tmp_path)
    write_scifact(tmp_path)
    assert demo.main([str(tmp_path), "--quiet", "--embed-backend", "onnx-int8"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] 10-K filings (Lyft, Uber): 48 chunks, 54 questions" in out  # 48 + 48 // 8
    assert "method='auto' chose: " in out and "sister questions  NDCG@10 " in out
    assert "first result after" in out
    assert "[2/2] The NUDGE paper's protocol" in out and "no fine-tuning" in out
    assert "nudge-n" in out and "nudge-m" in out
    assert fake_local[0]["backend"] == "onnx-int8"


def test_demo_on_one_beir_folder_skips_the_10k(
    tmp_path: Path, fake_local: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    sci = write_scifact(tmp_path)
    assert demo.main([str(sci), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[1/2] skipped" in out and "no fine-tuning" in out


# -- the CLI flag -------------------------------------------------------------------------------
def test_cli_embed_backend_reaches_the_local_model(
    tmp_path: Path, fake_local: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    sci = write_scifact(tmp_path)
    assert cli.main(["finetune", str(sci), "--embed-backend", "onnx", "--quiet"]) == 0
    assert "all-MiniLM-L6-v2 on onnx" in capsys.readouterr().out
    assert [m["backend"] for m in fake_local] == ["onnx"]
    fake_local.clear()
    assert cli.main(["finetune", str(sci), "--quiet"]) == 0  # no flag: the default embedder
    assert fake_local == [{"args": ()}]


def test_cli_refuses_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["finetune", "x", "--embed-backend", "tensorrt"]) == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
