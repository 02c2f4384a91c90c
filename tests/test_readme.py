"""README's example runs and says what it claims."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    x, y, w = scope["x"], scope["y"], scope["w"]
    np.testing.assert_allclose(scope["g"], 2 * (x @ w - y) @ x, rtol=1e-6)
    np.testing.assert_allclose(scope["H"], 2 * x.T @ x, rtol=1e-6)
    np.testing.assert_allclose(scope["J"], x, rtol=1e-6)
    np.testing.assert_allclose(scope["d8"], np.sin(0.3), rtol=1e-5)     # sin'''''''' = sin
    assert "rev" in capsys.readouterr().out


def test_readme_names_the_two_setup_commands_and_the_main_command():
    text = README.read_text()
    assert 'pip install -e ".[dev]"\npytest\n' in text
    assert "\nfunctorch-lite tour\n" in text
