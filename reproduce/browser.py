r"""Looks at a static page in headless Chromium: what a reader's browser shows, not what the HTML says.

  python -m reproduce.browser [--page=outputs/reproduce/report/index.html] [--screenshot=figures/report_screenshot.png]

`inspect` opens the page's file:// URL and returns its tables (data-table), its verdict cells (data-verdict
with the text a reader sees), its images (whether each loaded, at what natural size) and, when asked, a
full-page screenshot. It drives Debian's Chromium (`apt-get install chromium`, /usr/bin/chromium) through
the `playwright` package (requirements.txt); no browser is downloaded (never `playwright install`).
"""

import os
import shutil
import sys
from typing import Optional

from absl import app
from absl import flags

from mir_jax import paths

# Debian's package; REPRODUCE_CHROMIUM names another binary.
CHROMIUM = '/usr/bin/chromium'

# Read in the page after it has loaded: every table, verdict cell and image, as the browser holds them.
# A collapsed <details> renders nothing of its body (innerText ''), so each one is opened, as a reader would, before
# its cells are read; `collapsed` says the cell was behind one as the page loaded.
_SCRIPT = """() => {
  const cells = [...document.querySelectorAll('td[data-verdict]')];
  const collapsed = cells.map(td => { const d = td.closest('details'); return !!d && !d.open; });
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  return {
    tables: [...document.querySelectorAll('table')].map(t => t.getAttribute('data-table')),
    verdicts: cells.map((td, i) => ({
      verdict: td.getAttribute('data-verdict'), text: td.innerText.trim(), collapsed: collapsed[i]})),
    images: [...document.querySelectorAll('img')].map(img => ({
      src: img.getAttribute('src'), complete: img.complete,
      naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight})),
  };
}"""


class Unavailable(RuntimeError):
  """Chromium or playwright is not installed."""


def chromium_path() -> str:
  return os.environ.get('REPRODUCE_CHROMIUM', CHROMIUM)


def unavailable() -> Optional[str]:
  """Why the page cannot be looked at here, with how to install what is missing; None when it can."""
  missing = []
  try:
    import playwright.sync_api  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    missing.append('the playwright package (pip install -r requirements.txt)')
  exe = chromium_path()
  if not (os.path.isfile(exe) and os.access(exe, os.X_OK)) and not shutil.which(exe):
    missing.append(f'Chromium at {exe} (apt-get install chromium)')
  return f'cannot open a headless browser: missing {" and ".join(missing)}' if missing else None


def inspect(page_path: str, screenshot_path: Optional[str] = None, width: int = 1280, height: int = 0) -> dict:
  """Opens page_path in headless Chromium; returns {'tables': [data-table, ...], 'verdicts': [{'verdict',
  'text', 'collapsed'}, ...] (text as shown once every <details> is open), 'images': [{'src', 'complete', 'naturalWidth', 'naturalHeight'}, ...], 'screenshot': path or
  None, 'console_errors': [...]}. The screenshot is of the whole page, or of its first `height` pixels when
  given (a picture for a README). Raises Unavailable (naming the install) when Chromium or playwright is missing."""
  why = unavailable()
  if why:
    raise Unavailable(why)
  from playwright import sync_api  # pylint: disable=import-outside-toplevel

  if not os.path.isfile(page_path):
    raise FileNotFoundError(page_path)
  url = 'file://' + os.path.abspath(page_path)
  with sync_api.sync_playwright() as p:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=['--no-sandbox'])
    try:
      page = browser.new_page(viewport={'width': width, 'height': 800})
      errors = []
      page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
      page.goto(url, wait_until='load')
      if screenshot_path:  # as the page opens, before _SCRIPT expands its <details>
        os.makedirs(os.path.dirname(os.path.abspath(screenshot_path)), exist_ok=True)
        clip = {'x': 0, 'y': 0, 'width': width, 'height': height} if height else None
        page.screenshot(path=screenshot_path, full_page=True, clip=clip)
      result = page.evaluate(_SCRIPT)
      result['console_errors'] = errors
      result['screenshot'] = screenshot_path or None
    finally:
      browser.close()
  return result


def broken_images(result: dict) -> list:
  """The images of an inspect() result that did not load."""
  return [
    i['src'] for i in result['images'] if not (i['complete'] and i['naturalWidth'] > 0 and i['naturalHeight'] > 0)
  ]


def unreadable_verdicts(result: dict) -> list:
  """Verdict cells whose visible text is not their verdict word."""
  return [v for v in result['verdicts'] if v['text'] != v['verdict']]


def summary(result: dict) -> str:
  words = {}
  for v in result['verdicts']:
    words[v['verdict']] = words.get(v['verdict'], 0) + 1
  broken, unreadable = broken_images(result), unreadable_verdicts(result)
  lines = [
    f'tables: {", ".join(str(t) for t in result["tables"])}',
    f'verdict cells: {len(result["verdicts"])} ('
    + ', '.join(f'{w}: {n}' for w, n in sorted(words.items()))
    + f'); behind a collapsed <details>: {sum(bool(v.get("collapsed")) for v in result["verdicts"])}'
    + f'; whose text is not their verdict: {len(unreadable)}',
    f'images: {len(result["images"])}, loaded: {len(result["images"]) - len(broken)}'
    + (f'; NOT LOADED: {", ".join(broken)}' if broken else ''),
  ]
  if unreadable:
    lines.append('unreadable verdicts: ' + '; '.join(f'{v["verdict"]!r} shows {v["text"]!r}' for v in unreadable))
  if result.get('console_errors'):
    lines.append('console errors: ' + '; '.join(result['console_errors']))
  if result.get('screenshot'):
    lines.append(f'screenshot: {result["screenshot"]}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  try:
    result = inspect(f.page, f.screenshot or None, f.width, f.height)
  except Unavailable as e:
    sys.exit(f'error: {e}')
  print(summary(result))
  if broken_images(result) or unreadable_verdicts(result):
    sys.exit(1)


if __name__ == '__main__':
  flags.DEFINE_string('page', os.path.join(paths.OUTPUT_DIR, 'report', 'index.html'), 'The page to open.')
  flags.DEFINE_string('screenshot', '', 'Where to write a full-page PNG screenshot; none when empty.')
  flags.DEFINE_integer('width', 1280, 'Viewport width in CSS pixels.')
  flags.DEFINE_integer('height', 0, "The screenshot's height from the top in CSS pixels; 0 = the whole page.")
  app.run(main)
