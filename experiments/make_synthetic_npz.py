r"""Writes a synthetic embedding set (Gaussian identities plus a shared offset) as an .npz for the trainer.

python -m experiments.make_synthetic_npz --out=/tmp/synthetic.npz --num_classes=158 --per_class=27
"""

from absl import app
from absl import flags

from mir_jax import embedding_sets

_OUT = flags.DEFINE_string('out', None, 'Output .npz path.', required=True)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 158, 'Identities.')
_PER_CLASS = flags.DEFINE_integer('per_class', 27, 'Embeddings per identity.')
_DIM = flags.DEFINE_integer('dim', 128, 'Embedding dimension.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')


def main(argv):
  del argv
  embedding_sets.save_npz(
    _OUT.value, embedding_sets.synthetic_identities(_NUM_CLASSES.value, _PER_CLASS.value, _DIM.value, _SEED.value)
  )
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
