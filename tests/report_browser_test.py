"""The report page as headless Chromium shows it (reproduce/browser.py): every table present, every verdict
readable as a word, every image loaded, a screenshot that is not blank. Skips without Chromium or playwright,
saying how to install them, except under CI (CI=true), where their absence fails: CI installs Chromium
(.ci/run), so a skip there would hide a page nobody looked at."""

import os
import shutil

import numpy as np
from PIL import Image
import pytest
from report_page_test import run_dir  # noqa: F401  pylint: disable=unused-import

from reproduce import browser
from reproduce import report as report_page

TABLES = {'claims', 'table1', 'table2', 'ablations', 'verification', 'heads', 'provenance'}


def _require_browser():
  why = browser.unavailable()
  if why:
    if os.environ.get('CI'):
      pytest.fail(f'{why}; CI must look at the page (.ci/run installs Chromium)')
    pytest.skip(why)


@pytest.fixture(scope='module')
def page(request, tmp_path_factory):
  _require_browser()  # before run_dir, so that a skip does not first build a run (minutes)
  return report_page.build(request.getfixturevalue('run_dir'), str(tmp_path_factory.mktemp('page')))


def test_browser_shows_every_table_verdict_and_image(page, tmp_path):
  shot = str(tmp_path / 'page.png')
  result = browser.inspect(page, screenshot_path=shot)
  assert TABLES <= set(result['tables']), result['tables']
  # Each verdict is readable without its colour: the cell's visible text is the verdict word.
  assert result['verdicts'] and not browser.unreadable_verdicts(result), browser.summary(result)
  # Every image loaded, as the browser decoded it (not merely a file that exists).
  assert result['images'] and not browser.broken_images(result), browser.summary(result)
  assert not result['console_errors'], result['console_errors']
  assert result['screenshot'] == shot
  with Image.open(shot) as im:
    rgb = im.convert('RGB')
  assert rgb.width >= 1280 and rgb.height > 800  # the full page, taller than one viewport
  # Not blank: text, tables, colours and plots make thousands of colours and a wide spread of pixel values.
  assert len(rgb.getcolors(1 << 24)) > 16 and np.asarray(rgb).std() > 10


def test_a_missing_image_is_reported_not_loaded(page, tmp_path):
  copy = tmp_path / 'page'
  shutil.copytree(os.path.dirname(page), copy)
  img = sorted(os.listdir(copy / 'img'))[0]
  os.remove(copy / 'img' / img)
  result = browser.inspect(str(copy / 'index.html'))
  assert browser.broken_images(result) == [f'img/{img}']
  assert 'NOT LOADED: img/' + img in browser.summary(result)
