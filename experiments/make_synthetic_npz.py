r"""Writes a synthetic embedding set (Gaussian identities plus a shared offset) as an .npz for the trainer.

python -m experiments.make_synthetic_npz --out=/tmp/synthetic.npz --num_classes=158 --per_class=27
"""

from absl import app
from absl import flags

from mir_jax import embedding_sets

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', None, 'Output .npz path.', required=True)
  flags.DEFINE_integer('num_classes', 158, 'Identities.')
  flags.DEFINE_integer('per_class', 27, 'Embeddings per identity.')
  flags.DEFINE_integer('dim', 128, 'Embedding dimension.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')


def main(argv):
  del argv
  embedding_sets.save_npz(
    FLAGS.out, embedding_sets.synthetic_identities(FLAGS.num_classes, FLAGS.per_class, FLAGS.dim, FLAGS.seed)
  )
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
