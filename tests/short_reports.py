"""A failing test's report stays short: its head and tail, never a megabyte of output.

An assertion that quotes a command's output, or a test that printed it, can otherwise put the
whole of it in the log (once 66 MB, 1.5 million lines, for four failures). Loaded by
tests/conftest.py for every test.
"""

from __future__ import annotations

from typing import Generator

import pytest

MAX_REPORT_CHARACTERS = 20_000  # per failure report and per captured section
KEPT = MAX_REPORT_CHARACTERS // 2


def shortened(text: str) -> str:
    if len(text) <= MAX_REPORT_CHARACTERS:
        return text
    cut = len(text) - 2 * KEPT
    return (f"{text[:KEPT]}\n... [{cut:,} characters cut: tests/short_reports.py] ...\n"
            f"{text[-KEPT:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    text = str(report.longrepr)
    if len(text) > MAX_REPORT_CHARACTERS:
        report.longrepr = shortened(text)
    report.sections = [(title, shortened(content)) for title, content in report.sections]
