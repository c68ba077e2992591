"""A stack that runs kube-vip on its members needs an image with kube-vip in it (kube-vip is built only for the
stacks and tests that run it): the preview says so with the key path, before anything is created.
tests/integration/test_kube_vip.py runs kube-vip from cplb/control-plane-kube-vip for real."""

from __future__ import annotations

import pytest

import facts
import spec
from components import strategies
from components.common import StackContext

VIP = "198.18.0.90"


class ImageFacts(facts.Facts):
    """Images as scripts/build-image describes them: `cplb.tools` lists what it built into each."""

    def __init__(self, tools: dict):
        super().__init__(spec.IncusSpec())
        self._tools = tools

    def image_fingerprint(self, field, alias):
        return alias

    def network(self, name):
        return {"config": {"ipv4.address": "198.18.10.1/24"}}

    def image_meta(self, fingerprint):
        tools = self._tools.get(fingerprint)
        return {"properties": {} if tools is None else {"cplb.tools": tools}}


def stack(image: str, kube_vip: bool = True) -> spec.StackSpec:
    external = {"endpoint": f"{VIP}:6443"}
    if kube_vip:
        external["kubeVip"] = {"vip": VIP}
    return spec.parse({
        "controlPlanes": [{"name": "cp", "cluster": "k", "instance": {"image": image}}],
        "loadBalancers": [{"name": "api", "cluster": "k", "type": "external", "external": external}],
    }, stack="s")


IMAGES = {"cplb/control-plane": "etcd kube-apiserver cplb-static-pods",
          "cplb/control-plane-kube-vip": "etcd kube-apiserver cplb-static-pods kube-vip"}


def test_kube_vip_on_an_image_without_it_is_refused_with_the_key_path():
    with pytest.raises(ValueError) as err:
        strategies.check_all(StackContext(stack="s", incus=spec.IncusSpec()), stack("cplb/control-plane"),
                             ImageFacts(IMAGES))
    assert str(err.value).startswith("cplb:controlPlanes[0].instance.image: 'cplb/control-plane' has no kube-vip")
    assert "cplb/control-plane-kube-vip" in str(err.value)


@pytest.mark.parametrize("image,kube_vip", [
    ("cplb/control-plane-kube-vip", True),  # the image that has it
    ("cplb/control-plane", False),  # no kube-vip asked for
    ("my/own-image", True),  # an image that does not say what it holds: the user's to know
])
def test_what_can_run_is_not_refused(image, kube_vip):
    strategies.check_all(StackContext(stack="s", incus=spec.IncusSpec()), stack(image, kube_vip), ImageFacts(IMAGES))
