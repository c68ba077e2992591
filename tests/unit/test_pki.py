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
