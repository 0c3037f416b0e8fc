"""Evaluators: metrics of embeddings, features and trained heads, independent of how those were made.

Metrics on arrays:
  identification  MegaFace challenge 1 rank-1 / CMC, identity accuracy Ac = TP / AP, and the scikit-learn
                  classifiers behind the sanity anchors (cosine 1-NN, logistic regression).
  verification    pair verification, the LFW / YTF 10-fold protocol.
  significance    paired t-test over seeds, McNemar's test on paired per-example correctness, t-intervals.
  separation      the between/within class distance ratio printed beside the PCA figures.

One table column each, with one `run()` (the tables only assemble their cells):
  anchors         Table I's sanity anchors on a classification task's splits.
  open_set        open-set rank-1 before and after MIR (MegaFace, LFW-distractors).
  ytf_pairs       YTF video-pair verification of embeddings and character features.
  lfw_pairs       LFW View 2 verification of a cache (`python -m reproduce.lfw_verification`).
"""
