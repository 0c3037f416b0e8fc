"""The report page (`python -m reproduce.report`) from a real reproduce run on the synthetic LFW-shaped set:
every table, verdict word, figure, curve and manifest on the page, and a clear line for whatever is missing."""

import html.parser
import json
import os
import shutil

import numpy as np
import pytest

from mir_jax.evaluators import verification
from reproduce import claims
from reproduce import provenance
from reproduce import report as report_page


class _Page(html.parser.HTMLParser):
  """The page's tables (by data-table), verdict cells and image sources."""

  def __init__(self):
    super().__init__()
    self.tables, self.verdicts, self.images, self.links = [], [], [], []
    self._verdict = None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == 'table':
      self.tables.append(a.get('data-table'))
    if tag == 'td' and 'data-verdict' in a:
      self._verdict = [a['data-verdict'], '']
    if tag == 'img':
      self.images.append(a['src'])
    if tag == 'a' and 'href' in a:
      self.links.append(a['href'])

  def handle_data(self, data):
    if self._verdict is not None:
      self._verdict[1] += data

  def handle_endtag(self, tag):
    if tag == 'td' and self._verdict is not None:
      self.verdicts.append(tuple(self._verdict))
      self._verdict = None


def _verification_json(out_dir):
  """An lfw_verification-shaped result from the real evaluator on random pairs."""
  rng = np.random.default_rng(0)
  same = np.repeat([True, False], 300)
  a = rng.normal(size=(600, 8))
  b = np.where(same[:, None], a + 0.5 * rng.normal(size=(600, 8)), rng.normal(size=(600, 8)))
  summary = verification.evaluate(a, b, same, np.arange(600) % 10).summary()
  summary.update(
    n_pairs_in_protocol=600,
    n_pairs_evaluated=600,
    flip_averaged=False,
    flip_concatenated=False,
    cache={'spec': {'backbone_config': {'backbone': 'fake'}}},
  )
  with open(os.path.join(out_dir, 'lfw_verification_fake.json'), 'w') as f:
    json.dump(summary, f)


@pytest.fixture(scope='module')
def run_dir(synthetic_run, tmp_path_factory):
  """A copy of the synthetic `reproduce.all` run's outputs (conftest.py), with an LFW verification result."""
  out = str(tmp_path_factory.mktemp('report') / 'out')
  shutil.copytree(synthetic_run.ctx.output_dir, out)
  _verification_json(out)
  return out


def test_page_holds_every_table_verdict_figure_and_curve(run_dir):
  page = report_page.build(run_dir)
  with open(page, encoding='utf-8') as f:
    text = f.read()
  parsed = _Page()
  parsed.feed(text)
  assert {'claims', 'table1', 'table2', 'ablations', 'verification', 'heads', 'provenance'} <= set(parsed.tables)
  # Every verdict cell carries its word, readable without the colour.
  assert parsed.verdicts and all(word.strip() == verdict for verdict, word in parsed.verdicts)
  words = {v for v, _ in parsed.verdicts}
  assert {'reproduced', 'not reproducible here'} & words and ('met the rule' in words or 'NOT CONVERGED' in words)
  # Every image is a file beside the page, non-empty; no network.
  base = os.path.dirname(page)
  assert parsed.images and all(os.path.getsize(os.path.join(base, src)) > 0 for src in parsed.images)
  # Nothing loads from the network (addresses in the text, e.g. where to download YTF, are only text).
  assert not any(src.startswith(('http:', 'https:', '//')) for src in parsed.images)
  assert '<script' not in text and '<link' not in text and '@import' not in text
  srcs = ' '.join(parsed.images)
  assert 'pca_fake_tuned' in srcs and 'lfw_roc' in srcs and 'open_set' in srcs and 'head_' in srcs
  # One curve image per head group the run trained, and every linked local file exists.
  with open(os.path.join(run_dir, 'all_curves.json')) as f:
    groups = json.load(f)['heads']
  assert sum(s.startswith('img/head_') for s in parsed.images) == len(groups) > 0
  for href in parsed.links:
    if not href.startswith('#'):
      assert os.path.exists(os.path.join(base, href)), href
  # The page's own manifest, and the claims summary generated from the same verdicts.
  assert provenance.load(os.path.join(base, 'provenance.json'))['name'] == 'report'
  tables = report_page.load(run_dir).tables
  assert claims.headline(claims.records(tables)) in text


def test_head_curves_hold_loss_and_validation(run_dir):
  with open(os.path.join(run_dir, 'all_curves.json')) as f:
    data = json.load(f)
  for g in data['heads']:
    assert len(g['loss_steps']) == len(g['loss_mean']) and g['loss_steps'][-1] == g['setting']['steps']
    assert g['validation'] and str(g['setting']['steps']) in g['validation']
  (curve,) = [c for c in data['open_set'] if c['label'] == 'LFW-distractors fake tuned']
  assert curve['sizes'][-1] == 30 and len(curve['original']) == len(curve['sizes']) == len(curve['mir'][0])


def test_missing_and_foreign_inputs_are_listed_not_fatal(run_dir, tmp_path):
  partial = tmp_path / 'partial'
  shutil.copytree(run_dir, partial)
  os.remove(partial / 'table2.json')
  os.remove(partial / 'pca_fake_tuned.png')
  m = provenance.load(partial / 'all.provenance.json')
  m['git']['commit'] = '0' * 40
  provenance.write(partial / 'all.provenance.json', m)
  (partial / 'ablations.json').write_text('{not json')
  page = report_page.build(str(partial))
  text = open(page, encoding='utf-8').read()
  assert 'table2' in text and 'python -m reproduce.table2' in text
  assert 'pca_fake_tuned.png is missing' in text
  assert 'made at commit 000000000000' in text
  assert 'ablations.json cannot be read' in text
  parsed = _Page()
  parsed.feed(text)
  assert 'table1' in parsed.tables and 'table2' not in parsed.tables


def test_readme_excerpt_is_the_pages_claims(run_dir, tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text(f'intro\n{report_page.README_BEGIN}\nold\n{report_page.README_END}\noutro\n')
  excerpt = report_page.readme_excerpt(run_dir)
  report_page.rewrite_readme(str(readme), excerpt)
  report_page.rewrite_readme(str(readme), excerpt)  # idempotent
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('outro\n') and 'old' not in text
  assert text.count(report_page.README_BEGIN) == 1
  assert claims.headline(claims.records(report_page.load(run_dir).tables)) in text
  unmarked = tmp_path / 'unmarked.md'
  unmarked.write_text('no markers here\n')
  with pytest.raises(ValueError, match='markers'):
    report_page.rewrite_readme(str(unmarked), excerpt)
  assert unmarked.read_text() == 'no markers here\n'
