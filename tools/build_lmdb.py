"""Pack an image folder (``<root>/<class>/<image>``) into an LMDB that ``data.dataset: lmdb`` reads.

    python tools/build_lmdb.py /data/imagenet/train /data/imagenet-lmdb/train.lmdb
    python tools/build_lmdb.py /data/imagenet/val   /data/imagenet-lmdb/val.lmdb

Images are stored as their original encoded bytes (no re-encoding); the record count and class
names are stored in the database itself. The database is written under a temporary name and
renamed when complete, so an interrupted build never leaves a database that looks finished.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from twist.data.datasets import (
    LMDB_CLASSES_KEY,
    LMDB_LENGTH_KEY,
    DatasetError,
    ImageFolderSource,
    encode_lmdb_record,
    lmdb_record_key,
)


def build_lmdb(folder: str, output: str, commit_every: int = 1000) -> int:
    import lmdb

    source = ImageFolderSource(folder)
    if os.path.exists(output):
        raise FileExistsError(f"'{output}' already exists; remove it or choose another output")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    total_bytes = sum(os.path.getsize(path) for path, _ in source.samples)
    env = lmdb.open(tmp, map_size=max(2 * total_bytes + (64 << 20), 1 << 26), subdir=True)
    txn = env.begin(write=True)
    for index, (path, label) in enumerate(source.samples):
        with open(path, "rb") as f:
            txn.put(lmdb_record_key(index), encode_lmdb_record(f.read(), label))
        if (index + 1) % commit_every == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.put(LMDB_LENGTH_KEY, str(len(source)).encode())
    txn.put(LMDB_CLASSES_KEY, json.dumps(source.classes).encode())
    txn.commit()
    env.sync()
    env.close()
    os.replace(tmp, output)
    return len(source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="image folder with one sub-folder per class")
    parser.add_argument("output", help="LMDB directory to create, e.g. .../train.lmdb")
    args = parser.parse_args(argv)
    try:
        count = build_lmdb(args.folder, args.output)
    except (DatasetError, FileExistsError) as err:
        print(f"build_lmdb: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
