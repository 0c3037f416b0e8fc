"""The evaluation protocols of Tables I and II, as named constructors over a cached `EmbeddingSet`.

The paper defines only its metric (Ac = TP / AP); which identities, splits and probe sets it used is not
stated. Each protocol here is one stated reading (BUILD.md, "Protocols"), built from embeddings and their
labels alone, so the same code serves LFW, YTF, MegaFace and a user's own folder:

  identification tasks (a softmax head is trained on `train_idx` and scored on `test_idx`, per seed):
    lfw_identity        identities with >= 10 images (LFW: 158 identities, 4,324 images), each identity's
                        images split in half per seed (at least one train and one test image).
    facenet_classifier  davidsandberg/facenet's classifier split: identities with >= 20 images, 10 train
                        images each, the rest test.
    ytf_frames          YTF frame classification split by video: people with >= 2 videos; per seed one
                        video of each person is held out (all its frames test), the others train.

  open-set tasks (the head is trained on identities disjoint from the probes; features are compared):
    lfw_distractors     the MegaFace challenge-1 protocol on LFW, an offline stand-in: probes are the
                        identities with >= 10 images, distractors the 4,069 identities with one image, and
                        the MIR head learns from the identities with 2-9 images (disjoint from both).
    megaface            MegaFace challenge 1: FaceScrub probes (role 'probe') against the MegaFace
                        distractors (role 'distractor') of one set size; the head learns from a separate
                        labelled set given by the caller.

  pair verification:
    ytf_pairs           YTF's 5,000 video pairs from splits.txt, each video the mean of its frames'
                        embeddings, 10-fold (`mir_jax.evaluators.verification.evaluate`).
"""

import re
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from mir_jax import embedding_sets
from mir_jax import splits


class NoMatchingPairs(ValueError):
  """No pair of a splits file has embeddings for both of its videos: the pair protocol does not apply."""


class Classification(NamedTuple):
  """A closed-set identification task: per seed, a head trains on train_idx and is scored on test_idx."""

  name: str
  x: np.ndarray  # (n, d) embeddings of the kept identities
  labels: np.ndarray  # (n,) int32, 0..K-1
  class_names: List[str]
  seeds: List[int]
  train_idx: np.ndarray  # (S, n_train) rows of x, one row per seed
  test_idx: np.ndarray  # (S, n_test)
  description: str


class OpenSet(NamedTuple):
  """An open-set identification task (MegaFace rank-1): probes against distractors.

  The MIR head that maps features for the "(a)" rows is trained on `head_x`/`head_labels`, whose
  identities are disjoint from the probes' (a head trained on the probes would have seen the answer).
  """

  name: str
  probe_x: np.ndarray
  probe_labels: np.ndarray
  distractor_x: np.ndarray
  head_x: np.ndarray
  head_labels: np.ndarray  # 0..K-1
  head_class_names: List[str]
  description: str


def _filtered(ds: embedding_sets.EmbeddingSet, min_images: int):
  keep, labels, kept = splits.keep_identities_with_at_least(ds.labels, min_images)
  if kept.size < 2:
    raise ValueError(
      f'fewer than 2 identities have >= {min_images} embeddings (of {len(ds.labels)} '
      f'embeddings, {len(ds.class_names)} identities)'
    )
  return ds.x[keep], labels.astype(np.int32), [ds.class_names[k] for k in kept]


def lfw_identity(
  ds: embedding_sets.EmbeddingSet, seeds: Sequence[int], min_images: int = 10, train_fraction: float = 0.5
) -> Classification:
  x, labels, names = _filtered(ds, min_images)
  train, test = zip(*[splits.stratified_split(labels, train_fraction, s) for s in seeds])
  desc = (
    f'identities with >= {min_images} images ({len(names)} identities, {len(labels)} images); per seed '
    f"each identity's images split {train_fraction:g} train / rest test, at least one of each"
  )
  return Classification('lfw_identity', x, labels, names, list(seeds), np.stack(train), np.stack(test), desc)


def facenet_classifier(
  ds: embedding_sets.EmbeddingSet, seeds: Sequence[int], min_images: int = 20, num_train: int = 10
) -> Classification:
  x, labels, names = _filtered(ds, min_images)
  train, test = zip(*[splits.fixed_count_split(labels, num_train, s) for s in seeds])
  desc = (
    f'davidsandberg/facenet classifier split: identities with >= {min_images} images ({len(names)} '
    f'identities, {len(labels)} images), {num_train} train images each, the rest test'
  )
  return Classification('facenet_classifier', x, labels, names, list(seeds), np.stack(train), np.stack(test), desc)


