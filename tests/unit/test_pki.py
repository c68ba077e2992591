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
    render_flags(etcd_flags("s-cp-1", "198.18.10.101", "s-cp-1=https://198.18.10.101:2380", "s-demo"), "etcd.args")
    with pytest.raises(ValueError, match="does not fit"):  # an initial cluster read from a member is checked too
        render_flags(etcd_flags("s-cp-1", "198.18.10.101", "a=https://x:2380 --x=1", "s-demo"), "etcd.args")
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


# --- renewal, with a fixed clock --------------------------------------------------------------------------------

def _clock(monkeypatch, at):
    import providers.pki as pki

    monkeypatch.setattr(pki, "_now", lambda: at)


def test_node_certificates_renew_once_within_renew_before_days_and_not_before(monkeypatch):
    import datetime

    import providers.pki as pki

    ca_cert, ca_key = pki.make_ca("c")
    ca = {"crt": pki._pem_cert(ca_cert), "key": pki._pem_key(ca_key)}
    props = {"cluster": "c", "ca": ca, "nodes": [{"name": "n1", "addresses": ["198.18.10.5"]}], "endpoints": [],
             "dnsNames": [], "serviceIP": "198.19.0.1", "validityDays": 365, "renewBeforeDays": 30}
    provider = pki.NodeCertificatesProvider()
    olds = provider.create(props).outs
    issued = pki._load_cert(olds["certs"]["n1"]["apiserver.crt"]).not_valid_after_utc
    _clock(monkeypatch, issued - datetime.timedelta(days=31))
    assert provider.diff("x", olds, dict(props)).changes is False
    _clock(monkeypatch, issued - datetime.timedelta(days=29))
    assert provider.diff("x", olds, dict(props)).changes is True
    renewed = provider.update("x", olds, dict(props)).outs
    assert renewed["certs"]["n1"]["apiserver.crt"] != olds["certs"]["n1"]["apiserver.crt"]
    # Under the same CA, so every kubeconfig and peer still trusts it.
    assert pki._load_cert(renewed["certs"]["n1"]["apiserver.crt"]).issuer == ca_cert.subject


def test_a_state_from_before_renewal_existed_is_not_a_change(monkeypatch):
    import providers.pki as pki

    ca_cert, ca_key = pki.make_ca("c")
    props = {"cluster": "c", "ca": {"crt": pki._pem_cert(ca_cert), "key": pki._pem_key(ca_key)},
             "nodes": [{"name": "n1", "addresses": ["198.18.10.5"]}], "endpoints": [], "dnsNames": [],
             "serviceIP": "198.19.0.1"}
    provider = pki.NodeCertificatesProvider()
    olds = provider.create(props).outs
    assert provider.diff("x", olds, {**props, "validityDays": 365, "renewBeforeDays": 30}).changes is False
    assert provider.diff("x", olds, {**props, "validityDays": 90, "renewBeforeDays": 30}).changes is True


def test_the_admin_certificate_renews_under_the_same_ca_and_keeps_the_service_account_key(monkeypatch):
    import datetime

    import providers.pki as pki

    provider = pki.ClusterCaProvider()
    props = {"cluster": "c", "validityDays": 10, "renewBeforeDays": 2}
    olds = provider.create(props).outs
    expires = pki._load_cert(olds["certs"]["admin.crt"]).not_valid_after_utc
    _clock(monkeypatch, expires - datetime.timedelta(days=3))
    assert provider.diff("x", olds, dict(props)).changes is False
    _clock(monkeypatch, expires - datetime.timedelta(days=1))
    d = provider.diff("x", olds, dict(props))
    assert d.changes is True and not d.replaces
    new = provider.update("x", olds, dict(props)).outs
    assert new["certs"]["ca.crt"] == olds["certs"]["ca.crt"] and new["keys"]["sa.key"] == olds["keys"]["sa.key"]
    assert new["certs"]["admin.crt"] != olds["certs"]["admin.crt"]
    assert pki._load_cert(new["certs"]["admin.crt"]).not_valid_after_utc > expires


def test_renew_before_days_must_be_less_than_the_life():
    import pytest

    import spec

    with pytest.raises(Exception, match="renewBeforeDays"):
        spec.CertificatesSpec(validityDays=30, renewBeforeDays=30)


ETCD_CA = {"crt": CA_OUTS["certs"]["etcd-ca.crt"], "key": CA_OUTS["keys"]["etcd-ca.key"]}


def test_etcd_has_its_own_ca_so_no_kubernetes_client_certificate_opens_it(tmp_path):
    """kubeadm's layout: etcd's server/peer certificate and the API server's etcd client certificate chain to etcd's
    CA; the admin (system:masters) certificate and the API server's serving certificate do not."""
    from providers.pki import issuer_cn

    certs = NodeCertificatesProvider().create({**PROPS, "etcdCa": ETCD_CA}).outs["certs"]["s-cp-1"]
    etcd_ca = ETCD_CA["crt"]
    assert "OK" in verify(tmp_path, etcd_ca, certs["etcd.crt"], "sslserver")
    assert "OK" in verify(tmp_path, etcd_ca, certs["apiserver-etcd-client.crt"], "sslclient")
    assert "OK" not in verify(tmp_path, etcd_ca, CA_OUTS["certs"]["admin.crt"], "sslclient")
    assert "OK" not in verify(tmp_path, etcd_ca, certs["apiserver.crt"], "sslclient")
    assert "OK" in verify(tmp_path, CA["crt"], certs["apiserver.crt"], "sslserver")
    assert issuer_cn(certs["etcd.crt"]) == "demo-etcd-ca" and issuer_cn(certs["apiserver.crt"]) == "demo-ca"


