"""Replay: reads run files (docs/run_schema.md) and renders them."""

from replay.run_file import Metrics, Run, RunFileError, open_run

__all__ = ["Metrics", "Run", "RunFileError", "open_run"]
