"""Tests for the result tables (verdicts, formats) and the paper's claims as data."""

import csv
import json
import math
import os
import re

import pytest

from experiments import paper_claims
from mir_jax import report

PAPER_TEXT = '/work/shared/paper/mir_paper.md'


def _t2_half_width(values):
  """95% t half-width for 3 values (df = 2, t quantile in closed form)."""
  mean = sum(values) / 3
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
  u = 0.95  # 2 * 0.975 - 1
  return u * math.sqrt(2 / (1 - u * u)) * sd / math.sqrt(3)


def _table(rule=None):
  return report.Table(
    title='Toy table',
    columns=['LFW', 'MegaFace'],
    rows=[
      report.Row(
        'MIR (a)',
        {
          'LFW': report.Cell(values=(90.0, 92.0, 94.0), seeds=(0, 1, 2), metric='Ac', paper=96.0, paper_metric='Ac'),
          'MegaFace': report.data_not_supplied('MegaFace', 'set $MIR_DATA to a folder holding megaface/', paper=55.75),
        },
      ),
      report.Row(
        'original (b)',
        {
          'LFW': report.Cell(
            values=(85.0, 88.0, 86.0),
            seeds=(0, 1, 2),
            metric='Ac',
            paper=99.65,
            paper_metric='LFW verification accuracy',
          ),
          'MegaFace': report.Cell(paper=54.85, reason='data not supplied'),
        },
      ),
      report.Row('DeepFace (b)', {'LFW': report.Cell(paper=97.35, reason='no public weights')}, claim_only=True),
    ],
    directions=[
      report.Direction('MIR (a)', 'original (b)', 'LFW'),
      report.Direction('MIR (a)', 'original (b)', 'MegaFace'),
    ],
    rule=rule or report.VerdictRule(),
    notes=['toy notes'],
  )


def test_cell_verdict_rule():
  values = (90.0, 92.0, 94.0)
  half = _t2_half_width(values)  # about 4.97
  strict = report.VerdictRule(tolerance=0.0)
  inside = report.Cell(values=values, paper=92.0 + half - 0.01)
  assert report.cell_verdict(inside, strict)[0] == report.REPRODUCED
  outside = report.Cell(values=values, paper=92.0 + half + 0.01)
  assert report.cell_verdict(outside, strict)[0] == report.NOT_REPRODUCED
  # The tolerance alone can reproduce it; switching the CI off leaves the tolerance.
  assert report.cell_verdict(outside, report.VerdictRule(tolerance=half + 0.02))[0] == report.REPRODUCED
  assert report.cell_verdict(inside, report.VerdictRule(tolerance=0.0, use_ci=False))[0] == report.NOT_REPRODUCED
  # One seed: no CI, only the tolerance decides; an exact boundary counts as within.
  one = report.Cell(values=(90.01,), paper=89.71)
  assert abs(90.01 - 89.71) > 0.3  # float arithmetic overshoots the boundary; the rule must not
  assert report.cell_verdict(one, report.VerdictRule(tolerance=0.3))[0] == report.REPRODUCED
  verdict, reason = report.cell_verdict(one, report.VerdictRule(tolerance=0.29))
  assert verdict == report.NOT_REPRODUCED and 'single seed' in reason
  # Nothing measured / nothing claimed.
  assert report.cell_verdict(report.Cell(paper=1.0, reason='why'), strict) == (report.NOT_HERE, 'why')
  assert report.cell_verdict(report.Cell(values=(1.0,)), strict)[0] == report.NO_CLAIM
  # A metric mismatch is said out loud.
  mixed = report.Cell(values=values, paper=92.0, metric='Ac', paper_metric='LFW verification accuracy')
  assert 'LFW verification accuracy' in report.cell_verdict(mixed, strict)[1]


def test_cells_refuse_silent_gaps():
  with pytest.raises(ValueError, match='reason'):
    report.Cell(paper=99.0)
  with pytest.raises(ValueError):
    report.Cell(values=(1.0, 2.0), seeds=(0,))
  with pytest.raises(ValueError):
    report.Cell(values=(float('nan'),))
  with pytest.raises(ValueError, match='claim-only'):
    report.Row('x', {'LFW': report.Cell(values=(1.0,))}, claim_only=True)


