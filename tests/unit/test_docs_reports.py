"""Every report committed under docs/ is what its command makes of the data beside it: a study's
report.md is `fntk report` of its results.parquet, a GPU report's Markdown is
`tools/bench_gpu.py --render` of its JSON. A change to the report code that would change a
committed number fails here until the report is regenerated (fntk report docs/X --out docs/X)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fntk_dist.study.report import write_report

DOCS = Path(__file__).resolve().parents[2] / "docs"
STUDIES = sorted(p.parent.name for p in DOCS.glob("*/results.parquet"))


def test_every_study_folder_ships_its_data():
    reports = sorted(p.parent.name for p in DOCS.glob("*/report.md"))
    assert STUDIES and STUDIES == reports


@pytest.mark.parametrize("study", STUDIES)
def test_the_committed_report_is_regenerated_byte_for_byte(study, tmp_path):
    made = write_report(DOCS / study, tmp_path / study)
    assert made.read_text() == (DOCS / study / "report.md").read_text()


@pytest.mark.parametrize("report", sorted((DOCS / "gpu").glob("*_report.json")),
                         ids=lambda p: p.stem)
def test_the_gpu_reports_are_their_json_rendered(report):
    done = subprocess.run([sys.executable, str(DOCS.parent / "tools" / "bench_gpu.py"),
                           "--render", str(report)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == report.with_suffix(".md").read_text()
