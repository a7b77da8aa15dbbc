"""CI runs exactly the README's test command."""
import re

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Run the tests.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip()
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd ",
                                                                                                 "test ", "rm ", "export ",
                                                                                                 "command "))]
    assert ci == [block]
