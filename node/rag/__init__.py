"""The RAG engine: documents, chunking, embedding, indexes, prompts and generation (see docs/rag-engine.md)."""
