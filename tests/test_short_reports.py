"""A failing test prints a short reason: tests/short_reports.py cuts any failure report."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_a_failure_that_quotes_megabytes_is_reported_in_kilobytes(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    # In force for this suite (tests/conftest.py), and as it behaves there:
    assert request.config.pluginmanager.has_plugin("short_reports")
    pytester.makepyfile(test_inner="""
        def test_quotes_a_huge_output():
            output = "line of a command's output\\n" * 200_000  # 5.4 MB
            print(output)
            assert "the reason" in output, "the reason is missing; output: " + output
    """)
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    result = pytester.runpytest_subprocess("-p", "short_reports", "-q")
    assert result.ret == 1
    text = "\n".join(result.outlines + result.errlines)
    assert len(text) < 100_000, len(text)
    assert "the reason is missing" in text  # the head, which says why, is kept
    assert "characters cut: tests/short_reports.py" in text
    assert "Captured stdout call" in text  # the printed output too, cut likewise
