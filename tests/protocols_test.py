"""The evaluation protocols: which rows, identities and videos each task keeps, and how it splits them.

Every synthetic set below stores each row's original index in feature 0 (`_traced`), so a row a protocol
returns can be traced back to the row it came from; expectations are derived from the counts built here.
"""

import numpy as np
import pytest

from mir_jax import embedding_sets
from mir_jax import protocols
from mir_jax.datasets import ytf


def _traced(n, dim=4, seed=0):
  """(n, dim) float32 features whose column 0 is the row index (exact in float32 for small n)."""
  x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
  x[:, 0] = np.arange(n)
  return x


def _origin(x):
  return x[:, 0].astype(int)


def _identity_set(counts, seed=0, shuffle=True):
  """An EmbeddingSet with counts[i] rows of identity i (name 'person_XX', sorted like label order)."""
  labels = np.repeat(np.arange(len(counts)), counts)
  if shuffle:
    labels = np.random.default_rng(seed).permutation(labels)
  names = [f'person_{i:02d}' for i in range(len(counts))]
  return embedding_sets.EmbeddingSet(_traced(labels.size, seed=seed), labels.astype(np.int32), names)


# lfw_identity

LFW_COUNTS = [12, 3, 10, 16, 9, 14, 1]  # min_images=10 keeps identities 0, 2, 3, 5


def test_lfw_identity_keeps_identities_with_enough_images():
  ds = _identity_set(LFW_COUNTS)
  task = protocols.lfw_identity(ds, seeds=[0, 1, 2], min_images=10)
  kept = [i for i, c in enumerate(LFW_COUNTS) if c >= 10]
  assert task.name == 'lfw_identity'
  assert task.class_names == [ds.class_names[i] for i in kept]
  assert task.class_names == sorted(task.class_names)
  rows = _origin(task.x)
  assert sorted(rows.tolist()) == np.flatnonzero(np.isin(ds.labels, kept)).tolist()
  assert np.array_equal(task.x, ds.x[rows])
  assert task.labels.dtype == np.int32
  assert sorted(set(task.labels.tolist())) == list(range(len(kept)))
  # Each row's new label names the identity the row came from.
  assert [task.class_names[lab] for lab in task.labels] == [ds.class_names[lab] for lab in ds.labels[rows]]
  assert np.bincount(task.labels).tolist() == [LFW_COUNTS[i] for i in kept]


