"""Data stages: ingest, clean, dedup, PII de-identification, poisoning screen."""
