"""The frameworks' conventions kept: Settings defaults, retriever options passed through,
LlamaIndex source-document ids, cached generation, degenerate LLMs refused with the real cause,
a model of the wrong space refused, short reprs."""

from __future__ import annotations

import pytest
from topics import N, questions, texts

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import ConfigError, QueryGenerationError
from nudge_rag.testing import BagOfWordsEmbedder


@pytest.fixture
def settings_reset():
    from llama_index.core import Settings

    old_embed, old_llm = Settings._embed_model, Settings._llm
    yield Settings
    Settings._embed_model, Settings._llm = old_embed, old_llm


def _simple_store(emb):
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    vs = SimpleVectorStore()
    nodes = [
        TextNode(id_=f"d{i}", text=t, embedding=emb.embed_one(t)) for i, t in enumerate(texts())
    ]
    vs.add(nodes)
    return vs


def test_settings_embed_model_embeds_the_queries_of_a_bare_store(settings_reset, tmp_path):
    emb = BagOfWordsEmbedder(dim=64)
    vs = _simple_store(emb)
    with pytest.raises(ConfigError, match=r"Settings\.embed_model"):
        NudgeEmbeddingFinetuner(vs).finetune(questions())
    settings_reset.embed_model = emb.as_llamaindex()
    ft = NudgeEmbeddingFinetuner(vs, val_fraction=0.3)
    ft.finetune(questions())
    assert ft.report is not None and ft.report.n_train > 0 and ft.report.written


class _ScriptedLLM:
    """A LlamaIndex CustomLLM factory: questions made from each chunk's own words."""

    @staticmethod
    def make(counter: list[int], echo: bool = False):
        from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata

        class Scripted(CustomLLM):
            @property
            def metadata(self) -> LLMMetadata:
                return LLMMetadata()

            def complete(self, prompt: str, formatted: bool = False, **kw) -> CompletionResponse:
                counter[0] += 1
                if echo:
                    return CompletionResponse(text='["What does the document say?"]')
                words = [w for w in prompt.split() if w.startswith(("topic", "alpha"))]
                topic = next((w for w in words if w.startswith("topic")), "topic")
                return CompletionResponse(
                    text=f'["what is said of {topic}?", "which record covers {topic} here?"]'
                )

            def stream_complete(self, prompt: str, formatted: bool = False, **kw):
                raise NotImplementedError

        return Scripted()


def test_settings_llm_writes_the_queries_and_its_answers_are_cached(settings_reset):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    emb = BagOfWordsEmbedder(dim=64)
    nodes = [TextNode(id_=f"d{i}", text=t) for i, t in enumerate(texts())]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(), embed_model=emb.as_llamaindex()
    )
    calls = [0]
    settings_reset.llm = _ScriptedLLM.make(calls)
    ft = NudgeEmbeddingFinetuner(index, gamma=0.1)
    ft.finetune()
    assert calls[0] == N  # one call per chunk, through Settings.llm (not the offline generator)
    assert ft.generated is not None and len(ft.generated.queries) == 2 * N
    assert (ft.state_path / "queries.jsonl").is_file()
    ft2 = NudgeEmbeddingFinetuner(index, gamma=0.1)
    ft2.finetune()
    assert calls[0] == N  # the second run paid nothing: answers came from the state's cache


def test_an_echoing_llm_is_refused_with_the_real_cause(settings_reset):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    emb = BagOfWordsEmbedder(dim=64)
    nodes = [TextNode(id_=f"d{i}", text=t) for i, t in enumerate(texts())]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(), embed_model=emb.as_llamaindex()
    )
    before = {k: list(v) for k, v in index.vector_store.data.embedding_dict.items()}
    settings_reset.llm = _ScriptedLLM.make([0], echo=True)
    with pytest.raises(QueryGenerationError, match="same question for several chunks"):
        NudgeEmbeddingFinetuner(index).finetune()
    assert index.vector_store.data.embedding_dict == before  # nothing written