def test_lfw_identity_splits_each_identity_per_seed():
  ds = _identity_set(LFW_COUNTS)
  seeds = [0, 1, 2]
  task = protocols.lfw_identity(ds, seeds=seeds, min_images=10, train_fraction=0.5)
  counts = [c for c in LFW_COUNTS if c >= 10]  # all even: half of each trains
  n = sum(counts)
  assert task.seeds == seeds
  assert task.train_idx.shape == (len(seeds), n // 2)
  assert task.test_idx.shape == (len(seeds), n - n // 2)
  for train, test in zip(task.train_idx, task.test_idx):
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert np.bincount(task.labels[train], minlength=len(counts)).tolist() == [c // 2 for c in counts]
    assert np.all(np.bincount(task.labels[test], minlength=len(counts)) >= 1)
  for a in range(len(seeds)):
    for b in range(a + 1, len(seeds)):
      assert not np.array_equal(task.train_idx[a], task.train_idx[b])


def test_lfw_identity_is_deterministic_per_seed():
  ds = _identity_set(LFW_COUNTS)
  a = protocols.lfw_identity(ds, seeds=[4, 5])
  b = protocols.lfw_identity(ds, seeds=[5])
  assert np.array_equal(a.train_idx[1], b.train_idx[0]) and np.array_equal(a.test_idx[1], b.test_idx[0])


def test_lfw_identity_needs_two_identities():
  with pytest.raises(ValueError, match='fewer than 2 identities have >= 10'):
    protocols.lfw_identity(_identity_set([12, 9, 3]), seeds=[0])


# facenet_classifier


def test_facenet_classifier_fixed_count_per_identity():
  counts = [25, 19, 20, 30, 5]  # min_images=20 keeps 0, 2, 3 (20 is enough)
  ds = _identity_set(counts)
  task = protocols.facenet_classifier(ds, seeds=[0, 1], min_images=20, num_train=10)
  kept = [0, 2, 3]
  assert task.name == 'facenet_classifier'
  assert task.class_names == [ds.class_names[i] for i in kept]
  assert sorted(_origin(task.x).tolist()) == np.flatnonzero(np.isin(ds.labels, kept)).tolist()
  assert task.train_idx.shape == (2, 10 * len(kept))
  for train, test in zip(task.train_idx, task.test_idx):
    assert np.bincount(task.labels[train]).tolist() == [10, 10, 10]
    assert np.bincount(task.labels[test]).tolist() == [counts[i] - 10 for i in kept]
    assert not set(train.tolist()) & set(test.tolist())
  assert not np.array_equal(task.train_idx[0], task.train_idx[1])


# ytf_frames

# person -> frames per video; 'carol' has one video and is left out with min_videos=2.
YTF_VIDEOS = {'alice': [5, 7, 4], 'bob': [6, 3], 'carol': [8], 'dave': [2, 9]}


def _video_set(videos=None, seed=0, frame_ids=None):
  """Frames of each person's videos in shuffled row order: video ids 'P/v', image ids 'P/v/<frame>'.

  Frame numbers are distinct but not consecutive, zero-padded to 5 digits, unless `frame_ids(n)` gives them.
  """
  videos = YTF_VIDEOS if videos is None else videos
  rng = np.random.default_rng(seed)
  names = sorted(videos)
  labels, video_ids, image_ids = [], [], []
  for label, person in enumerate(names):
    for v, n in enumerate(videos[person], 1):
      frames = frame_ids(n) if frame_ids else [f'{f:05d}' for f in rng.choice(1000, n, replace=False)]
      for f in frames:
        labels.append(label)
        video_ids.append(f'{person}/{v}')
        image_ids.append(f'{person}/{v}/{f}')
  order = rng.permutation(len(labels))
  return embedding_sets.EmbeddingSet(
    _traced(len(labels), seed=seed),
    np.asarray(labels, np.int32)[order],
    names,
    image_ids=np.asarray(image_ids)[order],
    video_ids=np.asarray(video_ids)[order],
  )


def _held_out(task, vids, seed_index):
  """Videos of the task's people with no frame in the seed's train rows."""
  train_videos = set(vids[task.train_idx[seed_index]].tolist())
  return {v for v in set(vids.tolist()) if v not in train_videos}


def test_ytf_frames_keeps_people_with_enough_videos():
  ds = _video_set()
  task = protocols.ytf_frames(ds, seeds=[0, 1], min_videos=2)
  kept = [p for p in sorted(YTF_VIDEOS) if len(YTF_VIDEOS[p]) >= 2]
  assert task.name == 'ytf_frames'
  assert task.class_names == kept
  rows = _origin(task.x)
  people = np.asarray(ds.class_names)[ds.labels]
  assert sorted(rows.tolist()) == np.flatnonzero(np.isin(people, kept)).tolist()
  assert np.array_equal(task.x, ds.x[rows])
  assert [task.class_names[lab] for lab in task.labels] == people[rows].tolist()
  assert sorted(set(task.labels.tolist())) == list(range(len(kept)))
  with pytest.raises(ValueError, match='fewer than 2 people have >= 3 videos'):
    protocols.ytf_frames(ds, seeds=[0], min_videos=3)


def test_ytf_frames_holds_out_one_video_per_person():
  ds = _video_set()
  seeds = [0, 1, 2, 3, 4]
  task = protocols.ytf_frames(ds, seeds=seeds)
  vids = ds.video_ids[_origin(task.x)]
  person_of = lambda v: v.split('/')[0]
  full_test_sizes = []
  held_sets = []
  for s in range(len(seeds)):
    train, test = task.train_idx[s], task.test_idx[s]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted, no repeats
    assert not set(train.tolist()) & set(test.tolist())
    held = _held_out(task, vids, s)
    # Exactly one video of each person is absent from train; the test rows come from those videos only.
    assert sorted(person_of(v) for v in held) == task.class_names
    test_videos = set(vids[test].tolist())
    assert test_videos <= held
    assert not test_videos & set(vids[train].tolist())
    for person in task.class_names:
      assert len({v for v in test_videos if person_of(v) == person}) <= 1
    full_test_sizes.append(int(np.isin(vids, list(held)).sum()))
    held_sets.append(frozenset(held))
  assert len(set(held_sets)) > 1  # the held-out videos depend on the seed
  # Every seed is trimmed to the smallest seed's train and test sizes.
  n = len(vids)
  assert task.train_idx.shape == (len(seeds), min(n - t for t in full_test_sizes))
  assert task.test_idx.shape == (len(seeds), min(full_test_sizes))
  # The seed with the fewest test frames keeps all of them; likewise for train.
  s_test = int(np.argmin(full_test_sizes))
  assert set(vids[task.test_idx[s_test]].tolist()) == held_sets[s_test]
  s_train = int(np.argmax(full_test_sizes))
  assert task.train_idx[s_train].tolist() == np.flatnonzero(~np.isin(vids, list(held_sets[s_train]))).tolist()


def test_ytf_frames_per_video_keeps_first_frames_by_image_id():
  ds = _video_set(seed=1)
  k = 3
  task = protocols.ytf_frames(ds, seeds=[0, 1], frames_per_video=k)
  expected = []
  for video in np.unique(ds.video_ids):
    if ds.class_names[ds.labels[ds.video_ids == video][0]] not in task.class_names:
      continue
    rows = np.flatnonzero(ds.video_ids == video)
    expected.extend(rows[np.argsort(ds.image_ids[rows])][:k].tolist())
  rows = _origin(task.x)
  assert sorted(rows.tolist()) == sorted(expected)
  counts = {v: int(c) for v, c in zip(*np.unique(ds.video_ids[rows], return_counts=True))}
  assert counts == {f'{p}/{v}': min(n, k) for p in task.class_names for v, n in enumerate(YTF_VIDEOS[p], 1)}
  assert f'<= {k} per video' in task.description


def test_ytf_frames_per_video_uses_numeric_frame_order_of_real_ytf_ids():
  # Image ids as mir_jax.datasets.ytf.read_ytf writes them; frame 9 is the first frame of each video.
  ds = _video_set(
    {'alice': [3, 3], 'bob': [3, 3]}, frame_ids=lambda n: [f'aligned_detect_1.{f}' for f in (9, 10, 100)[:n]]
  )
  task = protocols.ytf_frames(ds, seeds=[0], frames_per_video=1)
  kept = ds.image_ids[_origin(task.x)]
  assert all(i.endswith('.9') for i in kept), kept


def test_ytf_frames_needs_video_ids():
  ds = _identity_set([5, 5])
  with pytest.raises(ValueError, match='ytf_frames needs video ids'):
    protocols.ytf_frames(ds, seeds=[0])


# lfw_distractors

# probes: identities with >= 10 images (1, 5); distractors: 1 image (0, 3, 7); head: 2-9 images (2, 4, 6).
DISTRACTOR_COUNTS = [1, 10, 2, 1, 9, 12, 5, 1]


def test_lfw_distractors_partitions_identities_by_count():
  ds = _identity_set(DISTRACTOR_COUNTS)
  task = protocols.lfw_distractors(ds, probe_min_images=10, distractor_max_images=1, head_images=(2, 9))
  probe_ids = [i for i, c in enumerate(DISTRACTOR_COUNTS) if c >= 10]
  distractor_ids = [i for i, c in enumerate(DISTRACTOR_COUNTS) if c <= 1]
  head_ids = [i for i, c in enumerate(DISTRACTOR_COUNTS) if 2 <= c <= 9]
  assert task.name == 'lfw_distractors'
  rows_of = lambda ids: np.flatnonzero(np.isin(ds.labels, ids)).tolist()
  probe_rows, distractor_rows, head_rows = (_origin(x) for x in (task.probe_x, task.distractor_x, task.head_x))
  assert sorted(probe_rows.tolist()) == rows_of(probe_ids)
  assert sorted(distractor_rows.tolist()) == rows_of(distractor_ids)
  assert sorted(head_rows.tolist()) == rows_of(head_ids)
  assert len(probe_rows) == sum(DISTRACTOR_COUNTS[i] for i in probe_ids)
  assert len(distractor_rows) == len(distractor_ids)
  assert len(head_rows) == sum(DISTRACTOR_COUNTS[i] for i in head_ids)
  identities = [set(ds.labels[r].tolist()) for r in (probe_rows, distractor_rows, head_rows)]
  for a in range(3):
    for b in range(a + 1, 3):
      assert not identities[a] & identities[b]
  assert np.array_equal(task.probe_labels, ds.labels[probe_rows])
  assert task.head_labels.dtype == np.int32
  assert sorted(set(task.head_labels.tolist())) == list(range(len(head_ids)))
  assert task.head_class_names == [ds.class_names[i] for i in head_ids]
  assert [task.head_class_names[lab] for lab in task.head_labels] == [
    ds.class_names[lab] for lab in ds.labels[head_rows]
  ]


@pytest.mark.parametrize(
  'counts',
  [
    [10, 12, 2, 5],  # no distractor
    [1, 1, 2, 5],  # no probe
    [1, 1, 10, 12],  # no head identity
  ],
)
def test_lfw_distractors_missing_category_raises(counts):
  with pytest.raises(ValueError, match='lfw_distractors needs identities'):
    protocols.lfw_distractors(_identity_set(counts))


# megaface


def _megaface_set():
  """Two FaceScrub probe identities (3 and 4 images) and five one-image distractors."""
  names = ['fs_anna', 'fs_ben', 'mf_0', 'mf_1', 'mf_2', 'mf_3', 'mf_4']
  labels = np.asarray([0, 1, 0, 2, 1, 3, 0, 4, 5, 1, 1, 6], np.int32)
  roles = np.where(labels < 2, 'probe', 'distractor')
  return embedding_sets.EmbeddingSet(_traced(labels.size), labels, names, roles=roles)


def _head_set(names, counts, seed=1):
  labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(names)), counts)).astype(np.int32)
  return embedding_sets.EmbeddingSet(_traced(labels.size, seed=seed), labels, list(names))


