# Before anything imports JAX: one JAX device per CPU core (mir_jax/__init__.py), for the sharded engine.
import mir_jax  # noqa: F401  pylint: disable=unused-import
