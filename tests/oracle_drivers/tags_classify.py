"""Oracle driver: the reference's tag categorisation (kgen.formatter.seperate_tags).

Payload: {"single": [tag, ...], "batches": [[tag, ...], ...]}.
Result:  {"single": [[category, tag] | null, ...], "batches": [{category: [tag, ...]}, ...],
          "lists": {category: size}}; a single tag the reference drops gives null.
"""

import json
import sys

import kgen.formatter as formatter

with open(sys.argv[1], encoding="utf-8") as source:
    payload = json.load(source)
single = []
for tag in payload["single"]:
    found = [(category, tags[0]) for category, tags in formatter.seperate_tags([tag]).items() if tags]
    single.append(list(found[0]) if found else None)
result = {
    "single": single,
    "batches": [formatter.seperate_tags(batch) for batch in payload["batches"]],
    "lists": {category: len(tags) for category, tags in formatter.tag_lists.items()},
}
with open(sys.argv[2], "w", encoding="utf-8") as sink:
    json.dump(result, sink)
