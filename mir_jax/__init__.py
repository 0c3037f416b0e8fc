"""mir-jax: a JAX/Flax reproducibility suite for "MIR: Multi-task Intra-Representation Learning for Face
Classification" (Cheng, Xu, Wang).

Data flows one way: images -> aligned faces -> embeddings (cached as TFDS shards) -> head -> metrics ->
tables/figures.
"""
