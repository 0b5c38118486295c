"""`finetune review export|import|status`: the reviewer's side of the blind expert review."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKET_HELP = "packet id, the Dagster run id that built it, or 'latest'"


def _packet(args: argparse.Namespace):
    from finetune.cli import _config
    from finetune.review.packet import load_packet

    cfg = _config(args)
    return cfg, load_packet(cfg, args.packet)


def cmd_export(args: argparse.Namespace) -> int:
    cfg, packet = _packet(args)
    if args.csv:
        from finetune.review.sheets import export_sheet

        path = export_sheet(packet, Path(args.csv))
        print(f"wrote {packet.n_items} blinded items to {path}; raters fill in a copy each, then:")
        print(f"  finetune review import {packet.packet_id} FILLED.{path.suffix.lstrip('.')} [MORE ...]")
        return 0
    from finetune.review.label_studio import export_to_label_studio

    project = export_to_label_studio(cfg, packet, args.to or "")
    print(f"Label Studio project {project.project_id} at {project.url}: {packet.n_items} tasks")
    print(
        f"  open {project.url}/projects/{project.project_id}/data; pull with `finetune review import {packet.packet_id}`"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from finetune.review.collect import import_judgements

    cfg, packet = _packet(args)
    collected = import_judgements(cfg, packet, [Path(f) for f in args.files])
    source = ", ".join(args.files) or "Label Studio"
    print(f"imported {len(collected.judgements)} judgements from {source} ({collected.unanswered} not yet filled in)")
    for problem in collected.problems:
        print(f"  SKIPPED {problem}", file=sys.stderr)
    return 1 if collected.problems else 0


def cmd_status(args: argparse.Namespace) -> int:
    from finetune.review.collect import review_progress

    cfg, packet = _packet(args)
    progress = review_progress(cfg, packet, pull=not args.no_pull)
    raters = ", ".join(f"{r}: {n}" for r, n in progress.items_per_rater.items()) or "none yet"
    print(f"packet {progress.packet_id}: {progress.items_judged} of {progress.n_items} items judged")
    print(f"items per rater: {raters}")
    print(f"Label Studio: {progress.label_studio or 'not exported'}")
    for note in progress.notes:
        print(f"  {note}")
    need = f"review.min_items {cfg.review.min_items}, review.min_raters {cfg.review.min_raters}"
    mode = "required" if cfg.review.required else "advisory"
    print(f"{'ready' if progress.ready(cfg) else 'not ready'} for experts_prefer_tuned ({need}; {mode})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import subprocess

    from finetune.cli import _config
    from finetune.review.server import label_studio_command

    cfg = _config(args)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.work_dir / "label-studio" / "data"
    cmd, env = label_studio_command(cfg, args.port, data_dir)
    print(f"Label Studio on http://127.0.0.1:{args.port} (data in {data_dir}); sign up there, then copy your token")
    return subprocess.call(cmd, env=env)


def add_review_parser(sub, add) -> None:
    """Register `finetune review ...`; `add(subparsers, name, func, help)` adds --config/--set like every command."""
    review = sub.add_parser("review", help="blind expert review: export the packet, import judgements, status")
    commands = review.add_subparsers(dest="what", required=True)
    p = add(commands, "export", cmd_export, "hand the blinded packet to raters (Label Studio project or a sheet)")
    p.add_argument("packet", nargs="?", default="latest", help=PACKET_HELP)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--to", metavar="URL", help="Label Studio server (default review.label_studio_url)")
    target.add_argument("--csv", metavar="FILE", help="write a .csv or .xlsx sheet instead")
    p = add(commands, "import", cmd_import, "store judgements from filled sheets, or pull them from Label Studio")
    p.add_argument("packet", nargs="?", default="latest", help=PACKET_HELP)
    p.add_argument(
        "files", nargs="*", help="filled .csv/.xlsx sheets; none = pull from the packet's Label Studio project"
    )
    p = add(commands, "status", cmd_status, "items judged, items per rater, and whether the gate can decide")
    p.add_argument("packet", nargs="?", default="latest", help=PACKET_HELP)
    p.add_argument("--no-pull", action="store_true", help="count stored judgements without asking Label Studio")
    p = add(
        commands, "serve", cmd_serve, "start Label Studio on 127.0.0.1 with telemetry off (make label-studio first)"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--data-dir", help="where Label Studio keeps its SQLite database (default <work_dir>/label-studio/data)"
    )


__all__ = ["add_review_parser"]
