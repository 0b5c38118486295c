"""Dagster resources: the pipeline settings (config file + overrides) and where artifacts go."""

from resources.json_io import JsonIOManager
from resources.settings import PipelineSettings

__all__ = ["JsonIOManager", "PipelineSettings"]
