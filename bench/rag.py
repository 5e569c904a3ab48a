"""RAG engine speed against the bare libraries, and retrieval/answer quality.

    python -m bench.rag [--quick]            speed, each figure a ratio measured side by side
    python -m bench.rag --quality [--qa-items N]

Speed (ours vs reference, alternating rounds because these machines are noisy):
- retrieval p50/p99 at 10k and 100k chunks: KnowledgeBase.search (vector mode) vs a raw
  FAISS IndexFlatIP search on the same vectors;
- ingestion chunks/s: RagEngine.prepare_ingest of the corpus vs a bare
  sentence-transformers encode of the same chunk texts;
- generation tokens/s: our TransformersBackend vs a bare model.generate, same prompt and
  token count (target >= 0.95);
- batched generation: 4 concurrent tasks through the batcher vs the same 4 one at a time
  (target >= 2x).
Quality: recall@5 and MRR@10 of vector, keyword and hybrid retrieval over the QA set of
tests/data (a retrieved chunk is a hit when it holds the gold passage, see `is_hit`), and
token-F1 / exact match of `qa` answers.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CACHE = Path(__file__).resolve().parent.parent / ".ragraft" / "model-cache"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- corpus


def corpus_files() -> list[Path]:
    return sorted((DATA / "corpus" / "python-docs").rglob("*.html"))


def qa_items() -> list[dict]:
    return [
        json.loads(line)
        for line in (DATA / "qa.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def build_kb(engine: Any) -> dict[str, str]:
    """Ingest the corpus into engine.kb the way a node does (prepare, then apply the
    put_chunks batches); returns doc id -> corpus-relative path."""
    kb = engine.kb
    names: dict[str, str] = {}
    root = DATA / "corpus"
    for i, path in enumerate(corpus_files()):
        data = path.read_bytes()
        doc_id = f"d{i:03d}"
        names[doc_id] = str(path.relative_to(root))
        batches = engine.prepare_ingest(data, path.name)
        kb.store_upload(doc_id, path.stem, path.name, "text/html", [], data, at=1)
        for n, batch in enumerate(batches):
            kb.put_chunks(doc_id, 1, n, batch["chunks"], batch["vectors"], n_batches=len(batches))
        kb.finish_ingest(doc_id, 1, "bench", at=2)
    return names


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_hit(passage_text: str, gold: str) -> bool:
    """A chunk holds the gold passage if it contains it whole, or — because an ~800
    character chunk may cut a long gold sentence at its edge — its longest sentence-like
    piece of at least 40 characters."""
    text, gold = normalise(passage_text), normalise(gold)
    if gold in text:
        return True
    pieces = sorted((p.strip() for p in re.split(r"(?<=[.;:])\s", gold)), key=len, reverse=True)
    return bool(pieces) and len(pieces[0]) >= 40 and pieces[0] in text


# ---------------------------------------------------------------------------- quality


def retrieval_quality(engine: Any, names: dict[str, str], items: list[dict]) -> dict:
    figures: dict[str, dict] = {}
    for mode in ("vector", "keyword", "hybrid"):
        recall, reciprocal = [], []
        for item in items:
            passages, _ = engine.retrieve(item["question"], {"top_k": 10, "mode": mode})
            ranks = [
                n
                for n, p in enumerate(passages, start=1)
                if names.get(p.doc_id) == item["doc"] and is_hit(p.text, item["gold"])
            ]
            first = ranks[0] if ranks else None
            recall.append(1.0 if first is not None and first <= 5 else 0.0)
            reciprocal.append(1.0 / first if first is not None else 0.0)
        figures[mode] = {
            "recall_at_5": round(statistics.mean(recall), 3),
            "mrr_at_10": round(statistics.mean(reciprocal), 3),
        }
    return figures


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = tokens(prediction), tokens(truth)
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def answer_quality(engine: Any, names: dict[str, str], items: list[dict]) -> dict:
    """Answer F1 against the gold answers, and how the answers are attributed
    (node/rag/grounding.py): the share with a citation, citation precision (the cited
    passage is from the gold document), citation recall (the gold passage is cited
    when it was retrieved), the share of unsupported sentences, and the time the
    attribution takes against the generation's."""
    f1s, exact, contains = [], [], []
    cited, precise, recalled, unsupported, checked = [], [], [], 0, 0
    attribution_ms, generate_ms = [], []
    for n, item in enumerate(items, start=1):
        result = engine.run("qa", {"query": item["question"]}, {"top_k": 3, "max_new_tokens": 48})
        answer = re.sub(r"\[\d+\]", "", result["answer"])
        f1s.append(token_f1(answer, item["answer"]))
        exact.append(1.0 if normalise(answer) == normalise(item["answer"]) else 0.0)
        contains.append(1.0 if normalise(item["answer"]) in normalise(answer) else 0.0)
        citations = [c for c in result["citations"] if c.get("supported", True)]
        cited.append(1.0 if citations else 0.0)
        precise += [1.0 if names.get(c["doc_id"]) == item["doc"] else 0.0 for c in citations]
        gold = {
            p["n"]
            for p in result["passages"]
            if names.get(p["doc_id"]) == item["doc"] and is_hit(p["text"], item["gold"])
        }
        if gold:
            recalled.append(1.0 if gold & {c["n"] for c in citations} else 0.0)
        grounding = result["grounding"]
        unsupported += grounding["unsupported"]
        checked += grounding["supported"] + grounding["unsupported"]
        attribution_ms.append(grounding["attribution_ms"])
        generate_ms.append(result["timings"]["generate_ms"])
        progress(
            f"  qa {n}/{len(items)}: F1 {f1s[-1]:.2f}, {len(citations)} citations, "
            f"grounding {grounding['score']}"
        )
    return {
        "items": len(items),
        "token_f1": round(statistics.mean(f1s), 3),
        "exact_match": round(statistics.mean(exact), 3),
        "answer_contained": round(statistics.mean(contains), 3),
        "cited_share": round(statistics.mean(cited), 3),
        "citation_precision": round(statistics.mean(precise), 3) if precise else None,
        "citation_recall": round(statistics.mean(recalled), 3) if recalled else None,
        "unsupported_share": round(unsupported / checked, 3) if checked else None,
        "attribution_ms_p50": round(statistics.median(attribution_ms), 1),
        "attribution_ms_p95": round(percentile(attribution_ms, 0.95), 1),
        "attribution_vs_generation": round(
            statistics.mean(attribution_ms) / statistics.mean(generate_ms), 4
        ),
    }


