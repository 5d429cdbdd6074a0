"""Under CI=true nothing may be skipped: tests/conftest.py turns a skip (a test's, or a module's importorskip)
into a failure that says what was missing; elsewhere (a user's clone without ../shared) a skip stays a skip."""
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_skip_fails_the_run_under_ci_and_says_what_is_missing(pytester, monkeypatch, ci):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_needs="import pytest\n\ndef test_eval():\n    pytest.skip('../shared/eval is not present')\n",
                        test_module="import pytest\npytest.importorskip('no_such_module_anywhere')\n")
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    if ci:
        assert result.ret != 0
        result.stdout.fnmatch_lines(["*skipped under CI=true (call)*../shared/eval is not present*",
                                     "*skipped under CI=true (collection)*no_such_module_anywhere*"])
        assert " skipped" not in result.stdout.lines[-1]
    else:
        result.assert_outcomes(skipped=2)
