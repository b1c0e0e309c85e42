"""Every public function and class shows a runnable example in its docstring (issue 23).

``test_module_doctests`` runs each tfcompress module's doctests (one case per module) from a
temporary working directory, with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``, so an example that
writes ``model.tflite`` writes it there. ``test_public_names_have_examples`` checks that every
public name has at least one example that is not ``+SKIP``: the names in a module's
``__all__`` (the packages' ``__all__`` name what their implementation modules export) and, in a
public module without ``__all__`` that its package does not re-export from, the classes and
functions it defines without a leading underscore. Examples follow the Google style of
``tfcompress/uncertainty/calibration.py``: an ``Example:`` section, tiny models (Dense(4) on 8
features), a few training steps at most.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import tfcompress

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Public names whose example cannot run in CI, each with the reason.
NO_RUNNABLE_EXAMPLE: dict[str, str] = {
    # `tfcompress demo` always runs the compression road after at least one epoch: ~90 s on the
    # 2-core machine, half this file's budget. run_demo's example runs the same road without the
    # compression; tests/test_demo.py runs the command.
    "tfcompress.cli.cmd_demo": "trains and compresses a CNN (~90 s)",
}


def _private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages(tfcompress.__path__, "tfcompress.")]
    # __main__ runs the command on import; its one statement is `sys.exit(main())`
    return ["tfcompress", *sorted(n for n in names if n != "tfcompress.__main__")]


MODULES = _modules()


def _defined(module) -> list[str]:
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module.__name__]


def public_names() -> dict[str, object]:
    """``{"module.qualname": object}`` of every public class and function, keyed where it is defined."""
    found: dict[str, object] = {}
    for name in MODULES:
        if _private(name):
            continue
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            names = list(module.__all__)
        else:
            package = importlib.import_module(name.rsplit(".", 1)[0])
            exported = getattr(package, "__all__", []) if package is not tfcompress else []
            if any(getattr(getattr(package, n, None), "__module__", None) == name for n in exported):
                continue                     # the package's __all__ lists what this module exports
            names = _defined(module)
        for attr in names:
            obj = getattr(module, attr)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue                     # constants and submodules
            if not getattr(obj, "__module__", "").startswith("tfcompress"):
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def _runs_an_example(obj) -> bool:
    # the object's own docstring: inspect.getdoc would fall back to a base class's (Keras')
    examples = doctest.DocTestParser().get_examples(inspect.cleandoc(obj.__doc__ or ""))
    return any(not example.options.get(doctest.SKIP) for example in examples)


# modules whose examples need an optional extra (absent on the oldest supported set)
NEEDS = {"tfcompress.export.precision_search": "ai_edge_quantizer"}


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name, tmp_path, monkeypatch):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    module = importlib.import_module(name)
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    tests = finder.find(module, name, globs=vars(module).copy())
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=sys.stdout.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"


def test_public_names_have_examples():
    names = public_names()
    assert len(names) > 250                        # the walk found the package's API
    missing = sorted(key for key, obj in names.items() if key not in NO_RUNNABLE_EXAMPLE and not _runs_an_example(obj))
    assert not missing, f"{len(missing)} public names without a runnable docstring example: {missing}"
    stale = sorted(key for key in NO_RUNNABLE_EXAMPLE if key not in names)
    assert not stale, f"allow-listed names that are no longer public: {stale}"


def _console_script() -> str:
    # the script installed beside this interpreter (the same environment), else the one on PATH
    script = os.path.join(os.path.dirname(sys.executable), "tfcompress")
    return script if os.path.exists(script) else "tfcompress"


COMMANDS = {"python -m": [sys.executable, "-m", "tfcompress"], "script": [_console_script()]}


@pytest.mark.parametrize("how", sorted(COMMANDS))
def test_version(how):
    done = subprocess.run([*COMMANDS[how], "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tfcompress {tfcompress.__version__}"


def test_python_m_runs_the_console_script(tmp_path):
    """``python -m tfcompress`` is the same command: same exit status and output, here on a bad file."""
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    runs = {how: subprocess.run([*command, "inspect", str(bad)], capture_output=True, text=True, timeout=120)
            for how, command in COMMANDS.items()}
    assert {run.returncode for run in runs.values()} == {1}
    assert runs["python -m"].stderr == runs["script"].stderr
    assert "bad.tflite" in runs["script"].stderr and "Traceback" not in runs["script"].stderr
