"""Nothing is adopted without proof (providers/ownership.py): an instance or a state volume that someone made first,
with the name and the ownership labels the stack would give it, is refused at `up`, and nothing reaches it."""

import random

import pytest
from pulumi.automation.errors import CommandError

from tests.helpers import POOL, base_config, delete_volume, demo_group, http_get, incus, launch_external, \
    pulumi_stack, wait_for

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def refused(stack) -> str:
    with pytest.raises(CommandError) as failed:
        stack.up(on_output=quiet)
    return str(failed.value)


def test_a_forged_volume_or_instance_with_our_name_and_labels_is_refused_and_gets_nothing():
    cluster = f"o{random.randrange(16**5):05x}"
    values = base_config(instanceGroups=[demo_group(1, name="cp", cluster=cluster)],
                         loadBalancers=[{"name": "api", "cluster": cluster, "type": "lxc"}])
    with pulumi_stack(values, prefix="own") as (_, name, stack):
        replica, labels = f"{name}-api-haproxy-1", {"user.cplb.stack": name, "user.cplb.owner": "lb/api"}

        # A state volume made first: it would be mounted into the replica and its files taken as the stack's.
        incus().call("POST", f"storage-pools/{POOL}/volumes/custom", json={
            "name": f"{replica}-state", "type": "custom", "content_type": "filesystem", "config": labels})
        message = refused(stack)
        assert f"{replica}-state" in message and "not its proof of ownership" in message, message[-3000:]
        assert incus().get_instance(replica) is None
        delete_volume(f"{replica}-state")

        # An instance made first (another image, the replica's name and labels): not adopted, no config pushed.
        launch_external(replica, labels)
        message = refused(stack)
        assert f"instance {replica!r}" in message and "not its proof of ownership" in message, message[-3000:]
        assert incus().pull_file(replica, "/etc/haproxy/haproxy.cfg") is None
        assert incus().get_instance(replica)["config"].get("user.cplb.proof") is None

        # Once it is gone, the stack makes its own, and serves.
        incus().delete_instance(replica)
        result = stack.up(on_output=quiet)
        made = incus().get_instance(replica)
        assert made["config"]["user.cplb.proof"].startswith("v1:")
        host, port = result.outputs["loadBalancers"].value["api"]["endpoint"].rsplit(":", 1)
        assert wait_for(lambda: http_get(host, int(port)) == f"{name}-cp-1", 20)