def ytf_frames(
  ds: embedding_sets.EmbeddingSet, seeds: Sequence[int], min_videos: int = 2, frames_per_video: Optional[int] = None
) -> Classification:
  """Frame classification with held-out videos: a face seen in training never appears in testing as the
  same video, so near-duplicate consecutive frames cannot leak across the split.

  Args:
    ds: a video dataset (`video_ids` set, e.g. the YTF cache).
    seeds: per seed, one video of each person is drawn (np.random.default_rng(seed)) for testing.
    min_videos: people with fewer videos are left out.
    frames_per_video: keep only the first this many frames of each video (frame ids in sorted order), to
      bound the cost on YTF's ~620k frames; None keeps all. Applied before the split.
  """
  if ds.video_ids is None:
    raise ValueError(
      'ytf_frames needs video ids (a YTF cache or an .npz with `video_ids`); this embedding set has none'
    )
  videos = np.asarray(ds.video_ids)
  rows = np.arange(len(videos))
  if frames_per_video is not None:
    # YTF frame ids are not zero-padded (`aligned_detect_1.10`): order them as numbers, not as text.
    ids = ds.image_ids if ds.image_ids is not None else [str(i) for i in rows]
    order = np.asarray(sorted(rows, key=lambda i: (videos[i], _natural(ids[i]))), np.int64)
    rank = np.empty(len(rows), np.int64)
    _, first = np.unique(videos[order], return_index=True)
    starts = np.repeat(first, np.diff(np.append(first, len(order))))
    rank[order] = np.arange(len(order)) - starts
    rows = rows[rank < frames_per_video]
  people = ds.labels[rows]
  per_person = {p: np.unique(videos[rows][people == p]) for p in np.unique(people)}
  kept_people = sorted(p for p, v in per_person.items() if v.size >= min_videos)
  if len(kept_people) < 2:
    raise ValueError(f'fewer than 2 people have >= {min_videos} videos')
  rows = rows[np.isin(people, kept_people)]
  remap = {p: i for i, p in enumerate(kept_people)}
  labels = np.asarray([remap[p] for p in ds.labels[rows]], np.int32)
  x, vids = ds.x[rows], videos[rows]
  train, test = [], []
  for s in seeds:
    rng = np.random.default_rng(s)
    held = {rng.choice(per_person[p]) for p in kept_people}
    is_test = np.isin(vids, list(held))
    train.append(np.flatnonzero(~is_test))
    test.append(np.flatnonzero(is_test))
  # Video lengths differ, so split sizes differ between seeds; the engine needs equal sizes per call.
  n_train, n_test = min(map(len, train)), min(map(len, test))
  train = [_even_subsample(t, n_train, s) for t, s in zip(train, seeds)]
  test = [_even_subsample(t, n_test, s) for t, s in zip(test, seeds)]
  desc = (
    f'people with >= {min_videos} videos ({len(kept_people)} people, {len(labels)} frames'
    f'{"" if frames_per_video is None else f", <= {frames_per_video} per video"}); per seed one video of '
    f"each person held out for testing; train/test trimmed to the smallest seed's sizes "
    f'({n_train} / {n_test} frames)'
  )
  return Classification(
    'ytf_frames',
    x,
    labels,
    [ds.class_names[p] for p in kept_people],
    list(seeds),
    np.stack(train),
    np.stack(test),
    desc,
  )


def _natural(text) -> list:
  return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', str(text)) if t]


def _even_subsample(idx: np.ndarray, n: int, seed: int) -> np.ndarray:
  if len(idx) == n:
    return idx
  return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))


def lfw_distractors(
  ds: embedding_sets.EmbeddingSet,
  probe_min_images: int = 10,
  distractor_max_images: int = 1,
  head_images: tuple = (2, 9),
) -> OpenSet:
  if not distractor_max_images < head_images[0] <= head_images[1] < probe_min_images:
    raise ValueError(
      f'the image-count ranges overlap: distractors <= {distractor_max_images}, head set '
      f'{head_images[0]}-{head_images[1]}, probes >= {probe_min_images}; an identity would be in two'
    )
  counts = np.bincount(ds.labels, minlength=len(ds.class_names))[ds.labels]
  probe = counts >= probe_min_images
  distractor = counts <= distractor_max_images
  head = (counts >= head_images[0]) & (counts <= head_images[1])
  if not probe.any() or not distractor.any() or not head.any():
    raise ValueError(
      f'lfw_distractors needs identities with >= {probe_min_images} images, with <= '
      f'{distractor_max_images}, and with {head_images[0]}-{head_images[1]}; this set lacks one'
    )
  _, head_labels, head_kept = splits.keep_identities_with_at_least(ds.labels[head], 1)
  desc = (
    f'MegaFace challenge-1 protocol on LFW (offline stand-in, not MegaFace): probes = identities with '
    f'>= {probe_min_images} images ({np.unique(ds.labels[probe]).size} identities, {probe.sum()} '
    f'images), distractors = identities with <= {distractor_max_images} image ({distractor.sum()} '
    f'images); the MIR head trains on the {head_kept.size} identities with {head_images[0]}-'
    f'{head_images[1]} images ({head.sum()} images), disjoint from both'
  )
  return OpenSet(
    'lfw_distractors',
    ds.x[probe],
    ds.labels[probe],
    ds.x[distractor],
    ds.x[head],
    head_labels.astype(np.int32),
    [ds.class_names[k] for k in head_kept],
    desc,
  )


