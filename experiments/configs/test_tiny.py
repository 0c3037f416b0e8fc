"""A tiny configuration for tests and smoke runs: few steps, all three schedules, two seeds."""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.min_images_per_identity = 4
  config.train.schedules = 'joint,alternating,single'
  config.train.num_seeds = 2
  config.train.steps = 200
  config.train.learning_rate = 1e-2
  return config
