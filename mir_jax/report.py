"""Result tables with verdicts: markdown, CSV, JSON and LaTeX from one `Table`.

A `Cell` holds our per-seed measurements of one (row, dataset) entry (in percent, like the paper), the
paper's number, and, when nothing was measured, the reason why (no public weights for the backbone; data
not supplied, and how to supply it). Everything else (mean, std, CI, difference, verdict) is derived when
rendering, so a rendered number always comes from stored measurements: a cell without measurements renders
as '—' with its reason, never as a made-up number.

Verdict of a cell (`VerdictRule`, a parameter of the table):
  not reproducible here   nothing measured; the reason says why (claim-only row, data not supplied).
  no paper claim          measured, but the paper prints no number to compare with (e.g. sanity anchors).
  reproduced              the paper's number lies inside our `level` t-interval over seeds (needs >= 2
                          seeds; `use_ci`), or |our mean - paper| <= `tolerance` percentage points.
  not reproduced          otherwise.
When our metric and the paper's differ (e.g. our Ac vs a number that equals a published verification
accuracy), the reason says so.

Verdict of a direction claim (`Direction`: the paper says row `better` beats row `worse` on a dataset),
from the paired per-seed differences better - worse (paired by seed when both cells list seeds, else by
position):
  reproduced              the two-sided `level` t-interval of the mean difference lies above 0.
  not reproduced          otherwise: it contains 0, lies below 0 (reason says 'reversed'), or one seed only.
  not reproducible here   a cell lacks measurements, or the cells cannot be paired.
"""

import csv
import dataclasses
import json
import math
import os
from typing import Dict, List, Optional, Tuple

from mir_jax.evaluators import significance

REPRODUCED = 'reproduced'
NOT_REPRODUCED = 'not reproduced'
NOT_HERE = 'not reproducible here'
NO_CLAIM = 'no paper claim'
DASH = '—'

