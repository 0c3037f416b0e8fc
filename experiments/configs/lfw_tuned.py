"""`lfw.py` with learning rate, L2 and steps chosen per schedule on validation data (never the test split).

The grid and the rule are the same for the single-task (original-feature) head and the MIR heads
(mir_jax/tuning.py); the chosen values are recorded in metrics.json beside the accuracies.
"""

from experiments.configs import lfw


def get_config():
  config = lfw.get_config()
  config.tune.enabled = True
  config.tune.learning_rates = (1e-2, 3e-2, 1e-1)
  config.tune.l2s = (0.0, 1e-4, 1e-3)
  config.tune.max_steps = 1000
  config.tune.eval_every = 100
  return config
