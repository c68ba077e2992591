"""Rendered configs pass the real tools' own checks (the host has haproxy, keepalived and nginx from Debian)."""

import shutil
import subprocess

import pytest

import spec
from components.keepalived import CHECKS, vrrp_view
from components.render import Quoted, render


def keepalived_lb(**vrrp):
    return spec.parse({"loadBalancers": [{
        "name": "api", "cluster": "demo", "type": "keepalived",
        "keepalived": {"vrrpInstances": [{"virtualIPs": ["198.18.10.50/24"], **vrrp}],
                       "virtualServers": [{"ipAddress": "198.18.10.50", "delayLoop": "30s", "lbAlgo": "wlc",
                                           "lbKind": "NAT", "persistenceTimeoutSeconds": 60}]},
    }]}).load_balancers[0]


def render_keepalived(lb, ipvs: bool, check: str = CHECKS["tcp"].format(host="127.0.0.1", port=6443)) -> str:
    return render("keepalived-node.conf.j2", stack="s", lb_name=lb.name, node="s-cp-1",
                  check_script=Quoted(check), priority=190,
                  vrrp_instances=vrrp_view(lb),
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


def test_haproxy_dual_stack_and_range_render_and_pass_haproxy_check(tmp_path):
    from components.haproxy import RenderedBackend, render_haproxy
    from providers.haproxy_runtime import servers_in

    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc",
                                        "ipFamilies": ["IPv4", "IPv6"],
                                        "ports": [{"name": "api", "port": 6443},
                                                  {"name": "nodeports", "port": 30000, "endPort": 30010}]}]}
                    ).load_balancers[0]
    text = render_haproxy("s", lb, [RenderedBackend("cp-1", "198.18.10.101", "fd00:198:18:10::65"),
                                    RenderedBackend("cp-2", "198.18.10.102", "")])
    assert "bind 0.0.0.0:6443\n" in text and "bind :::6443 v6only" in text
    assert "server cp-1 [fd00:198:18:10::65]:6443" in text and "server cp-1 198.18.10.101:6443" in text
    assert "bind 0.0.0.0:30000-30010" in text and "server cp-2 198.18.10.102 port 30000" in text
    # cp-2 has no IPv6 address: it is not in the IPv6 backends.
    assert ("be_api_v6", "cp-2") not in servers_in(text) and ("be_api_v6", "cp-1") in servers_in(text)
    assert ("be_nodeports", "cp-2") in servers_in(text)
    if not shutil.which("haproxy"):
        pytest.skip("haproxy not installed")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    r = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_crashed_backend_is_marked_down_by_the_first_failed_connection(tmp_path):
    """The fast-down options: one failed connection marks a server down (observe layer4), the connect timeout is
    the LAN one from the stack config, checks speed up while failing; haproxy accepts them all."""
    from components.haproxy import RenderedBackend, render_haproxy

    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc",
                                        "healthCheck": {"mode": "https", "intervalSeconds": 1, "rise": 1, "fall": 2,
                                                        "connectTimeoutMilliseconds": 300}}]}).load_balancers[0]
    text = render_haproxy("s", lb, [RenderedBackend("cp-1", "198.18.10.101", "")])
    assert "timeout connect 300ms\n" in text
    assert ("inter 1s fastinter 250ms rise 1 fall 2 observe layer4 error-limit 1 on-error mark-down\n" in text), text
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    r = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_checked_port_fails_open_to_its_servers_with_a_connect_check(tmp_path):
    """With an http(s) check, each port's frontend falls back (while no server passes) to a backend of the same
    servers with a connect check only; `failOpen: false` and tcp checks render none. haproxy accepts the file, and
    the runtime API's rows of the fail-open backend are not the balancer's health."""
    from components.haproxy import RenderedBackend, render_haproxy
    from providers.haproxy_runtime import servers_in

    def rendered(check: dict) -> str:
        lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "healthCheck": check,
                                            "ports": [{"name": "api", "port": 6443}]}]}).load_balancers[0]
        return render_haproxy("s", lb, [RenderedBackend("cp-1", "198.18.10.101", ""),
                                        RenderedBackend("cp-2", "198.18.10.102", "")])

    text = rendered({"mode": "https"})
    assert "use_backend be_api_open if { nbsrv(be_api) lt 1 }\n" in text, text
    open_section = text.split("backend be_api_open\n", 1)[1].split("\n\n", 1)[0]
    assert "check-ssl" not in open_section and "httpchk" not in open_section, open_section
    assert servers_in(text) == {(b, s) for b in ("be_api", "be_api_open") for s in ("cp-1", "cp-2")}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    r = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for check in ({"mode": "https", "failOpen": False}, {"mode": "tcp"}):
        assert "_open" not in rendered(check), check