# Absorbs float error in |diff| <= tolerance (e.g. 99.15 - 98.65 = 0.50000000000001).
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class VerdictRule:
  tolerance: float = 0.5  # percentage points
  use_ci: bool = True
  level: float = 0.95

  def describe(self) -> str:
    ci = (
      f"the paper's number lies inside our {self.level:.0%} t-interval over seeds (>= 2 seeds) or "
      if self.use_ci
      else ''
    )
    return (
      f'A cell is "{REPRODUCED}" when {ci}|our mean - paper| <= {self.tolerance:g} percentage points; '
      f'else "{NOT_REPRODUCED}". A direction claim (a > b) is "{REPRODUCED}" when the {self.level:.0%} '
      f'paired t-interval of the per-seed differences a - b lies above 0. '
      f'"{NOT_HERE}": nothing measured, for the reason given.'
    )


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (row, dataset) entry. Numbers are percentages."""

  values: Tuple[float, ...] = ()  # our measurement, one per seed
  seeds: Tuple[int, ...] = ()  # optional, one per value; pairs cells by seed in direction tests
  metric: str = ''  # what `values` measure
  paper: Optional[float] = None  # the paper's number
  paper_metric: str = ''
  reason: str = ''  # required when `values` is empty: why nothing is measured
  note: str = ''
  # Printed in the cell beside its number, e.g. 'not converged': a head that did not meet the convergence
  # rule (mir_jax/tuning.py) proves nothing about the model, and the reader must see it at the number.
  flag: str = ''

  def __post_init__(self):
    # Tuples keep the cell hashable and make JSON round trips compare equal.
    object.__setattr__(self, 'values', tuple(float(v) for v in self.values))
    object.__setattr__(self, 'seeds', tuple(int(s) for s in self.seeds))
    if self.seeds and len(self.seeds) != len(self.values):
      raise ValueError(f'{len(self.seeds)} seeds for {len(self.values)} values')
    if len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'duplicate seeds {self.seeds}')
    if not all(math.isfinite(v) for v in self.values):
      raise ValueError(f'non-finite measurement in {self.values}')
    if not self.values and not self.reason:
      raise ValueError('a cell without measurements needs a reason')


def data_not_supplied(dataset: str, how_to_supply: str, **cell_fields) -> Cell:
  """A cell whose data set is not available here; the reason tells the reader how to supply it."""
  return Cell(reason=f'{dataset} data not supplied; to supply it: {how_to_supply}', **cell_fields)


@dataclasses.dataclass
class Row:
  name: str
  cells: Dict[str, Cell]  # column -> cell
  claim_only: bool = False  # the paper's number only: the backbone has no public weights here
  note: str = ''

  def __post_init__(self):
    if self.claim_only and any(c.values for c in self.cells.values()):
      raise ValueError(f'claim-only row {self.name!r} has measurements')


@dataclasses.dataclass(frozen=True)
class Direction:
  better: str  # row the paper claims is better
  worse: str
  column: str


@dataclasses.dataclass
class Table:
  title: str
  columns: List[str]
  rows: List[Row]
  directions: List[Direction] = dataclasses.field(default_factory=list)
  rule: VerdictRule = VerdictRule()
  notes: List[str] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    names = [r.name for r in self.rows]
    if len(set(names)) != len(names):
      raise ValueError(f'duplicate row names in {names}')
    for r in self.rows:
      unknown = set(r.cells) - set(self.columns)
      if unknown:
        raise ValueError(f'row {r.name!r} has cells for unknown columns {sorted(unknown)}')
    for d in self.directions:
      if d.better not in names or d.worse not in names or d.column not in self.columns:
        raise ValueError(f'direction {d} refers to a missing row or column')

  def cell(self, row: str, column: str) -> Cell:
    r = next(r for r in self.rows if r.name == row)
    return r.cells.get(column, Cell(reason='not part of this experiment'))


def cell_verdict(cell: Cell, rule: VerdictRule) -> Tuple[str, str]:
  """(verdict, reason) of one cell under `rule`; see the module docstring."""
  if not cell.values:
    return NOT_HERE, cell.reason
  if cell.paper is None:
    return NO_CLAIM, 'the paper prints no number here'
  s = significance.mean_ci(cell.values, rule.level)
  diff = s.mean - cell.paper
  within_tol = abs(diff) <= rule.tolerance + _EPS
  in_ci = rule.use_ci and s.ci_low is not None and s.ci_low <= cell.paper <= s.ci_high
  if in_ci:
    verdict, reason = REPRODUCED, f'paper {cell.paper:.2f} inside our {rule.level:.0%} CI'
  elif within_tol:
    verdict, reason = REPRODUCED, f'|diff| {abs(diff):.2f} <= tolerance {rule.tolerance:g} pp'
  else:
    ci = (
      f'outside our {rule.level:.0%} CI and '
      if rule.use_ci and s.ci_low is not None
      else 'single seed (no CI); '
      if rule.use_ci
      else ''
    )
    verdict, reason = NOT_REPRODUCED, f'paper {cell.paper:.2f} {ci}|diff| {abs(diff):.2f} > {rule.tolerance:g} pp'
  if cell.metric and cell.paper_metric and cell.metric != cell.paper_metric:
    reason += f"; compares our {cell.metric} with the paper's {cell.paper_metric}"
  return verdict, reason


def _paired(a: Cell, b: Cell):
  """Values of a and b paired by seed (when both list seeds) or by position; None if impossible."""
  if a.seeds and b.seeds:
    common = sorted(set(a.seeds) & set(b.seeds))
    if not common:
      return None
    pa, pb = dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values))
    return [pa[s] for s in common], [pb[s] for s in common]
  if len(a.values) != len(b.values):
    return None
  return list(a.values), list(b.values)


def direction_summary(table: Table, d: Direction) -> dict:
  """The paper's and our evidence for `d.better` > `d.worse` on `d.column`, with a verdict."""
  a, b = table.cell(d.better, d.column), table.cell(d.worse, d.column)
  out = {
    'claim': f'{d.better} > {d.worse}',
    'better': d.better,
    'worse': d.worse,
    'column': d.column,
    'paper_better': a.paper,
    'paper_worse': b.paper,
    'paper_holds': None if a.paper is None or b.paper is None else a.paper > b.paper,
    'n': 0,
    'mean_diff': None,
    'ci_low': None,
    'ci_high': None,
    'p_greater': None,
  }
  if not a.values or not b.values:
    missing = d.better if not a.values else d.worse
    reason = table.cell(missing, d.column).reason
    return {**out, 'verdict': NOT_HERE, 'reason': f'{missing}: {reason}'}
  pairs = _paired(a, b)
  if pairs is None:
    return {**out, 'verdict': NOT_HERE, 'reason': 'the two cells share no seeds to pair'}
  flagged = [f'{name} {cell.flag}' for name, cell in ((d.better, a), (d.worse, b)) if cell.flag]
  if flagged:
    out['caveat'] = 'proves nothing about the heads: ' + ', '.join(flagged)
  t = significance.paired_t(*pairs, level=table.rule.level, alternative='greater')
  out.update(n=t.n, mean_diff=t.mean_diff, ci_low=t.ci_low, ci_high=t.ci_high, p_greater=t.p)
  caveat = f'; {out["caveat"]}' if flagged else ''
  if t.ci_low is None:
    # Zero spread with n >= 2 means every seed moved the same way by the same amount.
    if t.n >= 2 and t.mean_diff > 0:
      return {**out, 'verdict': REPRODUCED, 'reason': f'every one of {t.n} seeds: +{t.mean_diff:.2f}{caveat}'}
    return {**out, 'verdict': NOT_REPRODUCED, 'reason': f'{t.note}; observed diff {t.mean_diff:+.2f}{caveat}'}
  ci = f'{table.rule.level:.0%} CI of diff [{t.ci_low:+.2f}, {t.ci_high:+.2f}]'
  if t.ci_low > 0:
    return {**out, 'verdict': REPRODUCED, 'reason': f'{ci} above 0{caveat}'}
  if t.ci_high < 0:
    return {**out, 'verdict': NOT_REPRODUCED, 'reason': f'reversed: {ci} below 0{caveat}'}
  return {**out, 'verdict': NOT_REPRODUCED, 'reason': f'{ci} contains 0{caveat}'}