# ---------------------------------------------------------------------------- speed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def retrieval_speed(size: int, rounds: int = 200) -> dict:
    import faiss

    from node.rag.knowledge import KnowledgeBase, vectors_to_bytes

    rng = np.random.default_rng(size)
    vectors = rng.standard_normal((size, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    kb = KnowledgeBase()
    kb.put_upload("d", "synthetic", "s.txt", "text/plain", [], b"x", at=1)
    step = 2000
    for n, start in enumerate(range(0, size, step)):
        rows = vectors[start : start + step]
        chunks = [
            {"ordinal": start + i, "page": 1, "text": f"chunk {start + i} word{(start + i) % 97}"}
            for i in range(len(rows))
        ]
        kb.put_chunks(
            "d", 1, n, chunks, vectors_to_bytes(rows), n_batches=(size + step - 1) // step
        )
    kb.finish_ingest("d", 1, "bench", at=2)
    raw = faiss.IndexFlatIP(384)
    raw.add(vectors)
    queries = rng.standard_normal((rounds, 384)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ours, ref = [], []
    for q in queries:
        started = time.perf_counter()
        kb.search(q, None, mode="vector", k=5)
        ours.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        raw.search(q.reshape(1, -1), 5)
        ref.append((time.perf_counter() - started) * 1000)
    hybrid = []
    for i, q in enumerate(queries[:50]):
        started = time.perf_counter()
        kb.search(q, f"word{i % 97} chunk", mode="hybrid", k=5)
        hybrid.append((time.perf_counter() - started) * 1000)
    return {
        "ours_p50_ms": round(statistics.median(ours), 3),
        "ours_p99_ms": round(percentile(ours, 0.99), 3),
        "faiss_p50_ms": round(statistics.median(ref), 3),
        "faiss_p99_ms": round(percentile(ref, 0.99), 3),
        "hybrid_p50_ms": round(statistics.median(hybrid), 3),
        "p50_vs_faiss": round(statistics.median(ref) / statistics.median(ours), 3),
        "p99_vs_faiss": round(percentile(ref, 0.99) / percentile(ours, 0.99), 3),
    }


def ingestion_speed(engine: Any, files: list[Path]) -> dict:
    from sentence_transformers import SentenceTransformer

    from node.models import embedding_model_dir
    from node.rag.chunking import chunk_pages
    from node.rag.documents import parse

    bare = SentenceTransformer(str(embedding_model_dir()), device="cpu")
    texts = [
        c.text for path in files for c in chunk_pages(parse(path.read_bytes(), path.name).pages)
    ]
    ours_s, ref_s = [], []
    for _ in range(2):  # alternate sides
        started = time.perf_counter()
        for path in files:
            engine.prepare_ingest(path.read_bytes(), path.name)
        ours_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        ref_s.append(time.perf_counter() - started)
    ours, ref = len(texts) / min(ours_s), len(texts) / min(ref_s)
    return {
        "chunks": len(texts),
        "ours_chunks_per_s": round(ours, 1),
        "bare_chunks_per_s": round(ref, 1),
        "ingest_vs_sentence_transformers": round(ours / ref, 3),
    }


def generation_speed(backend: Any, new_tokens: int = 48, rounds: int = 3) -> dict:
    import torch

    from node.rag.batcher import GenerationBatcher
    from node.rag.generation import GenRequest

    prompt = "Write a long, detailed story about a lighthouse keeper and the sea."
    never = "@@@never@@@"
    messages = ({"role": "user", "content": prompt},)
    tok = backend.tokenizer
    encoded = tok.apply_chat_template(
        list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )

    def ours() -> float:
        started = time.perf_counter()
        result = backend.generate(
            [GenRequest(messages=messages, max_new_tokens=new_tokens, stop=(never,))]
        )[0]
        return result.new_tokens / (time.perf_counter() - started)

    def bare() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = backend.model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return (out.shape[1] - encoded["input_ids"].shape[1]) / (time.perf_counter() - started)

    ours(), bare()  # warm up both
    mine, ref = [], []
    for _ in range(rounds):
        mine.append(ours())
        ref.append(bare())
    batcher = GenerationBatcher(backend, max_batch=4, window_s=0.05)

    def request(i: int) -> GenRequest:
        return GenRequest(
            messages=({"role": "user", "content": f"{prompt} Chapter {i}."},),
            max_new_tokens=new_tokens,
            stop=(never,),
        )

    def one_at_a_time() -> float:
        started = time.perf_counter()
        done = [backend.generate([request(i)])[0].new_tokens for i in range(4)]
        return sum(done) / (time.perf_counter() - started)

    def four_together() -> float:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(batcher.generate(request(i)).new_tokens)
            )
            for i in range(4)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(results) / (time.perf_counter() - started)

    sequential_runs, batched_runs = [], []
    for _ in range(2):  # alternate, so a load spike does not favour one side
        sequential_runs.append(one_at_a_time())
        batched_runs.append(four_together())
    sequential, batched = max(sequential_runs), max(batched_runs)
    batcher.close()
    return {
        "ours_tokens_per_s": round(statistics.median(mine), 2),
        "bare_tokens_per_s": round(statistics.median(ref), 2),
        "generate_vs_transformers": round(statistics.median(mine) / statistics.median(ref), 3),
        "sequential_tokens_per_s": round(sequential, 2),
        "batch4_tokens_per_s": round(batched, 2),
        "batch4_vs_sequential": round(batched / sequential, 3),
    }


# ---------------------------------------------------------------------------- main


def load_engine(with_generator: bool, cache_dir: Path = CACHE) -> Any:
    from node.rag.embedding import Embedder
    from node.rag.engine import RagEngine
    from node.rag.generation import load_backend
    from node.rag.knowledge import KnowledgeBase

    progress("loading models...")
    backend = (
        load_backend("bundled:SmolLM2-135M-Instruct", cache_dir=cache_dir)
        if with_generator
        else None
    )
    return RagEngine(KnowledgeBase(), Embedder(), backend)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    progress(f"{label}...")
    started = time.perf_counter()
    value = fn()
    progress(f"{label}: {time.perf_counter() - started:.1f} s")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description="RAG engine benchmarks")
    parser.add_argument("--quick", action="store_true", help="10k chunks only, fewer rounds")
    parser.add_argument(
        "--quality", action="store_true", help="retrieval recall/MRR and answer F1 instead of speed"
    )
    parser.add_argument(
        "--qa-items", type=int, default=20, help="qa answers to grade with --quality (each ~3 s)"
    )
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    if args.quality:
        engine = load_engine(with_generator=True)
        names = timed("ingesting the corpus", lambda: build_kb(engine))
        items = qa_items()
        figures["retrieval"] = timed(
            "retrieval quality", lambda: retrieval_quality(engine, names, items)
        )
        figures["answers"] = timed(
            "answer quality", lambda: answer_quality(engine, names, items[: args.qa_items])
        )
        for mode, values in figures["retrieval"].items():
            figures[f"{mode}_recall_at_5"] = values["recall_at_5"]
            figures[f"{mode}_mrr_at_10"] = values["mrr_at_10"]
        print(f"{'mode':<8} {'recall@5':>9} {'MRR@10':>7}")
        for mode, values in figures["retrieval"].items():
            print(f"{mode:<8} {values['recall_at_5']:>9} {values['mrr_at_10']:>7}")
        a = figures["answers"]
        print(
            f"qa answers ({a['items']} items): token F1 {a['token_f1']}, "
            f"exact match {a['exact_match']}, "
            f"answer contained {a['answer_contained']}"
        )
        print(
            f"citations: answers cited {a['cited_share']}, precision {a['citation_precision']}, "
            f"recall {a['citation_recall']}; unsupported sentences {a['unsupported_share']}; "
            f"attribution p50 {a['attribution_ms_p50']} ms, p95 {a['attribution_ms_p95']} ms "
            f"({a['attribution_vs_generation']:.1%} of the generation time)"
        )
        for key in ("cited_share", "citation_precision", "citation_recall", "unsupported_share"):
            figures[key] = a[key]
    else:
        for size in [10_000] if args.quick else [10_000, 100_000]:
            figures[f"retrieval_{size // 1000}k"] = timed(
                f"retrieval at {size} chunks", lambda s=size: retrieval_speed(s)
            )
            figures[f"retrieval_p50_vs_faiss_{size // 1000}k"] = figures[
                f"retrieval_{size // 1000}k"
            ]["p50_vs_faiss"]
        engine = load_engine(with_generator=True)
        files = corpus_files()[: 6 if args.quick else None]
        figures["ingestion"] = timed("ingestion", lambda: ingestion_speed(engine, files))
        figures["generation"] = timed("generation", lambda: generation_speed(engine.backend))
        figures["generate_vs_transformers"] = figures["generation"]["generate_vs_transformers"]
        figures["batch4_vs_sequential"] = figures["generation"]["batch4_vs_sequential"]
        figures["ingest_vs_sentence_transformers"] = figures["ingestion"][
            "ingest_vs_sentence_transformers"
        ]
        for key, value in figures.items():
            if isinstance(value, dict):
                print(f"{key:<16} " + "  ".join(f"{k} {v}" for k, v in value.items()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
