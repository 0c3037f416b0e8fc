"""Shared by every test module."""

import types

import pytest

# Before any test module imports JAX: one JAX device per CPU core, as in the entry points (mir_jax/__init__.py),
# so the tests run the sharded engine path that users run.
import mir_jax  # noqa: F401  pylint: disable=unused-import

# `make test` runs two pytest-xdist workers with --dist loadgroup: each group runs whole on one worker, so a
# module's fixtures, and the session's `synthetic_run`, are built once. The groups known to take longest
# start first, so that neither worker is left with a long one at the end.
_SYNTHETIC_RUN_MODULES = ('reproduce_test.py', 'report_page_test.py', 'report_browser_test.py')
_LONGEST_FIRST = ('synthetic_run', 'regression_test.py', 'mtcnn_jax_test.py')


def _group(item) -> str:
  return 'synthetic_run' if item.path.name in _SYNTHETIC_RUN_MODULES else item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    item.add_marker(pytest.mark.xdist_group(_group(item)))
  rank = {g: i for i, g in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: modules stay in their order


@pytest.fixture(scope='session')
def synthetic_run(tmp_path_factory):
  """`python -m reproduce.all`'s run (tables, figure, curves, manifest) on the synthetic LFW-shaped set of
  reproduce_test.py, made once: the table tests and the report tests read the same run (it is the slowest
  fixture, minutes)."""
  import reproduce_test  # pylint: disable=g-import-not-at-top

  from reproduce import all as all_command  # pylint: disable=g-import-not-at-top
  from reproduce import cli  # pylint: disable=g-import-not-at-top

  tmp_path = tmp_path_factory.mktemp('synthetic_run')
  ctx = reproduce_test.synthetic_context(reproduce_test.tiny_config(tmp_path), output_dir=str(tmp_path / 'out'))
  made = {}

  def body(c):
    made['tables'], made['figures'] = all_command.run(c)
    return []

  cli.run('all', body, ctx)
  return types.SimpleNamespace(ctx=ctx, tables=made['tables'], figures=made['figures'], tmp_path=tmp_path)
