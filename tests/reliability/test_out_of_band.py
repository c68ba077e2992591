"""Out-of-band changes are seen by `refresh` and repaired by `up`; two stacks on one server stay apart;
the DNS server down during `up` is a clear error that leaves no partial record set."""

import os
import random
import subprocess
import tempfile

import pytest

from tests.helpers import (
    ROOT, base_config, demo_group, http_get, incus, instances_with_prefix, pulumi_stack, wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def test_config_file_edited_or_removed_out_of_band_is_repaired():
    cluster = f"r{random.randrange(16**5):05x}"
    values = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
                         loadBalancers=[{"name": "api", "cluster": cluster, "type": "lxc"}])
    with pulumi_stack(values) as (_, name, stack):
        ep = stack.up(on_output=quiet).outputs["loadBalancers"].value["api"]["endpoint"]
        lb = f"{name}-api-haproxy-1"
        good = incus().pull_file(lb, "/etc/haproxy/haproxy.cfg")[0]

        incus().push_file(lb, "/etc/haproxy/haproxy.cfg", good + b"\n# edited by hand\n")
        ref = stack.refresh(on_output=quiet)
        assert ref.summary.resource_changes.get("update") == 1, ref.summary.resource_changes
        # The file goes back, and the balancer's status is read again once it has (its trigger is the file's hash).
        assert stack.preview(on_output=quiet).change_summary.get("update") == 2
        stack.up(on_output=quiet)
        assert incus().pull_file(lb, "/etc/haproxy/haproxy.cfg")[0] == good

        incus().delete_file(lb, "/etc/haproxy/haproxy.cfg")
        ref = stack.refresh(on_output=quiet)
        assert ref.summary.resource_changes.get("delete") == 1, ref.summary.resource_changes
        stack.up(on_output=quiet)
        assert incus().pull_file(lb, "/etc/haproxy/haproxy.cfg")[0] == good
        host, port = ep.rsplit(":", 1)
        assert wait_for(lambda: http_get(host, int(port)) is not None, 15)


def test_two_stacks_on_one_server_stay_apart():
    cluster = f"r{random.randrange(16**5):05x}"
    values = base_config(instanceGroups=[demo_group(1, name="cp", cluster=cluster)])
    with pulumi_stack(values) as (_, first, one):
        with pulumi_stack(values) as (_, second, two):
            one.up(on_output=quiet)
            two.up(on_output=quiet)
            assert set(instances_with_prefix(first)) == {f"{first}-cp-1"}
            assert set(instances_with_prefix(second)) == {f"{second}-cp-1"}
            assert incus().get_instance(f"{first}-cp-1")["config"]["user.cplb.stack"] == first
            one.destroy(on_output=quiet)
            assert instances_with_prefix(first) == {}
            survivor = incus().get_instance(f"{second}-cp-1")
            assert survivor["status"] == "Running" and survivor["config"]["user.cplb.stack"] == second


def test_dns_server_down_during_up_is_a_clear_error_and_leaves_no_records():
    from pulumi.automation import errors

    from tests.integration.test_dns import config, resolve, set_secret

    directory = tempfile.mkdtemp(prefix="cplb-dns-")
    port = str(random.randrange(30000, 40000))
    env = {**os.environ, "DNS_DIR": directory, "DNS_PORT": port}
    script = os.path.join(ROOT, "scripts", "dns-server")
    subprocess.run([script, "start"], env=env, check=True, capture_output=True)
    secret = subprocess.run([script, "key"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    server = {"server": f"127.0.0.1:{port}", "secret": secret, "port": int(port)}
    cluster = f"r{random.randrange(16**5):05x}"
    try:
        subprocess.run([script, "stop"], env=env, check=True, capture_output=True)
        with pulumi_stack(config(server, cluster, f"down-{cluster}")) as (_, name, stack):
            set_secret(stack, server)
            with pytest.raises(errors.CommandError) as exc:
                stack.up(on_output=quiet)
            assert f"127.0.0.1:{port}" in str(exc.value) and "cannot query" in str(exc.value)
            subprocess.run([script, "start"], env=env, check=True, capture_output=True)
            assert resolve(server, f"down-{cluster}.cplb.test.") == []  # nothing half-written
            up = stack.up(on_output=quiet)  # the server is back: `up` converges
            assert len(resolve(server, f"down-{cluster}.cplb.test.")) == 2, up.outputs
    finally:
        subprocess.run([script, "stop"], env=env, check=False, capture_output=True)
