"""The README's Python examples run as written."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_examples_run():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 2
    namespace = {}  # one session, as a reader would run them top to bottom
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
