"""Shared by every test module."""

# Before any test module imports JAX: one JAX device per CPU core, as in the entry points (mir_jax/__init__.py),
# so the tests run the sharded engine path that users run.
import mir_jax  # noqa: F401  pylint: disable=unused-import