def test_megaface_uses_roles_and_a_separate_head():
  ds = _megaface_set()
  head = _head_set(['h_a', 'h_b', 'h_c', 'h_d'], [3, 1, 4, 2])  # head_min_images=2 drops h_b
  task = protocols.megaface(ds, head, head_min_images=2)
  assert task.name == 'megaface'
  assert _origin(task.probe_x).tolist() == np.flatnonzero(ds.roles == 'probe').tolist()
  assert np.array_equal(task.probe_labels, ds.labels[ds.roles == 'probe'])
  assert _origin(task.distractor_x).tolist() == np.flatnonzero(ds.roles == 'distractor').tolist()
  assert task.head_class_names == ['h_a', 'h_c', 'h_d']
  head_rows = _origin(task.head_x)
  assert sorted(head_rows.tolist()) == np.flatnonzero(head.labels != 1).tolist()
  assert sorted(set(task.head_labels.tolist())) == [0, 1, 2]
  assert [task.head_class_names[lab] for lab in task.head_labels] == [
    head.class_names[lab] for lab in head.labels[head_rows]
  ]


def test_megaface_refuses_head_sharing_a_probe_identity():
  with pytest.raises(ValueError, match=r"are also probes \(e.g. \['FS Ben'\]\)"):  # spelt differently
    protocols.megaface(_megaface_set(), _head_set(['h_a', 'FS Ben'], [3, 2]))
  head = _head_set(['h_a', 'fs_ben', 'h_c'], [3, 2, 4])
  with pytest.raises(ValueError, match=r"1 head-training identities are also probes \(e.g. \['fs_ben'\]\)"):
    protocols.megaface(_megaface_set(), head)


