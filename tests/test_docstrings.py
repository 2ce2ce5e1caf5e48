"""The numpydoc ``Examples`` of the operation modules run, as doctests, on the embedded dataset.

Every public function of these modules has an example (``dataset="tiny"``: generated on first
use under the tests' temporary HOME; its IDs are deterministic for seed 0), and every example's
output matches (``ELLIPSIS | NORMALIZE_WHITESPACE``).
"""
from __future__ import annotations

import doctest
import importlib
import inspect
import io

import pytest

MODULES = ["locations", "snapping", "neurons", "mapping", "latest", "updates", "lineage", "validity", "voxels", "cutouts"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public_functions(mod):
    return [name for name, f in vars(mod).items()
            if inspect.isfunction(f) and f.__module__ == mod.__name__ and not name.startswith("_")]


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_has_an_example(name):
    mod = importlib.import_module(f"crantseg_dask.ops.{name}")
    missing = [f for f in _public_functions(mod)
               if "Examples\n" not in (getattr(mod, f).__doc__ or "") or ">>>" not in getattr(mod, f).__doc__]
    assert not missing, f"crantseg_dask.ops.{name}: no Examples section with >>> in {missing}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    mod = importlib.import_module(f"crantseg_dask.ops.{name}")
    tests = [t for t in doctest.DocTestFinder().find(mod, mod.__name__) if t.examples]
    assert tests, f"{mod.__name__} has no doctest examples"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    for t in sorted(tests, key=lambda t: t.name):
        runner.run(t, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed:\n{report.getvalue()}"
