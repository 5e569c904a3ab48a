"""ragraft node: the per-node runtime (API, task execution, RAG engine, CLI)."""