def test_a_state_from_before_etcd_had_its_own_ca_gets_one_keeping_the_cluster_ca_and_service_account_key():
    provider = ClusterCaProvider()
    old = {**CA_OUTS, "certs": {k: v for k, v in CA_OUTS["certs"].items() if k != "etcd-ca.crt"},
           "keys": {k: v for k, v in CA_OUTS["keys"].items() if k != "etcd-ca.key"}}
    assert provider.diff("ca-demo", old, {"cluster": "demo"}).changes
    new = provider.update("ca-demo", old, {"cluster": "demo"}).outs
    assert new["certs"]["ca.crt"] == CA_OUTS["certs"]["ca.crt"] and new["keys"]["sa.key"] == CA_OUTS["keys"]["sa.key"]
    assert "BEGIN CERTIFICATE" in new["certs"]["etcd-ca.crt"] and new["certs"]["etcd-ca.crt"] != CA_OUTS["certs"]["ca.crt"]
    # Kept from then on: a state that has it is not a change, and an update keeps it.
    assert not provider.diff("ca-demo", new, {"cluster": "demo"}).changes
    assert provider.update("ca-demo", new, {"cluster": "demo"}).outs["certs"]["etcd-ca.crt"] == new["certs"]["etcd-ca.crt"]
    # The nodes' certificates follow (an input appeared): reissued, etcd's from its own CA.
    leaves = NodeCertificatesProvider()
    assert leaves.diff("certs-demo", {**leaves.create(PROPS).outs}, {**PROPS, "etcdCa": ETCD_CA}).changes


def test_a_cluster_whose_etcd_serves_a_cluster_ca_certificate_moves_in_two_steps():
    from components.control_plane import etcd_ca_moving

    class Served:
        def __init__(self, issuers):
            self.issuers = issuers

        def served_certificate_issuer(self, name, port):
            assert port == 2379
            return self.issuers.get(name)

    names = ["s-cp-1", "s-cp-2", "s-cp-3"]
    assert not etcd_ca_moving("f", "demo", Served({}), names)  # a new cluster: its own CA from the start
    assert etcd_ca_moving("f", "demo", Served({"s-cp-1": "demo-etcd-ca", "s-cp-2": "demo-ca"}), names)
    assert not etcd_ca_moving("f", "demo", Served({n: "demo-etcd-ca" for n in names}), names)


def test_the_controllers_get_their_own_client_certificates_by_the_names_rbac_binds(tmp_path):
    certs = NodeCertificatesProvider().create(PROPS).outs["certs"]["s-cp-1"]
    for stem, user in (("controller-manager", "system:kube-controller-manager"),
                       ("scheduler", "system:kube-scheduler")):
        assert "OK" in verify(tmp_path, CA["crt"], certs[f"{stem}.crt"], "sslclient")
        r = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=certs[f"{stem}.crt"],
                           capture_output=True, text=True)
        assert f"CN = {user}" in r.stdout and "system:masters" not in r.stdout


def test_a_state_from_before_the_controllers_had_certificates_is_reissued_under_the_same_ca():
    p = NodeCertificatesProvider()
    old = p.create(PROPS).outs
    for node in old["certs"].values():
        del node["controller-manager.crt"], node["scheduler.crt"]
    assert p.diff("id", old, dict(PROPS)).changes and not p.diff("id", old, dict(PROPS)).replaces
    assert not p.diff("id", p.create(PROPS).outs, dict(PROPS)).changes
    new = p.update("id", old, dict(PROPS)).outs
    assert "scheduler.crt" in new["certs"]["s-cp-2"]


def test_kube_vip_and_the_publication_have_their_own_client_certificates_not_system_masters(tmp_path, monkeypatch):
    """Each scoped client chains to the cluster CA under its own user and no group (RBAC grants it what it does);
    renewed like the nodes' leaves, under the same CA."""
    import datetime

    import providers.pki as pki

    provider = pki.ClientCertificatesProvider()
    props = {"cluster": "demo", "ca": CA, "validityDays": 10, "renewBeforeDays": 2,
             "nodes": [{"name": n, "user": u} for n, u in pki.SCOPED_CLIENTS.items()]}
    outs = provider.create(props).outs
    for stem, user in (("kube-vip", "cplb:kube-vip"), ("publisher", "cplb:publisher")):
        cert = outs["certs"][stem]["client.crt"]
        assert "OK" in verify(tmp_path, CA["crt"], cert, "sslclient")
        subject = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=cert, capture_output=True,
                                 text=True).stdout
        assert f"CN = {user}" in subject and "O =" not in subject, subject
        assert "PRIVATE KEY" in outs["keys"][stem]["client.key"]
    assert not provider.diff("x", outs, dict(props)).changes
    expires = pki._load_cert(outs["certs"]["publisher"]["client.crt"]).not_valid_after_utc
    _clock(monkeypatch, expires - datetime.timedelta(days=1))
    d = provider.diff("x", outs, dict(props))
    assert d.changes and not d.replaces
    renewed = provider.update("x", outs, dict(props)).outs
    assert pki._load_cert(renewed["certs"]["publisher"]["client.crt"]).not_valid_after_utc > expires