def test_direction_verdicts():
  t = _table()
  s = report.direction_summary(t, t.directions[0])
  # Differences per seed: 5, 4, 8.
  assert s['mean_diff'] == pytest.approx(17 / 3) and s['n'] == 3
  assert s['verdict'] == report.REPRODUCED
  assert s['paper_holds'] is False  # the toy paper numbers, 96.00 vs 99.65, do not claim a > b
  assert '96.00 vs 99.65 (not a > b)' in report.render_markdown(t)
  assert report.direction_summary(t, t.directions[1])['verdict'] == report.NOT_HERE

  def direction(a, b, sa=(0, 1, 2), sb=(0, 1, 2)):
    tab = report.Table(
      'd',
      ['LFW'],
      [
        report.Row('a', {'LFW': report.Cell(values=a, seeds=sa)}),
        report.Row('b', {'LFW': report.Cell(values=b, seeds=sb)}),
      ],
      [report.Direction('a', 'b', 'LFW')],
    )
    return report.direction_summary(tab, tab.directions[0])

  assert direction((1.0, 2.0, 3.0), (3.0, 4.0, 6.0))['reason'].startswith('reversed')
  noisy = direction((1.0, 5.0, 3.0), (2.0, 2.0, 2.5))
  assert noisy['verdict'] == report.NOT_REPRODUCED and 'contains 0' in noisy['reason']
  # Paired by seed, not by position: a listed in another seed order gives the same paired test.
  shuffled = direction((3.0, 1.0, 2.0), (0.0, 1.5, 2.0), sa=(2, 0, 1), sb=(0, 1, 2))
  in_order = direction((1.0, 2.0, 3.0), (0.0, 1.5, 2.0))
  assert (shuffled['ci_low'], shuffled['p_greater']) == pytest.approx((in_order['ci_low'], in_order['p_greater']))
  assert direction((1.0, 2.0), (0.0, 1.0), sa=(0, 1), sb=(5, 6))['verdict'] == report.NOT_HERE
  single = direction((2.0,), (1.0,), sa=(0,), sb=(0,))
  assert single['verdict'] == report.NOT_REPRODUCED and single['mean_diff'] == 1.0


def test_markdown_shows_paper_numbers_verdicts_and_reasons():
  md = report.render_markdown(_table())
  for number in ('96.00', '99.65', '97.35', '55.75', '54.85'):
    assert number in md
  assert report.REPRODUCED in md and report.NOT_REPRODUCED in md and report.NOT_HERE in md
  # The missing MegaFace measurement: dashes and how to supply the data, never a number.
  line = next(ln for ln in md.splitlines() if ln.startswith('| MIR (a) | MegaFace'))
  cells = [c.strip() for c in line.strip('|').split('|')]
  assert cells[2] == report.DASH and cells[3] == report.DASH and cells[6] == report.DASH
  assert 'MegaFace data not supplied' in line and '$MIR_DATA' in line
  assert 'Verdict rule' in md and 'toy notes' in md
  # Mean and sample std of the measured cell, computed here.
  assert '92.00 ± 2.00' in md


