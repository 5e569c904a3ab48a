"""The RAG engine: documents, chunking, embedding, indexes, prompts and generation.

See docs/rag-engine.md.
"""