def test_the_dns_proxy_uses_the_stack_connect_timeout(tmp_path):
    from components.dns import render_nginx

    from tests.unit.test_spec import dns

    s = spec.parse({"loadBalancers": [{**dns(), "healthCheck": {"connectTimeoutMilliseconds": 400}}]})
    text = render_nginx("s", s.load_balancers[0], [("api", "198.18.10.101", "")])
    assert "proxy_connect_timeout 400ms;" in text, text
    cfg = tmp_path / "nginx.conf"
    cfg.write_text(text)
    r = subprocess.run(["nginx", "-t", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("advert,expect", [(1, "advert_int 1\n"), (0.05, "version 3\n    advert_int 0.05\n")])
def test_the_lxc_pair_takes_its_advert_interval_and_keepalived_accepts_it(tmp_path, advert, expect):
    from components.haproxy_balancer import render_vrrp_pair

    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "lxc": {
        "replicas": 2, "vip": "198.18.10.9", "advertIntervalSeconds": advert}}]}).load_balancers[0]
    text = render_vrrp_pair("s", lb, "s-api-1", 150, 24)
    assert expect in text, text
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text.replace("/bin/wget", "/bin/true").replace("dev eth0", "dev lo"))
    r = subprocess.run(["keepalived", "-t", "-f", str(conf)], capture_output=True, text=True)
    assert "advert" not in r.stdout + r.stderr and "version" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_controllers_flags_fit_the_flags_grammar_and_name_their_own_kubeconfig():
    from components.control_plane import CONTROLLERS, controller_flags, render_flags
    from spec import ControlPlaneSpec

    spec = ControlPlaneSpec(name="cp", cluster="k")
    for service, (conf, path, _stem) in CONTROLLERS.items():
        text = render_flags(controller_flags(service, spec), path)
        assert f"--kubeconfig={conf}\n" in text and "--leader-elect=true\n" in text
        assert "--bind-address=127.0.0.1\n" in text  # health and metrics on loopback only
    assert f"--service-cluster-ip-range={spec.service_cidr}\n" in render_flags(
        controller_flags("kube-controller-manager", spec), "x")


def test_checks_that_verify_the_cluster_ca_also_verify_each_instance_s_name(tmp_path):
    """A member's serving certificate names the member (providers/pki.py); where checks verify the cluster CA, each
    instance's check verifies its name too (check-sni, verifyhost), so another member's certificate, or a stranger's
    from the same CA, never makes it healthy. Static addresses (no instance name) and the fail-open backend (a
    connect check) carry none; haproxy accepts the file."""
    from components.haproxy import RenderedBackend, render_haproxy

    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "healthCheck": {
        "mode": "https"}, "ports": [{"name": "api", "port": 6443}]}]}).load_balancers[0]
    backends = [RenderedBackend("s-cp-1", "198.18.10.101", "", verify_name="s-cp-1"),
                RenderedBackend("static-1", "198.18.10.102", "")]
    ca = tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(ca), "-days", "1", "-subj", "/CN=ca"],
                   check=True, capture_output=True)
    text = render_haproxy("s", lb, backends, ca_file=str(ca))
    checked = text.split("backend be_api\n", 1)[1].split("\n\n", 1)[0]
    assert "server s-cp-1 198.18.10.101:6443 check-sni s-cp-1 verifyhost s-cp-1\n" in checked + "\n", checked
    assert "server static-1 198.18.10.102:6443\n" in checked + "\n", checked
    assert "verifyhost" not in text.split("backend be_api_open\n", 1)[1].split("\n\n", 1)[0]
    assert "verifyhost" not in render_haproxy("s", lb, backends)  # no CA known: nothing to verify a name against
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    r = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