def megaface(
  ds: embedding_sets.EmbeddingSet,
  head: embedding_sets.EmbeddingSet,
  head_min_images: int = 2,
  noise: Optional[np.ndarray] = None,
) -> OpenSet:
  """MegaFace challenge 1 from a MegaFace cache (roles 'probe' / 'distractor') and a labelled head set.

  The head set must not contain the probe identities; its identities with >= head_min_images are used.
  Overlap by name is refused (FaceScrub and LFW share celebrities, for example). `noise`, an (n,) bool over
  the rows of `ds` (e.g. `datasets.megaface.noise_mask` of the official noise lists), leaves those images
  out before scoring; the description says how many of each role.
  """
  if ds.roles is None:
    raise ValueError('megaface needs roles (a cache from `python -m mir_jax.embed --dataset=megaface`)')
  roles = np.asarray(ds.roles)
  noisy = np.zeros(len(roles), bool) if noise is None else np.asarray(noise, bool)
  if noisy.shape != roles.shape:
    raise ValueError(f'noise must be one bool per embedding ({roles.shape}), got shape {noisy.shape}')
  probe, distractor = (roles == 'probe') & ~noisy, (roles == 'distractor') & ~noisy
  if not probe.any() or not distractor.any():
    raise ValueError(
      f'the MegaFace set has {probe.sum()} probe and {distractor.sum()} distractor embeddings; both are needed'
    )
  probe_names = {ds.class_names[k] for k in np.unique(ds.labels[probe])}
  keep, head_labels, kept = splits.keep_identities_with_at_least(head.labels, head_min_images)
  head_names = [head.class_names[k] for k in kept]
  # FaceScrub folders and LFW names spell a person differently ('Aaron Eckhart' / 'Aaron_Eckhart').
  norm = lambda name: re.sub(r'[\s_]+', ' ', name).strip().lower()
  probe_norm = {norm(n) for n in probe_names}
  shared = sorted(n for n in head_names if norm(n) in probe_norm)
  if shared:
    raise ValueError(
      f'{len(shared)} head-training identities are also probes (e.g. {shared[:3]}); remove '
      'them from the head set so the head never sees a probe identity'
    )
  desc = (
    f'MegaFace challenge 1: {probe.sum()} FaceScrub probe images of {len(probe_names)} identities, '
    f'{distractor.sum()} distractors; the MIR head trains on {len(head_names)} other identities'
  )
  if noise is not None:
    desc += (
      f'; on the noise lists and left out: {(noisy & (roles == "probe")).sum()} probe images, '
      f'{(noisy & (roles == "distractor")).sum()} distractors'
    )
  return OpenSet(
    'megaface',
    ds.x[probe],
    ds.labels[probe],
    ds.x[distractor],
    head.x[keep],
    head_labels.astype(np.int32),
    head_names,
    desc,
  )


def video_means(ds: embedding_sets.EmbeddingSet, x: Optional[np.ndarray] = None):
  """(video ids, (V, d) mean of each video's frame features, L2-normalised). `x` replaces ds.x (e.g. MIR
  character features of the same frames)."""
  if ds.video_ids is None:
    raise ValueError('video_means needs video ids')
  x = ds.x if x is None else np.asarray(x)
  videos, inverse = np.unique(np.asarray(ds.video_ids), return_inverse=True)
  sums = np.zeros((len(videos), x.shape[1]), np.float64)
  np.add.at(sums, inverse, x)
  means = sums / np.bincount(inverse)[:, None]
  return videos, means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def ytf_pairs(ds: embedding_sets.EmbeddingSet, pairs: Sequence, x: Optional[np.ndarray] = None):
  """(emb_a, emb_b, same, folds, missing) of YTF video pairs (`datasets.ytf.VideoPair`) for
  `verification.evaluate`; pairs naming a video without embeddings are listed in `missing`."""
  videos, means = video_means(ds, x)
  index = {v: i for i, v in enumerate(videos)}
  rows, missing = [], []
  for p in pairs:
    if p.video_a in index and p.video_b in index:
      rows.append((index[p.video_a], index[p.video_b], bool(p.same), int(p.fold)))
    else:
      missing.append(p)
  if not rows:
    raise NoMatchingPairs('no YTF pair has embeddings for both of its videos')
  a, b, same, folds = (np.asarray(v) for v in zip(*rows))
  return means[a], means[b], same.astype(bool), folds, missing
