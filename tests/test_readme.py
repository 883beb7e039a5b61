"""The README quickstarts and the code of the docs pages run as written: their code blocks are
extracted and executed in a fresh process on a folder of documents, with only the LLM replaced by
a scripted one (no LLM is reachable here). Everything else (the local embedding model, the
stores, nudge_rag) is real.

A docs page's blocks run in order as one script (they build on each other), after the page's
set-up in ``SETUP`` (the store, the queries or the files its text says you have); a block that
cannot run here carries ``<!-- docs-test: skip: REASON -->`` on the line before it. The
quickstarts live in README.md and are included into docs/quickstart.md (``--8<--`` sections,
pymdownx.snippets): they run once, from the README. The README stays short and points at the
docs; every page is in the site's nav, and the API reference holds the whole public API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Twelve short documents on distinct topics, the "docs/" folder the quickstarts read.
DOCS = {
    "refunds": "Refunds are issued within 14 days of a return. The refund policy covers unopened items only.",
    "shipping": "Standard shipping takes 3 to 5 business days. Express shipping arrives the next day.",
    "warranty": "Every appliance carries a two year warranty against manufacturing defects.",
    "accounts": "To reset a password, open the account page and follow the emailed link.",
    "api": "API keys can be rotated from the developer console; old keys stop working after one hour.",
    "billing": "Invoices are sent on the first day of each month and can be paid by card or transfer.",
    "privacy": "Personal data is stored in the European Union and deleted on request within 30 days.",
    "support": "Support is available by chat from 8am to 8pm, and by email at any time.",
    "stores": "Our physical stores open at 9am on weekdays and at 10am on Saturdays.",
    "gifts": "Gift cards never expire and can be combined with any other discount.",
    "recycling": "Old devices can be dropped at any store for free recycling.",
    "loyalty": "Loyalty points are earned on every purchase and redeemed at checkout.",
}

STUBS = '''
import json as _json
import re as _re

def _questions(prompt: str) -> str:
    """Two questions made of the chunk's own words (what a scripted LLM can do)."""
    m = _re.search(r"-{5,}\\n(.*?)\\n-{5,}", prompt, _re.S)
    words = _re.findall(r"[A-Za-z]{4,}", m.group(1) if m else prompt)
    first, rest = " ".join(words[:4]), " ".join(words[4:8])
    return _json.dumps([f"what about {first}?", f"how does {rest} work?"])

def _stub_llamaindex_llm():
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata

    class ScriptedLLM(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        def complete(self, prompt, formatted=False, **kw):
            if "Context information is below" in prompt and "JSON list" in prompt:
                return CompletionResponse(text=_questions(prompt))
            return CompletionResponse(text="An answer from the retrieved context.")

        def stream_complete(self, prompt, formatted=False, **kw):
            yield self.complete(prompt)

    return ScriptedLLM()

def _stub_chat_model():
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class ScriptedChat(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _generate(self, messages, stop=None, run_manager=None, **kw):
            text = "\\n".join(str(m.content) for m in messages)
            reply = (
                _questions(text)
                if "Context information is below" in text and "JSON list" in text
                else "An answer from the retrieved context."
            )
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])

    return ScriptedChat()
