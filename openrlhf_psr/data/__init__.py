"""Data: the built-in task, problem loading (local JSONL/Parquet or Hugging Face names), and records."""
