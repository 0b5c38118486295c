"""The IO manager for asset values: JSON files, so nothing the pipeline reads back is a pickle.

Dagster's default filesystem IO manager pickles every output under `<DAGSTER_HOME>/storage/`
and unpickles it for the next step (or a re-execution, or a run that materializes `release`
alone): whoever can write that folder can run code in the pipeline. Every asset here returns a
JSON-able report (paths, counts, metrics), so JSON loses nothing, and a file that is not JSON is
an error rather than code. A typed value (the data stages' `StageReport`) is stored as its `to_json()`
and read back through its class's `from_json` when the input is annotated with that class.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

SUFFIX = ".json"


class JsonFiles(dg.IOManager):
    """One JSON file per asset key under `base_dir` (the newest materialization's value, as with Dagster's default)."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir

    def path_for(self, key: dg.AssetKey) -> Path:
        return self.base_dir.joinpath(*key.path).with_suffix(SUFFIX)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # an asset that returns nothing (a check, an op with no value) stores nothing
            return
        path = self.path_for(context.asset_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(getattr(obj, "to_json", None)):
            obj = obj.to_json()
        try:
            text = json.dumps(obj, ensure_ascii=False, allow_nan=True)
        except TypeError as exc:
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} returned a value JSON cannot hold ({exc}); "
                "assets pass reports and paths, never Python objects"
            ) from exc
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        context.add_output_metadata({"value_file": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        path = self.path_for(context.asset_key)
        if not path.is_file():
            raise FileNotFoundError(
                f"no stored value for asset {context.asset_key.to_user_string()} at {path}: materialize it first"
            )
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a JSON asset value ({exc}); re-materialize that asset") from exc
        typed = getattr(context.dagster_type, "typing_type", None)
        from_json = getattr(typed, "from_json", None)
        return from_json(value) if callable(from_json) else value


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    """Asset values as JSON under `<DAGSTER_HOME>/storage/json/` (or `base_dir`)."""

    base_dir: str = Field(default="", description="Folder for the JSON values; empty = the instance's storage/json.")

    def create_io_manager(self, context: dg.InitResourceContext) -> JsonFiles:
        base = Path(self.base_dir) if self.base_dir else Path(context.instance.storage_directory()) / "json"
        return JsonFiles(base)
