"""Thin Dagster assets over the `finetune` library, one module per domain."""