def test_source_document_ids_stand_for_their_nodes():
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    emb = BagOfWordsEmbedder(dim=64)
    docs = [
        Document(text=f"{texts()[i]}. Second sentence about gamma{i}.", doc_id=f"doc{i}")
        for i in range(N)
    ]
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(),
        embed_model=emb.as_llamaindex(),
        transformations=[SentenceSplitter(chunk_size=16, chunk_overlap=0)],
    )
    node_ids = set(index.docstore.get_ref_doc_info("doc3").node_ids)
    assert len(node_ids) >= 1
    pairs = [
        (f"question alpha{(d + 1) % 7} topic{d} v{i}", [f"doc{d}"])
        for i in range(3)
        for d in range(12)
    ]
    ft = NudgeEmbeddingFinetuner(index, gamma=0.2)
    ft.finetune(pairs)
    assert ft.report is not None and ft.report.n_moved > 0
    moved = set(ft.report.moved_ids)
    assert not any(m.startswith("doc") for m in moved)  # node ids, never the document ids
    assert node_ids & moved


def test_retriever_options_reach_the_frameworks(lc_topics):
    ft = NudgeEmbeddingFinetuner(lc_topics, gamma=0.1)
    r = ft.finetune(
        questions(),
        similarity_top_k=5,
        retriever_kwargs={"search_kwargs": {"filter": lambda d: d.metadata["tag"] == "t1"}},
    )
    docs = r.invoke("question alpha2 topic1")
    assert 0 < len(docs) <= 5
    assert all(d.metadata["tag"] == "t1" for d in docs)
    r2 = ft.retriever(
        3, search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99}
    )
    assert r2.search_type == "similarity_score_threshold"
    assert r2.search_kwargs == {"score_threshold": 0.99, "k": 3}


def test_llamaindex_filters_reach_the_retriever():
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

    emb = BagOfWordsEmbedder(dim=64)
    nodes = [
        TextNode(id_=f"d{i}", text=t, metadata={"tag": f"t{i % 2}"}) for i, t in enumerate(texts())
    ]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(), embed_model=emb.as_llamaindex()
    )
    ft = NudgeEmbeddingFinetuner(index, gamma=0.1)
    filters = MetadataFilters(filters=[ExactMatchFilter(key="tag", value="t1")])
    r = ft.finetune(questions(), similarity_top_k=4, retriever_kwargs={"filters": filters})
    got = r.retrieve("question alpha2 topic1")
    assert 0 < len(got) <= 4
    assert all(n.node.metadata["tag"] == "t1" for n in got)


def test_a_model_of_another_space_is_refused_before_anything_is_written(lc_topics):
    before = {k: list(v["vector"]) for k, v in lc_topics.store.items()}
    other = BagOfWordsEmbedder(vocabulary=[f"w{i}" for i in range(63)] + ["topic1"])
    assert other.dim == 64  # same width, unrelated space
    ft = NudgeEmbeddingFinetuner(lc_topics, embed_model=other.as_langchain(), gamma=0.1)
    with pytest.raises(ConfigError, match="does not look like the model that built"):
        ft.finetune(questions())
    assert {k: list(v["vector"]) for k, v in lc_topics.store.items()} == before
    ok = NudgeEmbeddingFinetuner(
        lc_topics, embed_model=other.as_langchain(), gamma=0.1, check_model=False
    )
    assert ok.check_model is False


def test_reprs_stay_short_however_many_records_move(lc_topics):
    pairs = [
        (f"question alpha{d % 7} topic{d} v{i}", [f"d{d}"]) for i in range(2) for d in range(N)
    ]
    ft = NudgeEmbeddingFinetuner(lc_topics, gamma=0.1)
    ft.finetune(pairs)
    assert ft.report is not None and ft.report.n_moved >= 30
    assert len(repr(ft)) < 250 and "d17" not in repr(ft)
    assert len(repr(ft.report)) < 250 and "d17" not in repr(ft.report)
    back = ft.revert()
    assert back.n_restored == ft.report.n_moved
    assert len(repr(back)) < 250
    assert ft.report.to_dict()["moved_ids"] == ft.report.moved_ids
