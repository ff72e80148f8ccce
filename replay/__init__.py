"""Replay: reads run files (docs/run_schema.md) and renders them (GIFs, curves, filters, snapshots, index.html)."""

from replay.render import ReplayOptions, ReplayReport, replay
from runfile.reader import Metrics, Run, RunFileError, open_run

__all__ = ["Metrics", "ReplayOptions", "ReplayReport", "Run", "RunFileError", "open_run", "replay"]
