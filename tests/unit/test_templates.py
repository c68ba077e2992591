"""Rendered configs pass the real tools' own checks (the host has haproxy, keepalived and nginx from Debian)."""

import shutil
import subprocess

import pytest

import spec
from components.keepalived import CHECKS, vrrp_view
from components.render import render


def keepalived_lb(**vrrp):
    return spec.parse({"loadBalancers": [{
        "name": "api", "cluster": "demo", "type": "keepalived",
        "keepalived": {"vrrpInstances": [{"virtualIPs": ["198.18.10.50/24"], **vrrp}],
                       "virtualServers": [{"ipAddress": "198.18.10.50", "delayLoop": "30s", "lbAlgo": "wlc",
                                           "lbKind": "NAT", "persistenceTimeoutSeconds": 60}]},
    }]}).load_balancers[0]


def render_keepalived(lb, ipvs: bool, check: str = CHECKS["tcp"].format(port=6443)) -> str:
    return render("keepalived-node.conf.j2", stack="s", lb_name=lb.name, node="s-cp-1",
                  check_script=check, priority=190,
                  vrrp_instances=vrrp_view(lb, {}),
                  virtual_servers=[vs.view(6443) for vs in lb.keepalived.virtual_servers] if ipvs else [],
                  real_servers=["198.18.10.101", "198.18.10.102"])


def test_ipvs_mode_renders_virtual_servers_that_keepalived_accepts(tmp_path):
    # The check script is the node image's busybox nc; on the host keepalived needs one it can find.
    text = render_keepalived(keepalived_lb(authPass="s3cr3t"), ipvs=True, check="/bin/true")
    assert "virtual_server 198.18.10.50 6443" in text and "lb_algo wlc" in text and "lb_kind NAT" in text
    assert "delay_loop 30" in text and "persistence_timeout 60" in text and text.count("real_server") == 2
    if not shutil.which("keepalived"):
        pytest.skip("keepalived not installed")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    r = subprocess.run(["keepalived", "-t", "-f", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_userspace_mode_has_no_virtual_servers_and_v3_for_fractional_adverts():
    text = render_keepalived(keepalived_lb(advertIntervalSeconds=0.1), ipvs=False)
    assert "virtual_server" not in text and "version 3" in text and "advert_int 0.1" in text
    assert "authentication" not in text