def test_megaface_needs_roles():
  ds = _megaface_set()
  head = _head_set(['h_a', 'h_b'], [3, 3])
  with pytest.raises(ValueError, match='megaface needs roles'):
    protocols.megaface(ds._replace(roles=None), head)
  with pytest.raises(ValueError, match='both are needed'):
    protocols.megaface(ds._replace(roles=np.full(len(ds.labels), 'probe')), head)


def test_megaface_leaves_out_noise_before_scoring():
  ds = _megaface_set()
  head = _head_set(['h_a', 'h_b'], [3, 3])
  noise = np.zeros(len(ds.labels), bool)
  noise[[0, 3]] = True  # a probe (row 0) and a distractor (row 3)
  task = protocols.megaface(ds, head, noise=noise)
  assert _origin(task.probe_x).tolist() == [r for r in np.flatnonzero(ds.roles == 'probe') if r != 0]
  assert _origin(task.distractor_x).tolist() == [r for r in np.flatnonzero(ds.roles == 'distractor') if r != 3]
  assert 'on the noise lists and left out: 1 probe images, 1 distractors' in task.description
  assert 'noise' not in protocols.megaface(ds, head).description
  with pytest.raises(ValueError, match='one bool per embedding'):
    protocols.megaface(ds, head, noise=noise[:-1])


