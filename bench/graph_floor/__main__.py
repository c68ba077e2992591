"""Pulumi's own cost of the resource graph incus-cplb builds, with providers that do nothing.

`graph:balancers` components, each the parent of three chained dynamic resources (as an `lxc` balancer is:
instance -> its config file -> its status reader) with a few small properties. Whatever this program costs over
the empty program is the CLI's, the engine's, the Python SDK's and the dynamic-provider plugin's, none of it
incus-cplb's. bench/program_cost.py runs it beside the real program.
"""

import os
import sys

import pulumi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from noop import Noop  # noqa: E402

for i in range(pulumi.Config("graph").require_int("balancers")):
    balancer = pulumi.ComponentResource("graph:lb:Balancer", f"b{i}")
    child = pulumi.ResourceOptions(parent=balancer)
    instance = Noop(f"b{i}-haproxy-1", {"name": f"b{i}-haproxy-1"}, child)
    config = Noop(f"b{i}-config", {"instance": instance.id, "path": "/etc/haproxy/haproxy.cfg"}, child)
    Noop(f"b{i}-status", {"instance": instance.id, "trigger": config.id}, child)
    balancer.register_outputs({"endpoint": f"198.18.0.{i % 250}:6443"})
