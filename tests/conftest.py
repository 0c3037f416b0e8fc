"""Shared by every test module."""

import types

import pytest

# Before any test module imports JAX: one JAX device per CPU core, as in the entry points (mir_jax/__init__.py),
# so the tests run the sharded engine path that users run.
import mir_jax  # noqa: F401  pylint: disable=unused-import

# `make test` runs two pytest-xdist workers. Each group of tests runs whole on one worker, so a module's
# fixtures, and the session's `synthetic_run`, are built once; the groups known to take longest start first,
# so that neither worker is left with a long one at the end. (A scheduler of our own, not `--dist loadgroup`:
# xdist 3.8's groups rename nodes through an attribute that pytest 9.2 no longer reads.)
_SYNTHETIC_RUN_MODULES = ('reproduce_test.py', 'report_page_test.py', 'report_browser_test.py')
_LONGEST_FIRST = ('synthetic_run', 'regression_test.py', 'mtcnn_jax_test.py')


def _group(path: str) -> str:
  name = path.rsplit('/', 1)[-1]
  return 'synthetic_run' if name in _SYNTHETIC_RUN_MODULES else name


def pytest_collection_modifyitems(items):
  rank = {g: i for i, g in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(_group(item.nodeid.split('::', 1)[0]), len(rank)))  # stable


def pytest_xdist_make_scheduler(config, log):
  from xdist import scheduler  # pylint: disable=g-import-not-at-top  (only under xdist)

  class ByGroup(scheduler.LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return _group(nodeid.split('::', 1)[0])

  return ByGroup(config, log)


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
