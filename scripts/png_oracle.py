"""Opens PNG files with Pillow and reports what it sees, for the report tests.

    python scripts/png_oracle.py A.png [B.png ...]

Prints one JSON line: for each file its size, mode and number of distinct colors.
"""

import json
import sys

from PIL import Image

out = {}
for path in sys.argv[1:]:
    with Image.open(path) as im:
        im.load()
        out[path] = {"size": list(im.size), "mode": im.mode, "colors": len(set(im.getdata()))}
print(json.dumps(out))
