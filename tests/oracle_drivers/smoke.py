"""Oracle smoke driver: reports which ``kgen`` it imported (it must be the reference's)."""

import json
import sys
from pathlib import Path

import kgen.formatter

payload = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
result = {"file": kgen.formatter.__file__, "echo": payload}
Path(sys.argv[2]).write_text(json.dumps(result), encoding="utf-8")
