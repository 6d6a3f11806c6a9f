#!/usr/bin/env python3
"""Oracle for the shard interop test: reads ehrprep's shards with pyarrow alone, using
only what manifest.json and the Arrow schema say, and prints what it found as JSON.

Usage: shards_oracle.py SHARD_DIR
"""
import hashlib
import json
import sys

import pyarrow as pa
import pyarrow.ipc as ipc


def main():
    directory = sys.argv[1]
    manifest = json.load(open(f"{directory}/manifest.json"))
    out = {"shards": []}
    for shard in manifest["shards"]:
        path = f"{directory}/{shard['file']}"
        data = open(path, "rb").read()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"], path
        with pa.memory_map(path) as source:
            table = ipc.open_file(source).read_all()
        column = table.column("input_ids")
        list_type = column.type
        assert pa.types.is_fixed_size_list(list_type), list_type
        assert list_type.list_size == manifest["raw_length"], list_type
        assert str(list_type.value_type) == manifest["dtype"], list_type
        flat = column.combine_chunks().flatten().to_pylist()
        out["shards"].append({
            "file": shard["file"],
            "rows": table.num_rows,
            "first_row": flat[: manifest["raw_length"]],
            "id_sum": sum(flat),
            "eos_count": flat.count(manifest["tokenizer"]["eos_id"]),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
