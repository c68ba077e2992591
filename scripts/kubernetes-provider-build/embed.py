"""What upstream's cmd/pulumi-resource-kubernetes/generate.go does at build time, for the wrapper's main.go:
schema-embed.json (the module's schema.json with `version` set) and terraform-mapping-embed.json (compacted).
Usage: python embed.py MODULE_DIR VERSION (writes into this directory)."""

import json
import os
import sys

module_dir, version = sys.argv[1], sys.argv[2]
source = os.path.join(module_dir, "cmd", "pulumi-resource-kubernetes")
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(source, "schema.json")) as f:
    schema = json.load(f)
schema["version"] = version
with open(os.path.join(source, "terraform-mapping.json")) as f:
    mapping = json.load(f)
for name, doc in (("schema-embed.json", schema), ("terraform-mapping-embed.json", mapping)):
    with open(os.path.join(here, name), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
