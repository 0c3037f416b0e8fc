"""Shapes and wiring of the MIR head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mir_jax import model as model_lib


@pytest.mark.parametrize('dim', [128, 512])
@pytest.mark.parametrize('commonality_dim', ['one', 'd'])
@pytest.mark.parametrize('subtract_from', ['input', 'hidden'])
def test_output_shapes(dim, commonality_dim, subtract_from):
  k = 1 if commonality_dim == 'one' else dim
  head = model_lib.MIRHead(num_classes=7, commonality_dim=k, subtract_from=subtract_from)
  params = model_lib.init_params(jax.random.key(0), head, dim)
  assert params['hidden']['kernel'].shape == (dim, dim)
  assert params['commonality']['kernel'].shape == (dim, k)
  assert params['classifier']['kernel'].shape == (dim, 7)
  out = head.apply({'params': params}, jnp.ones((5, dim)))
  assert out.logits.shape == (5, 7)
  assert out.commonality.shape == (5, k)
  assert out.character.shape == (5, dim)
  assert np.all((np.asarray(out.commonality) > 0) & (np.asarray(out.commonality) < 1))


def test_character_is_embedding_minus_commonality():
  head = model_lib.MIRHead(num_classes=3)
  x = jax.random.normal(jax.random.key(1), (4, 16))
  params = model_lib.init_params(jax.random.key(0), head, 16)
  out = head.apply({'params': params}, x)
  np.testing.assert_allclose(out.character, x - out.commonality, rtol=1e-6)
  w, b = params['classifier']['kernel'], params['classifier']['bias']
  np.testing.assert_allclose(out.logits, out.character @ w + b, rtol=1e-5, atol=1e-6)


def test_hidden_reading_subtracts_from_relu_layer():
  head = model_lib.MIRHead(num_classes=3, subtract_from='hidden')
  x = jax.random.normal(jax.random.key(1), (4, 16))
  params = model_lib.init_params(jax.random.key(0), head, 16)
  out = head.apply({'params': params}, x)
  h = jax.nn.relu(x @ params['hidden']['kernel'] + params['hidden']['bias'])
  np.testing.assert_allclose(out.character, h - out.commonality, rtol=1e-5, atol=1e-6)


def test_single_task_is_the_softmax_on_raw_embeddings():
  head = model_lib.MIRHead(num_classes=3)
  x = jax.random.normal(jax.random.key(1), (4, 16))
  params = model_lib.init_params(jax.random.key(0), head, 16)
  out = head.apply({'params': params}, x, single_task=True)
  w, b = params['classifier']['kernel'], params['classifier']['bias']
  np.testing.assert_allclose(out.logits, x @ w + b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('bad', [dict(commonality_dim=5), dict(subtract_from='output')])
def test_bad_options_raise(bad):
  head = model_lib.MIRHead(num_classes=3, **bad)
  with pytest.raises(ValueError, match='commonality_dim|subtract_from'):
    model_lib.init_params(jax.random.key(0), head, 16)
