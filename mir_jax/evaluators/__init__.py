"""Evaluators that work on arrays (embeddings, logits, per-seed scores), independent of how they were made.

identification  MegaFace challenge 1 rank-1 / CMC, identity accuracy Ac = TP / AP, and the scikit-learn
                sanity anchors (cosine 1-NN, logistic regression).
significance    paired t-test over seeds, McNemar's test on paired per-example correctness, t-intervals.
separation      the between/within class distance ratio printed beside the PCA figures.
verification    pair verification, the LFW / YTF 10-fold protocol.
"""
