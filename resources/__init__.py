"""Dagster resources: the pipeline settings (config file + overrides) and where artifacts go."""

from resources.settings import PipelineSettings

__all__ = ["PipelineSettings"]
