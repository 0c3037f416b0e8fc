"""Which of the paper's claims reproduce, read off the tables' verdicts: what the report page and the README
excerpt both print, so that the two cannot disagree.

A claim is a direction claim of a table (`report.Direction`: the paper says one row beats another on a
dataset); its verdict is `report.direction_summary`'s. Nothing here is written by hand.
"""

import collections
from typing import Dict, List

from mir_jax import report

ORDER = (report.REPRODUCED, report.NOT_REPRODUCED, report.NOT_HERE)


def records(tables: Dict[str, report.Table]) -> List[dict]:
  """One record per direction claim of every table, in table order."""
  out = []
  for name, table in tables.items():
    for d in table.directions:
      s = report.direction_summary(table, d)
      out.append({'table': name, 'title': table.title, **s, 'caveat': s.get('caveat', '')})
  return out


def counts(claims: List[dict]) -> Dict[str, int]:
  c = collections.Counter(r['verdict'] for r in claims)
  return {v: c.get(v, 0) for v in ORDER}


def headline(claims: List[dict]) -> str:
  """One sentence: how many claims were measured and how many of those reproduce."""
  c = counts(claims)
  measured = c[report.REPRODUCED] + c[report.NOT_REPRODUCED]
  caveats = sum(bool(r['caveat']) for r in claims if r['verdict'] != report.NOT_HERE)
  text = (
    f'{c[report.REPRODUCED]} of the {measured} direction claims measured here reproduce '
    f'({c[report.NOT_REPRODUCED]} do not); {c[report.NOT_HERE]} cannot be tested here (data not supplied or '
    'no weights)'
  )
  if caveats:
    text += f'; {caveats} of the measured ones rest on a head that did not meet the convergence rule and prove nothing'
  return text + '.'


def _diff(r: dict) -> str:
  ci = '' if r['ci_low'] is None else ' ' + report.format_ci(r['ci_low'], r['ci_high'], sign=True)
  return report.format_number(r['mean_diff'], sign=True) + ci


def rows(claims: List[dict]) -> List[dict]:
  """The claims as display rows (strings), the shape both the page and the markdown render."""
  return [
    {
      'table': r['title'].split(':')[0],
      'claim': r['claim'],
      'column': r['column'],
      'paper': report.format_paper_direction(r),
      'ours': _diff(r),
      'verdict': r['verdict'],
      'reason': r['reason'],
      'n': r['n'],
      'p': report.format_p(r),
    }
    for r in claims
  ]


def markdown(claims: List[dict], measured_only: bool = True) -> str:
  """The claims as a markdown table (the README excerpt's), the headline above it."""
  shown = [r for r in rows(claims) if not measured_only or r['ours'] != report.DASH]
  lines = [
    headline(claims),
    '',
    '| Table | Claim | Dataset | Paper | Ours: mean diff [95% CI] | Verdict | Why |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in shown:
    cells = [r['table'], r['claim'], r['column'], r['paper'], r['ours'], f'**{r["verdict"]}**', r['reason']]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def measured_part(table: report.Table) -> report.Table:
  """The rows and columns of `table` that hold a measurement: the excerpt a reader compares with the paper
  first (`report.render_summary` renders it; the direction claims are `markdown`'s)."""
  rows_ = [r for r in table.rows if any(c.values for c in r.cells.values())]
  columns = [c for c in table.columns if any(r.cells.get(c) and r.cells[c].values for r in rows_)]
  return report.Table(
    table.title,
    columns,
    [report.Row(r.name, {c: v for c, v in r.cells.items() if c in columns}, r.claim_only, r.note) for r in rows_],
    [],
    table.rule,
    [],
  )
