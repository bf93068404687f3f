"""Module names: `layerc compile` writes only modules that `import NAME` loads as themselves. An
output whose name is not a Python module name (`my-model.py`, `1st.py`, `class.py`), is longer
than numba's cache file names allow, or would shadow a module Python already imports (the
standard library, numpy, numba, layerc, anything on sys.path, a package beside the output) is a
usage error (exit 2) that names the output and says what to write instead, and nothing is
written. `layerc test` and `layerc run` name their own temporary modules, so any source stays
testable and runnable whatever its file name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LESSON
from test_cli import files_in, no_traceback, run

from layerc import cli, driver
from layerc.check import MAX_NAME_LENGTH
from layerc.errors import UsageError

TESTED = LESSON  # the lesson has a test block

# (source file, -o argument or None, what the error says, the output it suggests)
REFUSED = [
    ("my-model.lyr", None, "'my-model' is not a Python module name", "my_model.py"),
    ("layerc.lyr", None, "would shadow the module 'layerc'", "layerc_model.py"),
    ("seed.lyr", "numpy.py", "would shadow the module 'numpy'", "numpy_model.py"),
    ("seed.lyr", "numba.py", "would shadow the module 'numba'", "numba_model.py"),
    ("seed.lyr", "os.py", "would shadow the standard library's module 'os'", "os_model.py"),
    ("seed.lyr", "sys.py", "would shadow the standard library's module 'sys'", "sys_model.py"),
    ("seed.lyr", "1st.py", "'1st' is not a Python module name", "model_1st.py"),
    ("seed.lyr", "class.py", "'class' is not a Python module name", "class_model.py"),
    ("seed.lyr", "m.v2.py", "'m.v2' is not a Python module name", "m_v2.py"),
    ("seed.lyr", "été.py", "'été' is not a Python module name", "_t_.py"),
    ("seed.lyr", "__main__.py", "a name Python reserves", "__main___model.py"),
    ("seed.lyr", "x" * 65 + ".py", "longer than 64 characters", "x" * 57 + ".py"),
    ("seed.lyr", "net", "ends in .py", "net.py"),
    ("seed.lyr", "net.txt", "ends in .py", "net.py"),
]


@pytest.mark.parametrize(
    ("source", "output", "problem", "suggestion"), REFUSED, ids=[r[0] + str(r[1]) for r in REFUSED]
)
def test_outputs_python_cannot_import_are_refused(
    tmp_path: Path, monkeypatch, capsys, source: str, output: str | None, problem: str, suggestion
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / source).write_text(LESSON, encoding="utf-8")
    before = files_in(tmp_path)
    argv = ["compile", source] + (["-o", output] if output else [])
    assert cli.main(argv) == 2
    target = output or Path(source).with_suffix(".py").name
    message = f"cannot write the module {target}: "
    err = capsys.readouterr().err
    assert err.startswith(f"layerc compile: error: {message}") and err.count("\n") == 1
    assert problem in err and err.endswith(f"; write -o {suggestion}\n")
    assert files_in(tmp_path) == before
    assert cli.main(["compile", source, "-o", suggestion]) == 0  # the advice works
    assert (tmp_path / suggestion).is_file()


def test_warm_into_a_shadowing_name_is_a_usage_error(tmp_path: Path) -> None:
    """`compile --warm -o numpy.py` once imported the module as `numpy` and died."""
    (tmp_path / "seed.lyr").write_text(LESSON, encoding="utf-8")
    result = run("compile", "seed.lyr", "--warm", "-o", "numpy.py", cwd=tmp_path)
    no_traceback(result)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("; write -o numpy_model.py\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.lyr"]


def test_modules_and_packages_on_the_path_and_beside_the_output(tmp_path: Path, monkeypatch):
    """Whatever `import NAME` would find instead, or break: a module, a package or a namespace
    package on sys.path, or a package beside the output. A plain folder beside the output is
    no package (the module wins over it), and the output itself is no obstacle."""
    site = tmp_path / "site"
    (site / "regular").mkdir(parents=True)
    (site / "regular" / "__init__.py").write_text("")
    (site / "namespace" / "inner").mkdir(parents=True)
    (site / "plain.py").write_text("")
    (site / "plain_model.py").write_text("")  # so the suggestion for `plain` goes on
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "out"
    (out / "pkg").mkdir(parents=True)
    (out / "pkg" / "__init__.py").write_text("")
    (out / "data").mkdir()
    src = tmp_path / "seed.lyr"
    src.write_text(LESSON, encoding="utf-8")
    for name, where in [
        ("regular", site / "regular" / "__init__.py"),
        ("namespace", site / "namespace"),
        ("plain", site / "plain.py"),
        ("pkg", out / "pkg" / "__init__.py"),
    ]:
        with pytest.raises(UsageError) as info:
            driver.compile_file(src, out / f"{name}.py")
        assert f"would shadow the module {name!r} that Python imports from {where}" in str(
            info.value
        )
        suggestion = f"{name}_model2.py" if name == "plain" else f"{name}_model.py"
        assert str(info.value).endswith(f"write -o {out / suggestion}")
    driver.compile_file(src, out / "data.py")
    # Compiling again over an output that Python finds, from its own folder on sys.path.
    monkeypatch.syspath_prepend(str(out))
    driver.compile_file(src, out / "data.py")
    assert driver.import_module(out / "data.py").Seed()([1, 2, 3, 4]).tolist() == [30, 40, 50]


def test_compiling_in_place_again_from_the_current_folder(tmp_path: Path) -> None:
    """`python -m layerc` puts the current folder on sys.path, where the last compile's output
    is: recompiling finds it, and that is no reason to refuse."""
    (tmp_path / "seed.lyr").write_text(LESSON, encoding="utf-8")
    for _ in range(2):
        result = run("compile", "seed.lyr", cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, "wrote seed.py\n", "")


def test_a_module_of_that_name_in_the_current_folder_is_no_obstacle(tmp_path: Path) -> None:
    """`python -m layerc` has the current folder on sys.path and `layerc` does not; both write
    out/seed.py beside an earlier seed.py in the current folder."""
    (tmp_path / "seed.lyr").write_text(LESSON, encoding="utf-8")
    (tmp_path / "out").mkdir()
    assert run("compile", "seed.lyr", cwd=tmp_path).returncode == 0
    result = run("compile", "seed.lyr", "-o", "out", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "out" / "seed.py").is_file()


@pytest.mark.parametrize("source", ["my-model.lyr", "layerc.lyr", "numpy.lyr", "1 st.lyr"])
def test_test_and_run_name_their_own_modules(tmp_path: Path, monkeypatch, capsys, source):
    """Sources that `compile` would need a -o for still test and run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / source).write_text(TESTED, encoding="utf-8")
    (tmp_path / "x.csv").write_text("1,2,3,4\n")
    assert cli.main(["test", source]) == 0
    assert cli.main(["run", source, "-i", "x.csv", "-o", "y.npy"]) == 0
    assert np.load(tmp_path / "y.npy").tolist() == [[30, 40, 50]]
    assert "PASS" in capsys.readouterr().out


def test_long_source_names_stay_testable(tmp_path: Path, capsys) -> None:
    """`layerc test` cuts its temporary module's name, so numba's cache file names fit even
    for a 200-character file name and the longest model name."""
    model = "M" * MAX_NAME_LENGTH
    src = tmp_path / ("s" * 200 + ".lyr")
    src.write_text(TESTED.replace("Seed", model), encoding="utf-8")
    assert cli.main(["test", str(src)]) == 0
    assert "PASS" in capsys.readouterr().out