# video_means and ytf_pairs


def _direct_means(x, video_ids):
  videos = sorted(set(video_ids.tolist()))
  means = np.stack([x[video_ids == v].astype(np.float64).mean(axis=0) for v in videos])
  return videos, means / np.linalg.norm(means, axis=1, keepdims=True)


def test_video_means_are_normalised_frame_averages():
  ds = _video_set()
  videos, means = protocols.video_means(ds)
  expected_videos, expected = _direct_means(ds.x, ds.video_ids)
  assert list(videos) == expected_videos
  np.testing.assert_allclose(means, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, rtol=1e-6)
  other = np.random.default_rng(7).normal(size=(len(ds.labels), 3))
  videos, means = protocols.video_means(ds, x=other)
  assert means.shape == (len(expected_videos), 3)
  np.testing.assert_allclose(means, _direct_means(other, ds.video_ids)[1], rtol=1e-6, atol=1e-9)
  with pytest.raises(ValueError, match='video_means needs video ids'):
    protocols.video_means(_identity_set([2, 2]))


def test_ytf_pairs_looks_up_video_means():
  ds = _video_set()
  videos, means = _direct_means(ds.x, ds.video_ids)
  mean_of = dict(zip(videos, means))
  pairs = [
    ytf.VideoPair(0, 'alice/1', 'alice/3', True),
    ytf.VideoPair(0, 'bob/2', 'nobody/1', False),  # missing second video
    ytf.VideoPair(1, 'carol/1', 'dave/2', False),
    ytf.VideoPair(2, 'ghost/4', 'dave/1', True),  # missing first video
    ytf.VideoPair(2, 'dave/1', 'dave/2', True),
  ]
  present = [p for p in pairs if p.video_a in mean_of and p.video_b in mean_of]
  a, b, same, folds, missing = protocols.ytf_pairs(ds, pairs)
  assert missing == [pairs[1], pairs[3]]
  np.testing.assert_allclose(a, np.stack([mean_of[p.video_a] for p in present]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(b, np.stack([mean_of[p.video_b] for p in present]), rtol=1e-6, atol=1e-6)
  assert same.dtype == bool and same.tolist() == [p.same for p in present]
  assert folds.tolist() == [p.fold for p in present]


def test_ytf_pairs_with_replaced_features():
  ds = _video_set()
  other = np.random.default_rng(3).normal(size=(len(ds.labels), 5))
  videos, means = _direct_means(other, ds.video_ids)
  mean_of = dict(zip(videos, means))
  pairs = [ytf.VideoPair(4, 'bob/1', 'dave/2', False), ytf.VideoPair(7, 'alice/2', 'alice/1', True)]
  a, b, same, folds, missing = protocols.ytf_pairs(ds, pairs, x=other)
  assert not missing
  np.testing.assert_allclose(a, np.stack([mean_of[p.video_a] for p in pairs]), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(b, np.stack([mean_of[p.video_b] for p in pairs]), rtol=1e-6, atol=1e-9)
  assert same.tolist() == [False, True] and folds.tolist() == [4, 7]


def test_ytf_pairs_without_any_embedded_pair_raises():
  pairs = [ytf.VideoPair(0, 'alice/1', 'nobody/1', True), ytf.VideoPair(0, 'ghost/1', 'ghost/2', False)]
  with pytest.raises(ValueError, match='no YTF pair has embeddings for both of its videos'):
    protocols.ytf_pairs(_video_set(), pairs)


def test_lfw_distractors_refuses_overlapping_ranges():
  ds = embedding_sets.synthetic_identities(num_classes=4, per_class=10, dim=4)
  with pytest.raises(ValueError, match='ranges overlap'):
    protocols.lfw_distractors(ds, probe_min_images=10, head_images=(2, 10))
  with pytest.raises(ValueError, match='ranges overlap'):
    protocols.lfw_distractors(ds, distractor_max_images=2, head_images=(2, 9))
