"""All file I/O: audio encoding, Parquet shards, manifest, markers."""
