"""LFW identity classification with the paper's head read literally (identities with >= 10 images).

The embeddings come from the cache `python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet` builds.
The paper's learning rate and L2 (0.001 each, TF-style L2 sum) leave the softmax heads under-fitted in 2,000
updates; `lfw_tuned.py` is the same protocol with values chosen on validation data.
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'cache:lfw/dlib-resnet'
  config.data.min_images_per_identity = 10
  config.train.schedules = 'joint,alternating,single'
  config.train.num_seeds = 10
  return config
