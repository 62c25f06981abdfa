"""Oracle smoke driver: proves the reference (not our kgen) is imported."""

import json
import sys

import kgen.formatter

payload = json.load(open(sys.argv[1], encoding="utf-8"))
result = {"file": kgen.formatter.__file__, "echo": payload}
json.dump(result, open(sys.argv[2], "w", encoding="utf-8"))
