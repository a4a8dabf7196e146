"""Speed and memory tools: python -m benchmarks.throughput, python -m benchmarks.train_memory (docs/performance.md)."""