def summarize(table: Table) -> List[dict]:
  """One record per (row, column) with every derived number; what all four formats render."""
  records = []
  for row in table.rows:
    for column in table.columns:
      if column not in row.cells:
        continue
      cell = row.cells[column]
      rec = {
        'row': row.name,
        'column': column,
        'claim_only': row.claim_only,
        'metric': cell.metric,
        'n': len(cell.values),
        'mean': None,
        'std': None,
        'ci_low': None,
        'ci_high': None,
        'paper': cell.paper,
        'paper_metric': cell.paper_metric,
        'diff': None,
        'values': list(cell.values),
        'seeds': list(cell.seeds),
        'note': cell.note,
        'flag': cell.flag,
      }
      if cell.values:
        s = significance.mean_ci(cell.values, table.rule.level)
        rec.update(mean=s.mean, std=s.std, ci_low=s.ci_low, ci_high=s.ci_high)
        if cell.paper is not None:
          rec['diff'] = s.mean - cell.paper
      rec['verdict'], rec['reason'] = cell_verdict(cell, table.rule)
      if cell.flag and cell.values:
        rec['reason'] = f'{cell.flag.upper()}; {rec["reason"]}'
      records.append(rec)
  return records


def format_number(x, sign: bool = False) -> str:
  if x is None:
    return DASH
  return f'{x:+.2f}' if sign else f'{x:.2f}'


def format_ours(rec) -> str:
  if rec['mean'] is None:
    return DASH
  return format_number(rec['mean']) if rec['std'] is None else f'{rec["mean"]:.2f} ± {rec["std"]:.2f}'


def format_ci(low, high, sign: bool = False) -> str:
  if low is None:
    return DASH
  return f'[{format_number(low, sign)}, {format_number(high, sign)}]'


def format_paper_direction(s) -> str:
  if s['paper_holds'] is None:
    return DASH
  return f'{s["paper_better"]:.2f} vs {s["paper_worse"]:.2f}' + ('' if s['paper_holds'] else ' (not a > b)')


def format_p(s) -> str:
  return DASH if s['p_greater'] is None else f'{s["p_greater"]:.3g}'


def _md_escape(text: str) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def table_notes(table: Table, records: List[dict]) -> List[str]:
  """The table's notes, each cell note once with the cells it belongs to (`records`: `summarize(table)`),
  then the rows' notes."""
  where = {}  # note -> the cells it belongs to; a row-wide note is listed once
  for r in records:
    if r['note']:
      where.setdefault(r['note'], []).append(f'{r["row"]} / {r["column"]}')
  notes = list(table.notes) + [f'{", ".join(cells)}: {note}' for note, cells in where.items()]
  return notes + [f'{row.name}: {row.note}' for row in table.rows if row.note]