'''

# The only lines changed: the LLM's import and constructor.
LLM_SWAPS = {
    "LlamaIndex": [
        (r"^from llama_index\.llms\.openai import OpenAI\n", ""),
        (r"OpenAI\(model=\"gpt-4o-mini\"\)", "_stub_llamaindex_llm()"),
    ],
    "LangChain": [
        (r"^from langchain_openai import ChatOpenAI\n", ""),
        (r"ChatOpenAI\(model=\"gpt-4o-mini\"\)", "_stub_chat_model()"),
    ],
}


def quickstart(section: str) -> str:
    """The code block of ``### <section>`` under ``## Quickstart``, with the LLM swapped."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quickstart", 1)[1]
    block = quick.split(f"### {section}\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S)
    assert code is not None, f"no python block under ### {section}"
    src = code.group(1)
    for pattern, repl in LLM_SWAPS[section]:
        src, n = re.subn(pattern, repl, src, flags=re.M)
        assert n == 1, f"{section}: expected one line matching {pattern!r}"
    return STUBS + "\n" + src


def run_quickstart(section: str, tmp_path: Path) -> str:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / f"{name}.txt").write_text(text, encoding="utf-8")
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart(section), encoding="utf-8")
    env = {
        **os.environ,
        "NUDGE_RAG_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, textwrap.shorten(out.stderr[-3000:], 3000)
    return out.stdout


@pytest.mark.slow
def test_llamaindex_quickstart_runs_as_written(tmp_path: Path) -> None:
    out = run_quickstart("LlamaIndex", tmp_path)
    assert "auto: γ=" in out and "records moved" in out and "chosen: " in out  # the summary
    assert "An answer from the retrieved context." in out  # the query engine answered


@pytest.mark.slow
def test_langchain_quickstart_runs_as_written(tmp_path: Path) -> None:
    out = run_quickstart("LangChain", tmp_path)
    assert out.strip().endswith("An answer from the retrieved context.")


def test_the_quickstarts_are_short_and_swap_only_the_llm() -> None:
    for section in LLM_SWAPS:
        src = quickstart(section).split(STUBS, 1)[1]
        assert len([line for line in src.splitlines() if line.strip()]) <= 20
        assert "_stub_" in src


# -- the docs pages ------------------------------------------------------------------------------
DOCS_DIR = REPO / "docs"
INCLUDE = re.compile(r'^--8<-- "(?P<file>[^":]+):(?P<section>[^"]+)"$', re.M)
BLOCK = re.compile(
    r"(?:<!-- docs-test: skip: (?P<skip>[^>]*?) -->\n\n?)?```python\n(?P<code>.*?)```", re.S
)

#: What each page's text says you already have, built small and offline.
_CORPUS = (
    f"TEXTS = {list(DOCS.values())!r}\n"
    + """
QUESTIONS = [  # three per text, each made of that text's words
    (f"{' '.join(t.split()[i:i + 4])}?", d) for d, t in enumerate(TEXTS) for i in (0, 3, 6)
]
"""
)
SETUP = {
    "judge.md": _CORPUS
    + """
from langchain_core.vectorstores import InMemoryVectorStore
from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.testing import BagOfWordsEmbedder

vector_store = InMemoryVectorStore(embedding=BagOfWordsEmbedder(dim=256).as_langchain())
vector_store.add_texts(TEXTS * 4, ids=[f"doc-{i}" for i in range(4 * len(TEXTS))])
_served = NudgeEmbeddingFinetuner(vector_store)  # what the chatbot logged before
for _q, _d in QUESTIONS:
    _served.record(_q, [f"doc-{_d}"])

def my_llm(prompt: str) -> str:  # a scripted LLM: passage 1 answers every question
    return "1"
""",
    "index.md": _CORPUS
    + """
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode
from nudge_rag.testing import BagOfWordsEmbedder

nodes = [TextNode(id_=f"node-{i}", text=t) for i, t in enumerate(TEXTS)]
index = VectorStoreIndex(nodes, embed_model=BagOfWordsEmbedder(dim=256).as_llamaindex())
train_queries = [(q, [f"node-{d}"]) for q, d in QUESTIONS]
""",
    "learning.md": _CORPUS
    + """
import json
from langchain_core.vectorstores import InMemoryVectorStore
from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.testing import BagOfWordsEmbedder

store = InMemoryVectorStore(embedding=BagOfWordsEmbedder(dim=256).as_langchain())
store.add_texts(TEXTS * 4, ids=[f"doc-{i}" for i in range(4 * len(TEXTS))])
with open("past_tickets.json", "w") as f:  # LlamaIndex's QA dataset layout
    json.dump({"queries": {str(j): q for j, (q, _) in enumerate(QUESTIONS)}, "corpus": {},
               "relevant_docs": {str(j): [f"doc-{d}"] for j, (_, d) in enumerate(QUESTIONS)}}, f)
""",
    "evaluation.md": _CORPUS
    + """
import json
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode
from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.testing import BagOfWordsEmbedder

nodes = [TextNode(id_=f"node-{i}", text=t) for i, t in enumerate(TEXTS)]
index = VectorStoreIndex(nodes, embed_model=BagOfWordsEmbedder(dim=256).as_llamaindex())
retriever = index.as_retriever(similarity_top_k=10)
with open("heldout.json", "w") as f:
    json.dump({"queries": {str(j): q for j, (q, _) in enumerate(QUESTIONS[1::3])}, "corpus": {},
               "relevant_docs": {str(j): [f"node-{d}"] for j, (_, d) in enumerate(QUESTIONS[1::3])}}, f)
ft = NudgeEmbeddingFinetuner(index, method="nudge-n")
ft.finetune([(q, [f"node-{d}"]) for q, d in QUESTIONS[0::3] + QUESTIONS[2::3]])
""",
    "core.md": """
import numpy as np

rng = np.random.default_rng(0)
record_vectors = rng.normal(size=(40, 16)).astype(np.float32)
record_vectors /= np.linalg.norm(record_vectors, axis=1, keepdims=True)
query_vectors = rng.normal(size=(3, 16)).astype(np.float32)
""",
}


def expand_includes(text: str) -> str:
    """``--8<-- "FILE:SECTION"`` lines replaced by that section of FILE, as mkdocs renders them."""

    def section(m: re.Match[str]) -> str:
        src = (REPO / m["file"]).read_text(encoding="utf-8")
        start, end = f"--8<-- [start:{m['section']}]", f"--8<-- [end:{m['section']}]"
        assert start in src and end in src, f"no section {m['section']!r} in {m['file']}"
        body = src.split(start, 1)[1].split(end, 1)[0]
        return body.split("\n", 1)[1].rsplit("\n", 1)[0]  # drop the marker lines' remains

    return INCLUDE.sub(section, text)


def docs_pages() -> list[Path]:
    return sorted(DOCS_DIR.glob("*.md"))


def page_blocks(page: Path) -> list[tuple[str, str | None]]:
    """``(code, skip reason or None)`` of each python block of ``page``, includes expanded."""
    text = expand_includes(page.read_text(encoding="utf-8"))
    return [(m["code"], m["skip"]) for m in BLOCK.finditer(text)]


def included_blocks(page: Path) -> list[str]:
    """The python blocks of ``page`` that come from README.md (they run from there)."""
    text = page.read_text(encoding="utf-8")
    return [
        code for m in INCLUDE.finditer(text) for code, _ in page_blocks_of(expand_includes(m[0]))
    ]


def page_blocks_of(text: str) -> list[tuple[str, str | None]]:
    return [(m["code"], m["skip"]) for m in BLOCK.finditer(text)]


def runnable_pages() -> list[str]:
    out = []
    for page in docs_pages():
        inc = included_blocks(page)
        if any(skip is None and code not in inc for code, skip in page_blocks(page)):
            out.append(page.name)
    return out


def docs_script(name: str) -> str:
    page = DOCS_DIR / name
    inc = included_blocks(page)
    code = "\n".join(c for c, skip in page_blocks(page) if skip is None and c not in inc)
    return STUBS + "\n" + SETUP.get(name, "") + "\n" + code


def test_every_docs_page_with_code_runs_here_and_every_skip_says_why() -> None:
    pages = runnable_pages()
    assert {"index.md", "learning.md", "evaluation.md", "core.md"} <= set(pages)
    assert set(SETUP) <= set(pages), "set-up for a page with no code to run"
    for page in docs_pages():
        for _code, skip in page_blocks(page):
            assert skip is None or len(skip) > 20, (page.name, skip)
    skipped = [(p.name, s) for p in docs_pages() for _, s in page_blocks(p) if s]
    assert len(skipped) <= 2, skipped  # skipping is the exception
    # the quickstarts on the docs site are the README's, word for word
    quick = included_blocks(DOCS_DIR / "quickstart.md")
    readme_blocks = [c for c, _ in page_blocks_of((REPO / "README.md").read_text(encoding="utf-8"))]
    assert len(quick) == 2 and all(b in readme_blocks for b in quick)
    assert quickstart("LlamaIndex").endswith(
        quick[0]
        .replace("from llama_index.llms.openai import OpenAI\n", "")
        .replace('OpenAI(model="gpt-4o-mini")', "_stub_llamaindex_llm()")
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", runnable_pages())
def test_docs_page_code_runs_as_written(name: str, tmp_path: Path) -> None:
    script = tmp_path / "page.py"
    script.write_text(docs_script(name), encoding="utf-8")
    env = {**os.environ, "NUDGE_RAG_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, textwrap.shorten(out.stderr[-3000:], 3000)


def test_the_api_reference_holds_the_whole_public_api() -> None:
    import nudge_rag

    api = (DOCS_DIR / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: nudge_rag\.(\w+)$", api, re.M))
    assert set(nudge_rag.__all__) <= documented, set(nudge_rag.__all__) - documented


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = re.findall(r"^\s+- [^:#]+: ([\w./-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert sorted(nav) == sorted(p.name for p in docs_pages())
    assert "safety.md" in nav


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for head in ("## Install", "## Set-up on a fresh machine: two commands", "## Quickstart",
                 "### LlamaIndex", "### LangChain", "## Results", "## Documentation"):  # fmt: skip
        assert f"\n{head}\n" in readme, head
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local and all((REPO / link).exists() for link in local), local
    assert {p.name for p in docs_pages()} - {"index.md"} <= {Path(x).name for x in local}
    # the docs' home page shows the README's results, number for number
    results = readme.split("<!-- results:start -->", 1)[1].split("<!-- results:end -->", 1)[0]
    index = (DOCS_DIR / "index.md").read_text(encoding="utf-8")
    assert all(row in index for row in results.splitlines() if row.startswith("|"))
    # what moved out of the README is in the docs, not lost
    docs = "\n".join(p.read_text(encoding="utf-8") for p in docs_pages())
    for moved in ("## What is safe", "## What stays your job", "<!-- bench:start -->",
                  "<!-- which:start -->", "<!-- chat:start -->", "nudge-rag finetune",
                  "Another store", "Supported stores", "NUDGE-M's γ is exact"):  # fmt: skip
        assert moved in docs, moved
