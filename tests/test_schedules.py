import json

import dagster as dg

from resources import PipelineSettings
from schedules import raw_data_sensor, weekly_retrain


def test_weekly_schedule_requests_the_full_pipeline():
    context = dg.build_schedule_context()
    assert weekly_retrain.cron_schedule == "0 3 * * 1"
    result = weekly_retrain.evaluate_tick(context)
    assert len(result.run_requests) == 1 and weekly_retrain.job_name == "full_pipeline"


def test_sensor_runs_once_per_content_snapshot(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    settings = PipelineSettings(config_path=str(tmp_path / "cfg.yaml"))
    (tmp_path / "cfg.yaml").write_text(f"paths:\n  raw_data: [{raw}]\n")

    def tick(cursor):
        ctx = dg.build_sensor_context(cursor=cursor, resources={"settings": settings})
        return raw_data_sensor(ctx), ctx.cursor

    first, cursor = tick(None)
    assert isinstance(first, dg.RunRequest) and first.run_key.startswith("raw-")
    same, same_cursor = tick(cursor)
    assert isinstance(same, dg.SkipReason) and same_cursor == cursor
    (raw / "b.jsonl").write_text(json.dumps({"instruction": "c", "output": "d"}) + "\n")
    changed, new_cursor = tick(cursor)
    assert isinstance(changed, dg.RunRequest) and new_cursor != cursor and changed.run_key != first.run_key


def test_schedule_cron_comes_from_the_config(tmp_path):
    import os
    import subprocess
    import sys

    from finetune.config import PROJECT_ROOT

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('schedule:\n  cron: "30 4 * * *"\n  timezone: Asia/Shanghai\n')
    code = "from schedules import weekly_retrain as s; print(repr((s.cron_schedule, s.execution_timezone)))"
    env = {**os.environ, "FINETUNE_CONFIG": str(cfg), "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "('30 4 * * *', 'Asia/Shanghai')", out.stderr[-2000:]
