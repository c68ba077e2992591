"""A dynamic provider that changes nothing: create echoes its inputs, diff reports no change."""

import hashlib
import json

import pulumi.dynamic
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider


class NoopProvider(ResourceProvider):
    def create(self, props):
        return CreateResult(id_=hashlib.sha256(json.dumps(props, sort_keys=True, default=str).encode()).hexdigest(),
                            outs=props)

    def diff(self, id_, olds, news):
        return DiffResult(changes=False)


class Noop(pulumi.dynamic.Resource, module="graph", name="Noop"):
    def __init__(self, name, props, opts=None):
        super().__init__(NoopProvider(), name, props, opts)
