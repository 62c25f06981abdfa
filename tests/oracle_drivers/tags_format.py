"""Oracle driver: the reference's output formatting (kgen.formatter.apply_format).

Payload: {"presets": true|false, "cases": [{"tag_map": {...}, "template": str}, ...]}.
Result:  {"outputs": [str, ...], "presets": {name: template}}.
"""

import json
import sys

from kgen.formatter import apply_format
from kgen.metainfo import TIPO_DEFAULT_FORMAT

with open(sys.argv[1], encoding="utf-8") as source:
    payload = json.load(source)
outputs = [apply_format(dict(case["tag_map"]), case["template"]) for case in payload["cases"]]
with open(sys.argv[2], "w", encoding="utf-8") as sink:
    json.dump({"outputs": outputs, "presets": TIPO_DEFAULT_FORMAT}, sink)
