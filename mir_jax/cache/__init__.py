"""The embedding cache: face embeddings stored as a TFDS dataset in array_record format.

Embedding a face dataset is the slow step of every experiment, so it runs once per (dataset, reader options,
backbone, alignment) and every later step reads the cache. The modules, in the order a cache is made and read:

  selection  which images: the dataset listing with `--subset` and `--limit` applied.
  lookup     the cache those settings name (`find_cache`), or everything needed to build it (`prepare`).
  flags      the command-line flags that choose a cache, defined once for every entry point.
  key        what a cache holds (`CacheSpec`), the directory name that hashes it, and the file layout.
  pipeline   the per-image work: decode, detect, preprocess and, for one-core backbones, embed.
  workers    the worker processes running that work, and what keeps their memory bounded.
  lock       one writer per cache directory.
  writer     `build`: the resumable shard writer.
  verify     checking every shard against its recorded digest; marking the damaged ones for recomputation.
  reader     `load_embeddings`, `data_source`, `read_info`: reading a complete cache back.

Layout, under a data dir (default `<repo>/data_cache`, see `lookup.default_data_dir`):

  <data_dir>/<name>/1.0.0/
    <name>-full.array_record-00000-of-000NN ...   one shard per chunk of images (TFDS's file names)
    dataset_info.json, features.json, metadata.json   TFDS metadata, written once every shard exists
    mir_cache.json        what was embedded, how (key inputs), counts, timings
    skipped_images.json   images that could not be decoded (path + reason) and detection fallbacks
    _work/plan.json       the fixed chunking of this run (record order, chunk size, number of chunks), the
                          folder it read and the command that built it
    _work/records.tsv     the run's image ids and identities (to say what changed when a rerun lists others)
    _work/chunk-000NN.json  per-chunk statistics incl. the shard's sha256, written just before the shard is
                          renamed into place
    _work/lock            the writer lock (`lock`)

`<name>` is `<dataset>_<backbone>_<key>` where `key` hashes everything that changes the embeddings: the
dataset name and reader options (which images), the backbone's `config_key()` (which network and input
preprocessing), the aligner's `config_key()` (which boxes), the flip option and `FORMAT_VERSION` (how
records are laid out). Changing any of them names a different directory, so stale shards are never reused.

Resumability: the records are sorted by image id and cut into fixed chunks whose number is decided before
the first shard is written, so shard names (`-0000i-of-0000n`) never change. Each chunk is written under a
temporary name, fsync'ed and renamed; a restart re-checks each existing shard's record count against its
chunk statistics and recomputes only the chunks that are missing or incomplete. The TFDS metadata is
written last, so a directory with `dataset_info.json` is always complete.

Reading needs neither TensorFlow nor JAX: `reader.load_embeddings` goes through
`tfds.builder_from_directory(...).as_data_source()`, and the same source plugs into grain
(`grain.MapDataset.source(...)`).
"""
