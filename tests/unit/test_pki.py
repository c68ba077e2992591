"""The control plane's PKI (providers/pki.py): chains verify with the real `openssl verify`, the serving
certificate names every endpoint, and an endpoint change reissues leaves under the same CA and SA key."""

import subprocess

from providers.pki import ClusterCaProvider, NodeCertificatesProvider, sans_of


def ca_props():
    outs = ClusterCaProvider().create({"cluster": "demo"}).outs
    return outs, {"crt": outs["certs"]["ca.crt"], "key": outs["keys"]["ca.key"]}


CA_OUTS, CA = ca_props()
PROPS = {"cluster": "demo", "ca": CA, "nodes": [{"name": "s-cp-1", "addresses": ["198.18.10.101"]},
                                      {"name": "s-cp-2", "addresses": ["198.18.10.102", "fd00:198:18:10::66"]}],
         "endpoints": ["198.18.10.50"], "dnsNames": ["api.cplb.test"], "serviceIP": "198.19.0.1"}


def verify(tmp_path, ca: str, cert: str, purpose: str) -> str:
    (tmp_path / "ca.crt").write_text(ca)
    (tmp_path / "leaf.crt").write_text(cert)
    r = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(tmp_path / "ca.crt"),
                        str(tmp_path / "leaf.crt")], capture_output=True, text=True)
    return r.stdout + r.stderr


def test_certificates_chain_to_the_ca_with_the_right_names(tmp_path):
    outs = NodeCertificatesProvider().create(PROPS).outs
    certs, keys = outs["certs"], outs["keys"]
    node = certs["s-cp-2"]
    ca = CA["crt"]
    assert "OK" in verify(tmp_path, ca, node["apiserver.crt"], "sslserver")
    assert "OK" in verify(tmp_path, ca, CA_OUTS["certs"]["admin.crt"], "sslclient")
    assert "OK" in verify(tmp_path, ca, node["etcd.crt"], "sslserver")
    sans = sans_of(node["apiserver.crt"])
    assert {"198.18.10.50", "198.18.10.102", "fd00:198:18:10::66", "127.0.0.1", "198.19.0.1"} <= set(sans["ips"])
    assert {"api.cplb.test", "kubernetes.default.svc", "s-cp-2"} <= set(sans["dns"])
    assert "PRIVATE KEY" in keys["s-cp-1"]["apiserver.key"]
    r = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=CA_OUTS["certs"]["admin.crt"], capture_output=True,
                       text=True)
    assert "O = system:masters" in r.stdout


def test_endpoint_change_is_an_update_under_the_same_ca(tmp_path):
    p = NodeCertificatesProvider()
    old = p.create(PROPS).outs
    news = {**PROPS, "endpoints": ["198.18.20.200"]}
    d = p.diff("id", old, news)
    assert d.changes and not d.replaces
    assert not p.diff("id", old, dict(PROPS)).changes
    new = p.update("id", old, news).outs
    leaf = new["certs"]["s-cp-1"]["apiserver.crt"]
    assert "198.18.20.200" in sans_of(leaf)["ips"] and "198.18.10.50" not in sans_of(leaf)["ips"]
    assert "OK" in verify(tmp_path, CA["crt"], leaf, "sslserver")
    # The CA itself is made once: only a new cluster name replaces it.
    ca = ClusterCaProvider()
    assert not ca.diff("id", CA_OUTS, {"cluster": "demo"}).changes
    assert ca.diff("id", CA_OUTS, {"cluster": "other"}).replaces == ["cluster"]


def test_flags_files_refuse_a_value_that_would_add_a_word():
    import pytest

    from components.control_plane import apiserver_flags, etcd_flags, render_flags
    import spec

    cp = spec.parse({"controlPlanes": [{"name": "cp", "cluster": "demo"}]}).control_planes[0]
    text = render_flags(apiserver_flags("198.18.10.101", cp), "kube-apiserver.args")
    assert "--service-cluster-ip-range=198.19.0.0/24\n" in text and "--shutdown-delay-duration=5s\n" in text
    render_flags(etcd_flags("s-cp-1", "198.18.10.101", [("s-cp-1", "198.18.10.101")], "s-demo"), "etcd.args")
    with pytest.raises(ValueError, match="does not fit"):
        render_flags(apiserver_flags("198.18.10.101 --anonymous-auth=true", cp), "kube-apiserver.args")


def test_control_plane_fields_are_checked():
    import pytest

    import spec

    for bad, words in ([{"name": "cp", "cluster": "demo", "serviceCIDR": "198.19.0.1/24"}, "host bits"],
                       [{"name": "cp", "cluster": "demo", "serviceCIDR": "198.19.0.0/24\n--x=y"}, "pattern"],
                       [{"name": "cp", "cluster": "demo", "count": 9}, "less than or equal to 7"],
                       [{"name": "Cp", "cluster": "demo"}, "pattern"]):
        with pytest.raises(spec.SpecError) as exc:
            spec.parse({"controlPlanes": [bad]})
        assert "cplb:controlPlanes[0]" in str(exc.value) and words in str(exc.value), str(exc.value)
    with pytest.raises(spec.SpecError, match="one control plane per cluster"):
        spec.parse({"controlPlanes": [{"name": "a", "cluster": "demo"}, {"name": "b", "cluster": "demo"}]})
    with pytest.raises(spec.SpecError, match="would both create the Incus instance"):
        spec.parse({"controlPlanes": [{"name": "api-haproxy", "cluster": "demo", "count": 1}],
                    "loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc"}]})