def render_markdown(table: Table) -> str:
  """The table as GitHub markdown: cells, then direction claims, then the rule and notes."""
  level = f'{table.rule.level:.0%}'
  lines = [
    f'### {table.title}',
    '',
    f'| Row | Dataset | Ours (mean ± std) | {level} CI | n | Paper | Diff | Verdict | Reason |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  records = summarize(table)
  for r in records:
    cells = [
      r['row'],
      r['column'],
      format_ours(r),
      format_ci(r['ci_low'], r['ci_high']),
      str(r['n']),
      format_number(r['paper']),
      format_number(r['diff'], sign=True),
      f'**{r["verdict"]}**',
      r['reason'],
    ]
    lines.append('| ' + ' | '.join(_md_escape(c) for c in cells) + ' |')
  if table.directions:
    lines += [
      '',
      'Direction claims (paired over seeds; p one-sided, H1: better > worse):',
      '',
      f'| Claim | Dataset | Paper | Ours: mean diff | {level} CI | n | p | Verdict | Reason |',
      '|---|---|---|---|---|---|---|---|---|',
    ]
    for d in table.directions:
      s = direction_summary(table, d)
      cells = [
        s['claim'],
        s['column'],
        format_paper_direction(s),
        format_number(s['mean_diff'], sign=True),
        format_ci(s['ci_low'], s['ci_high'], sign=True),
        str(s['n']),
        format_p(s),
        f'**{s["verdict"]}**',
        s['reason'],
      ]
      lines.append('| ' + ' | '.join(_md_escape(c) for c in cells) + ' |')
  lines += [
    '',
    f'Verdict rule: {table.rule.describe()} Numbers are percentages; std is the sample std '
    '(ddof=1) over seeds; "—" marks no measurement.',
  ]
  notes = table_notes(table, records)
  if notes:
    lines += [''] + [f'- {_md_escape(n)}' for n in notes]
  return '\n'.join(lines) + '\n'


_SHORT = {REPRODUCED: 'reproduced', NOT_REPRODUCED: 'NOT reproduced', NOT_HERE: 'not here', NO_CLAIM: ''}


def render_summary(table: Table) -> str:
  """The table as the paper lays it out: one line per row, one cell per column ("ours +- std (paper
  number, verdict)"), every reason for a missing number as a numbered footnote, then the direction claims.
  `render_markdown` has every derived number; this is the part a reader compares with the paper."""
  records = {(r['row'], r['column']): r for r in summarize(table)}
  footnotes: Dict[str, int] = {}
  lines = [
    f'### {table.title}',
    '',
    '| Row | ' + ' | '.join(table.columns) + ' |',
    '|---|' + '---|' * len(table.columns),
  ]
  for row in table.rows:
    cells = []
    for column in table.columns:
      rec = records.get((row.name, column))
      if rec is None:
        cells.append('')
        continue
      if rec['mean'] is None:
        mark = footnotes.setdefault(rec['reason'], len(footnotes) + 1)
        text = f'— [{mark}]'
      else:
        text = format_ours(rec)
      extra = [f'paper {rec["paper"]:.2f}'] if rec['paper'] is not None else []
      if rec['mean'] is not None and _SHORT[rec['verdict']]:
        extra.append(_SHORT[rec['verdict']])
      if rec['mean'] is not None and rec['flag']:
        extra.append(rec['flag'].upper())
      cells.append(text + (f' ({", ".join(extra)})' if extra else ''))
    lines.append('| ' + ' | '.join(_md_escape(c) for c in [row.name] + cells) + ' |')
  measured = [
    d for d in table.directions if table.cell(d.better, d.column).values and table.cell(d.worse, d.column).values
  ]
  if measured:
    lines += [
      '',
      'Direction claims with measurements on both sides (paired over seeds):',
      '',
      f'| Claim | Dataset | Paper | Ours: mean diff [{table.rule.level:.0%} CI] | p (one-sided) | Verdict |',
      '|---|---|---|---|---|---|',
    ]
    for d in measured:
      s = direction_summary(table, d)
      cells = [
        s['claim'],
        s['column'],
        format_paper_direction(s),
        f'{format_number(s["mean_diff"], sign=True)} {format_ci(s["ci_low"], s["ci_high"], sign=True)}',
        format_p(s),
        f'**{s["verdict"]}**' + (f' ({s["reason"]})' if s['verdict'] != REPRODUCED or s.get('caveat') else ''),
      ]
      lines.append('| ' + ' | '.join(_md_escape(c) for c in cells) + ' |')
  if footnotes:
    lines += [''] + [f'[{n}] {_md_escape(reason)}' for reason, n in footnotes.items()]
  if table.notes:
    lines += [''] + [f'- {_md_escape(n)}' for n in table.notes]
  return '\n'.join(lines) + '\n'


def to_json(table: Table) -> dict:
  """Inputs (enough to rebuild the table with `from_json`) plus every derived number, for readers."""
  return {
    'title': table.title,
    'columns': list(table.columns),
    'rule': dataclasses.asdict(table.rule),
    'notes': list(table.notes),
    'rows': [
      {
        'name': r.name,
        'claim_only': r.claim_only,
        'note': r.note,
        'cells': {c: dataclasses.asdict(cell) for c, cell in r.cells.items()},
      }
      for r in table.rows
    ],
    'directions': [dataclasses.asdict(d) for d in table.directions],
    'rule_text': table.rule.describe(),
    'summary': summarize(table),
    'direction_summary': [direction_summary(table, d) for d in table.directions],
  }


def from_json(data: dict) -> Table:
  """Rebuilds a `Table` from `to_json` output; derived fields are ignored (recomputed on render)."""
  return Table(
    title=data['title'],
    columns=list(data['columns']),
    rows=[
      Row(r['name'], {c: Cell(**cell) for c, cell in r['cells'].items()}, r['claim_only'], r['note'])
      for r in data['rows']
    ],
    directions=[Direction(**d) for d in data['directions']],
    rule=VerdictRule(**data['rule']),
    notes=list(data['notes']),
  )


_CSV_FIELDS = (
  'row',
  'column',
  'claim_only',
  'metric',
  'n',
  'mean',
  'std',
  'ci_low',
  'ci_high',
  'paper',
  'paper_metric',
  'diff',
  'verdict',
  'reason',
  'values',
  'seeds',
  'note',
  'flag',
)


def _write_csv(table: Table, path: str):
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    w.writeheader()
    for rec in summarize(table):
      rec = {k: ('' if rec[k] is None else rec[k]) for k in _CSV_FIELDS}
      rec['values'] = ';'.join(repr(v) for v in rec['values'])
      rec['seeds'] = ';'.join(str(s) for s in rec['seeds'])
      w.writerow(rec)


_TEX_SPECIAL = {
  '\\': r'\textbackslash{}',
  '&': r'\&',
  '%': r'\%',
  '$': r'\$',
  '#': r'\#',
  '_': r'\_',
  '{': r'\{',
  '}': r'\}',
  '~': r'\textasciitilde{}',
  '^': r'\textasciicircum{}',
  '—': '---',
  '±': r'$\pm$',
  '≤': r'$\le$',
  '≥': r'$\ge$',
  '>': r'$>$',
  '<': r'$<$',
  '|': r'$|$',
}


def _tex(text) -> str:
  return ''.join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: Table) -> str:
  """A booktabs `table` environment (needs \\usepackage{booktabs}); reasons go in a wrapped last column."""
  level = f'{table.rule.level:.0%}'
  lines = [
    r'\begin{table}[t]',
    r'\centering',
    r'\small',
    r'\begin{tabular}{llrrrrrlp{5cm}}',
    r'\toprule',
    ' & '.join(
      _tex(h) for h in ('Row', 'Dataset', 'Ours (mean ± std)', f'{level} CI', 'n', 'Paper', 'Diff', 'Verdict', 'Reason')
    )
    + r' \\',
    r'\midrule',
  ]
  for r in summarize(table):
    cells = [
      r['row'],
      r['column'],
      format_ours(r),
      format_ci(r['ci_low'], r['ci_high']),
      r['n'],
      format_number(r['paper']),
      format_number(r['diff'], sign=True),
      r['verdict'],
      r['reason'],
    ]
    lines.append(' & '.join(_tex(c) for c in cells) + r' \\')
  if table.directions:
    lines += [r'\midrule', r'\multicolumn{9}{l}{\emph{' + _tex('Direction claims (paired over seeds)') + r'}} \\']
    for d in table.directions:
      s = direction_summary(table, d)
      cells = [
        s['claim'],
        s['column'],
        format_paper_direction(s),
        format_number(s['mean_diff'], sign=True),
        format_ci(s['ci_low'], s['ci_high'], sign=True),
        s['n'],
        format_p(s),
        s['verdict'],
        s['reason'],
      ]
      lines.append(' & '.join(_tex(c) for c in cells) + r' \\')
  lines += [
    r'\bottomrule',
    r'\end{tabular}',
    r'\caption{' + _tex(f'{table.title}. {table.rule.describe()}') + '}',
    r'\end{table}',
  ]
  return '\n'.join(lines) + '\n'


def write_all(table: Table, out_dir: str, stem: str, provenance: str = '') -> Dict[str, str]:
  """Writes `stem`.md, .csv, .json and .tex into `out_dir`; returns {format: path}. `provenance`: the file name
  of the manifest recording what produced the table, named in the JSON."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f'{stem}.{ext}') for ext in ('md', 'csv', 'json', 'tex')}
  with open(paths['md'], 'w', encoding='utf-8') as f:
    f.write(render_summary(table) + '\n#### Every cell\n\n' + render_markdown(table).split('\n', 2)[2])
  _write_csv(table, paths['csv'])
  with open(paths['json'], 'w', encoding='utf-8') as f:
    json.dump({**to_json(table), **({'provenance': provenance} if provenance else {})}, f, indent=1, ensure_ascii=False)
  with open(paths['tex'], 'w', encoding='utf-8') as f:
    f.write(render_latex(table))
  return paths