def test_json_round_trip_and_files(tmp_path):
  t = _table(report.VerdictRule(tolerance=1.0, use_ci=False, level=0.9))
  paths = report.write_all(t, str(tmp_path / 'out'), 'toy')
  assert sorted(paths) == ['csv', 'json', 'md', 'tex'] and all(os.path.exists(p) for p in paths.values())
  with open(paths['json'], encoding='utf-8') as f:
    data = json.load(f)
  assert report.from_json(data) == t
  assert [r['verdict'] for r in data['summary']] == [
    report.cell_verdict(c, t.rule)[0] for r in t.rows for c in r.cells.values()
  ]
  with open(paths['csv'], newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5 and rows[0]['values'] == '90.0;92.0;94.0' and rows[1]['mean'] == ''
  with open(paths['tex'], encoding='utf-8') as f:
    tex = f.read()
  assert r'\toprule' in tex and r'\bottomrule' in tex and r'90\% CI' in tex and r'\$MIR\_DATA' in tex
  with open(paths['md'], encoding='utf-8') as f:
    md = f.read()
  # The paper-shaped summary first, then every cell in full.
  assert md.startswith(report.render_summary(t))
  assert md.endswith(report.render_markdown(t).split('\n', 2)[2]) and '#### Every cell' in md


def test_summary_is_shaped_like_the_paper():
  t = _table()
  lines = report.render_summary(t).splitlines()
  assert lines[2] == '| Row | LFW | MegaFace |'
  mir = next(ln for ln in lines if ln.startswith('| MIR (a) |'))
  # Mean +- std, the paper's number and the verdict: 96 lies inside the t-interval of (90, 92, 94); 99.65
  # lies far outside that of (85, 88, 86).
  assert '92.00 ± 2.00 (paper 96.00, reproduced)' in mir
  assert '86.33 ± 1.53 (paper 99.65, NOT reproduced)' in next(ln for ln in lines if ln.startswith('| original'))
  # A missing number is a dash with a footnote carrying the reason; the same reason is one footnote.
  assert '— [1] (paper 55.75)' in mir
  footnotes = [ln for ln in lines if ln.startswith('[')]
  assert footnotes[0].startswith('[1] MegaFace data not supplied') and len(footnotes) == 3
  deepface = next(ln for ln in lines if ln.startswith('| DeepFace (b) |'))
  assert deepface.endswith('|  |')  # no MegaFace cell in that row: left blank, not a dash
  # Only directions measured on both sides are listed.
  claims = [ln for ln in lines if ln.startswith('| MIR (a) > original (b)')]
  assert len(claims) == 1 and '| LFW |' in claims[0] and '+5.67' in claims[0]
  assert 'toy notes' in lines[-1]


def test_paper_claims_match_the_paper_text():
  if not os.path.exists(PAPER_TEXT):
    pytest.skip(f'{PAPER_TEXT} not found')
  with open(PAPER_TEXT, encoding='utf-8') as f:
    text = f.read()
  # Table I lines look like "FaceNet[6](b)\t% 99.65\t95.1%\t54.85%".
  found = re.findall(r'^(DeepID2\+|FaceNet|DeepFace|BaiDu)\[\d+\]\((a|b)\)\t(.*)$', text, re.M)
  assert len(found) == 8
  for name, variant, cells in found:
    values = [float(re.search(r'\d+(\.\d+)?', c).group()) for c in cells.split('\t')]
    row = f'{name} ({variant})'
    assert [paper_claims.claim('I', row, c).value for c in paper_claims.COLUMNS] == values
  for name, paper_row in (('LFW', 'LFW'), ('YTF', 'YTF'), ('MegaFace', 'Mega-Face')):
    multi, single = re.search(rf'^{paper_row}\t([\d.]+)%\t([\d.]+)%$', text, re.M).groups()
    assert paper_claims.claim('II', 'Multi-Task', name).value == float(multi)
    assert paper_claims.claim('II', 'Single-Task', name).value == float(single)


def test_paper_claims_notes_and_claim_only_tables():
  typo = paper_claims.claim('I', 'FaceNet (b)', 'LFW')
  assert typo.value == 99.65 and '% 99.65' in typo.note
  assert paper_claims.claim('I', 'DeepFace (b)', 'LFW').published.value == 97.35
  # Every paper backbone lacks weights here: none is a registered backbone of the suite.
  from mir_jax import backbones  # pylint: disable=g-import-not-at-top

  assert not any(b.public_weights_here for b in paper_claims.PAPER_BACKBONES.values())
  assert not set(paper_claims.PAPER_BACKBONES) & set(backbones.backbone_names())
  for table, n_rows in (('I', 8), ('II', 2)):
    t = paper_claims.claims_only_table(table)
    assert len(t.rows) == n_rows and all(r.claim_only for r in t.rows)
    records = report.summarize(t)
    assert {r['verdict'] for r in records} == {report.NOT_HERE}
    assert all(r['paper'] is not None and r['mean'] is None for r in records)
    # The paper claims (a) > (b) and multi > single everywhere: the claims table must say so.
    assert all(report.direction_summary(t, d)['paper_holds'] for d in t.directions)


def test_a_head_that_did_not_converge_is_marked_in_its_cell_and_in_claims_on_it():
  ok = report.Cell([99.0, 99.2, 99.1], (0, 1, 2), 'Ac')
  stalled = report.Cell([80.0, 81.0, 79.0], (0, 1, 2), 'Ac', flag='not converged')
  table = report.Table(
    'T',
    ['LFW'],
    [report.Row('mir', {'LFW': stalled}), report.Row('single', {'LFW': ok})],
    [report.Direction('single', 'mir', 'LFW'), report.Direction('mir', 'single', 'LFW')],
  )
  summary = report.render_summary(table)
  assert re.search(r'\| mir \| 80\.00 ± 1\.00 \(NOT CONVERGED\) \|', summary)
  assert re.search(r'\| single \| 99\.10 ± 0\.10 \|', summary)  # no mark where the rule was met
  recs = {r['row']: r for r in report.summarize(table)}
  assert recs['mir']['flag'] == 'not converged' and recs['mir']['reason'].startswith('NOT CONVERGED; ')
  assert recs['single']['flag'] == ''
  for d in table.directions:  # reproduced or not, a claim on a stalled head says it proves nothing
    s = report.direction_summary(table, d)
    assert 'proves nothing about the heads: mir not converged' in s['reason']
  assert report.from_json(json.loads(json.dumps(report.to_json(table)))).rows[0].cells['LFW'].flag == 'not converged'
