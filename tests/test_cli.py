"""The `functorch-lite` command end to end, in a subprocess: exit codes, the tour's
checks, the pictures (PNG/SVG by their headers), --help, one-line usage errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from functorch_lite import _cli as cli

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBCOMMANDS = ["tour", "explain", "graph", "bench"]


def run(*argv: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "functorch_lite", *argv], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 5000, path


def assert_svg(path: Path) -> None:
    assert "<svg" in path.read_text(encoding="utf-8")[:5000], path


def assert_usage_error(p: subprocess.CompletedProcess, pattern: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr  # one line, no traceback
    assert "Traceback" not in p.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.slow  # 15 s: CI's slow step runs it
def test_help_for_each_subcommand():
    p = run("--help")
    assert p.returncode == 0 and "usage: functorch-lite" in p.stdout
    for name in SUBCOMMANDS:
        assert name in p.stdout
        sub = run(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith(f"usage: functorch-lite {name}"), sub.stdout


def test_console_script_help():
    script = Path(sys.executable).parent / "functorch-lite"
    assert script.exists(), "pip install -e . installs the functorch-lite console script"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([str(script), "graph", "--help"], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    assert p.returncode == 0 and "usage: functorch-lite graph" in p.stdout


def test_bad_subcommand():
    assert_usage_error(run("tuor"), r"^functorch-lite: error: .*invalid choice: 'tuor'")


@pytest.mark.parametrize("argv, pattern", [
    (["graph", "no_such_module_xyz:f", "--shape", "3"], r"cannot import module 'no_such_module_xyz'"),
    (["graph", "math:no_such_function", "--shape", "3"], r"module 'math' has no attribute 'no_such_function'"),
    (["graph", "math:pi", "--shape", "3"], r"'math:pi' is not callable"),
    (["graph", "nonexample"], r"unknown example 'nonexample': choose one of .*mlp"),
    (["graph", ":f", "--shape", "3"], r"bad target ':f': expected module:function"),
    (["graph", "jax.numpy:sin", "--shape", "a,b"], r"bad --shape 'a,b'"),
    (["graph", "jax.numpy:sin"], r"give the shape of each argument"),
    (["graph", "jax.numpy:dot", "--shape", "3", "--shape", "4"], r"graph of 'jax.numpy:dot' failed: TypeError"),
    (["explain", "no_such_module_xyz:f", "--shape", "3"], r"cannot import module 'no_such_module_xyz'"),
    (["tour", "--only", "nosuchstop"], r"unknown tour stop\(s\) \['nosuchstop'\]"),
])
def test_bad_targets_give_one_line_and_exit_2(argv, pattern, capsys):
    # in-process (the subprocess path is covered below): main returns 2, one line on stderr
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert_usage_error(subprocess.CompletedProcess(argv, code, "", err),
                       rf"^functorch-lite {argv[0]}: error: .*{pattern}")


def test_engine_dot_without_graphviz(monkeypatch, capsys):
    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    assert cli.main(["graph", "mlp", "--engine", "dot"]) == 2
    assert "--engine dot: the Graphviz `dot` program is not on the PATH" in capsys.readouterr().err


def test_bad_module_function_in_a_subprocess():
    p = run("graph", "no_such_module_xyz:f", "--shape", "3")
    assert_usage_error(p, r"^functorch-lite graph: error: cannot import module 'no_such_module_xyz'")
    p = run("explain", "math:no_such_function", "--shape", "3")
    assert_usage_error(p, r"^functorch-lite explain: error: module 'math' has no attribute")


def test_tour_small(tmp_path):
    # a few stops (the full tour is a slow test below); every check must pass
    out = tmp_path / "pics"
    p = run("tour", "--out", str(out), "--only", "layout", "linear", "control_flow")
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"^tour: (\d+)/(\d+) checks passed, pictures in (.+) \(", p.stdout, flags=re.M)
    assert m, p.stdout
    assert m.group(1) == m.group(2) and int(m.group(2)) >= 10
    assert Path(m.group(3)) == out
    assert "[FAIL]" not in p.stdout and p.stdout.count("[ok  ]") == int(m.group(2))
    pics = sorted(out.glob("*.png"))
    assert [q.name for q in pics] == ["detach.png", "linear_layer.png"]
    for q in pics:
        assert_png(q)


def test_tour_svg_with_matplotlib(tmp_path):
    p = run("tour", "--out", str(tmp_path), "--only", "control_flow", "--format", "svg",
            "--engine", "matplotlib")
    assert p.returncode == 0, p.stdout + p.stderr
    assert_svg(tmp_path / "detach.svg")


def test_tour_list():
    p = run("tour", "--list")
    assert p.returncode == 0
    keys = [line.split()[0] for line in p.stdout.splitlines()]
    assert keys[:3] == ["layout", "accumulation", "backward_v"] and "hessian" in keys


@pytest.mark.slow
def test_full_tour(tmp_path):
    p = run("tour", "--out", str(tmp_path), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"^tour: (\d+)/(\d+) checks passed", p.stdout, flags=re.M)
    assert m and m.group(1) == m.group(2), p.stdout
    pics = list(tmp_path.glob("*.png"))
    assert len(pics) >= 3
    for q in pics:
        assert_png(q)


def test_failed_check_fails_the_tour(tmp_path):
    # the tour's exit status reflects its checks: a stop with a wrong closed form fails
    code = (
        "import sys, jax.numpy as jnp, functorch_lite as fl\n"
        "from functorch_lite._cli import tour\n"
        "@tour.stop('wrong', 'a deliberately wrong closed form')\n"
        "def _wrong(ctx):\n"
        "    ctx.check('grad(x^2) = 2.001 x', fl.grad(lambda x: x * x)(3.0), 2.001 * 3.0)\n"
        "from functorch_lite._cli import main\n"
        f"sys.exit(main(['tour', '--out', {str(tmp_path)!r}, '--only', 'wrong']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "[FAIL] grad(x^2) = 2.001 x" in p.stdout
    assert re.search(r"^tour: 0/1 checks passed", p.stdout, flags=re.M)


@pytest.mark.parametrize("fmt, check", [("png", assert_png), ("svg", assert_svg)])
def test_graph_builtin_example(tmp_path, fmt, check):
    p = run("graph", "mlp", "--out", str(tmp_path), "--format", fmt)
    assert p.returncode == 0, p.stderr
    assert "graph(mlp), reverse mode (vjp)" in p.stdout and "residuals stored" in p.stdout
    check(tmp_path / f"graph_mlp_rev.{fmt}")
    assert (tmp_path / "graph_mlp_rev.dot").read_text().startswith("digraph")


def test_graph_module_function(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "import jax.numpy as jnp\n\ndef loss(w, x):\n    return jnp.sum(jnp.tanh(x @ w) ** 2)\n")
    p = run("graph", "mymodel:loss", "--shape", "3", "--shape", "4,3", "--mode", "fwd",
            "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "graph(loss), forward mode (jvp)" in p.stdout
    assert_png(tmp_path / "out" / "graph_loss_fwd.png")


def test_explain_builtin_example(tmp_path):
    # needs functorch_lite.explain (issue 3): report printed, picture saved
    p = run("explain", "tanh_chain", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "explain(tanh_chain)" in p.stdout
    assert_png(tmp_path / "explain_tanh_chain.png")


def test_bench_without_checkout(monkeypatch, capsys):
    monkeypatch.setattr(cli, "repo_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    assert "benchmarks/ is not next to this installation" in capsys.readouterr().err


def test_bench_runs_python_m_benchmarks(monkeypatch, capsys):
    calls = []

    class Done:
        returncode = 0

    def fake_run(cmd, cwd, env, check):
        calls.append((cmd, cwd, env["PYTHONPATH"]))
        return Done()

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    assert cli.main(["bench", "--quick", "--only", "core"]) == 0
    (cmd, cwd, pythonpath), = calls
    assert cmd == [sys.executable, "-m", "benchmarks", "--quick", "--only", "core"]
    assert Path(cwd) == ROOT and pythonpath.split(os.pathsep)[0] == str(ROOT)


# ---------------------------------------------------------------- issue 13


@pytest.mark.parametrize("argv, pattern", [
    (["explain", "jax.numpy:sign", "--shape", "3,,2"], r"bad --shape '3,,2': give comma-separated sizes"),
    (["explain", "jax.numpy:sign", "--shape", ",3"], r"bad --shape ',3'"),
    (["explain", "jax.numpy:round", "--shape", "3", "--out", "/proc/no_such_dir/out"],
     r"cannot write to --out '/proc/no_such_dir/out': .*; choose a writable directory"),
])
def test_cli_usage_errors_of_issue_13(argv, pattern, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert_usage_error(subprocess.CompletedProcess(argv, code, "", err),
                       rf"^functorch-lite {argv[0]}: error: .*{pattern}")


def test_shape_with_trailing_comma_is_a_one_tuple():
    assert cli._parse_shape("4,") == (4,)
    assert cli._parse_shape("3,2") == (3, 2)


def test_integer_output_exits_2(tmp_path):
    (tmp_path / "intmod.py").write_text("def f(v):\n    return v.astype(int)\n")
    p = run("explain", "intmod:f", "--shape", "3", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_usage_error(p, r"explain of 'intmod:f' failed: its output has dtype int32; derivatives need a float output")
    p = run("graph", "intmod:f", "--shape", "3", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_usage_error(p, r"graph of 'intmod:f' failed: its output has dtype int32")


def test_unwritable_out_in_a_subprocess(tmp_path):
    (tmp_path / "afile").write_text("x")
    p = run("explain", "--out", str(tmp_path / "afile" / "out"))
    assert_usage_error(p, r"cannot write to --out '.*afile/out': .*choose a writable directory")
    p = run("tour", "--only", "layout", "--out", str(tmp_path / "afile" / "out"))
    assert_usage_error(p, r"cannot write to --out")
