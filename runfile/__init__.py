"""The run file, at the ground floor: its schema (`schema.py`, documented in docs/run_schema.md), the writer
(`writer.py`, `async_writer.py`), the reader (`reader.py`), and what checks and mends a file (`preflight.py`,
`verify.py`, `repair.py`, `identity.py`).

The recorder writes through this package; replay, compare and the viewer read through it. It imports
neither JAX nor any other package of the project (docs/ARCHITECTURE.md; checked by `lint-imports`).
"""
