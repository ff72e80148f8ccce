"""docs/run_schema.md against a freshly written run file, both ways: every dataset and root attribute the
document lists exists in the file, every one the file holds is documented, and the version the document
states is the writer's."""

import json
import re
from pathlib import Path

import h5py
import pytest

from conftest import tiny_config
from recorder.run import record
from runfile.schema import SCHEMA_VERSION

DOC = Path(__file__).resolve().parents[1] / "docs" / "run_schema.md"


def table_names(section: str) -> list[str]:
    """The backticked names in the first column of the tables of `section` (to the next heading of its level)."""
    text = DOC.read_text()
    start = text.index(section)
    level = section.split(" ")[0]
    following = re.search(rf"^{level} ", text[start + len(section):], re.MULTILINE)
    body = text[start:start + len(section) + (following.start() if following else len(text))]
    names = []
    for line in body.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            names += re.findall(r"`([^`]+)`", cells[1])
    return names


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny run with every optional group: analysis, weights snapshots, a learning-rate series."""
    path = tmp_path_factory.mktemp("schema") / "run.h5"
    record(tiny_config(steps=4, snapshots=3, lr_schedule="cosine"), path, show_progress=False, log=lambda s: None)
    with h5py.File(path, "r") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
        return {"datasets": set(datasets), "attrs": set(f.attrs), "layers": list(f["layers"]),
                "kernels": json.loads(f["layers"].attrs["kernels_json"]),
                "weights": [name for name in datasets if name.startswith("/weights/values/")]}


def documented_datasets(written) -> set[str]:
    out = set()
    for name in table_names("## Datasets") + table_names("### `/analysis`") + table_names("### `/weights`"):
        if not name.startswith("/"):
            continue
        if "<path>" in name:
            out.update(written["weights"])
        elif "<name>" in name or "<layer>" in name:  # a kernel only for the layers whose kernel is recorded
            layers = written["kernels"] if name.endswith("/kernel") else written["layers"]
            out.update(re.sub(r"<(name|layer)>", layer, name) for layer in layers)
        else:
            out.add(name)
    return out


def test_every_documented_dataset_is_written_and_every_written_one_documented(written):
    documented = documented_datasets(written)
    assert documented - written["datasets"] == set(), "documented but not written"
    assert written["datasets"] - documented == set(), "written but not documented"


def test_every_root_attribute_is_documented_and_written(written):
    documented = set(table_names("## Root attributes"))
    assert documented == written["attrs"]


def test_the_document_states_the_writers_version_once():
    text = DOC.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `schema_version`"))
    assert re.search(r"\| int \| `(\d+)`", row).group(1) == str(SCHEMA_VERSION)
    assert not re.search(r"^# .*version \d", text, re.MULTILINE)  # the title states none
