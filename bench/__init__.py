"""ragraft benchmarks (consensus throughput, RAG latency, reference comparisons)."""
