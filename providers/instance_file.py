"""Dynamic provider `cplb:incus:InstanceFile`: a config file inside an instance, validated then reloaded.

create/update: push the content beside the target (`<path>.cplb-new`), run the validate command on it
(`{path}` in the command is replaced by that file), and only when it passes move it into place and run the
reload command. A config that fails validation is removed again and the old one keeps serving. With `rollout`
(a file whose reload restarts a member's service, such as etcd's flags), an update restarts only while the other
members are healthy and returns once this one is healthy again; the component chains such files member by member.
The diff is by content hash: a content change updates the file and reloads; it never replaces the instance.
The content itself is not stored in outputs (it may hold secrets); only its hash, so refresh can tell when
the file in the instance was changed or removed out of band.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers import haproxy_runtime, rollout
from providers.incus_client import Connection, IncusError, client_for
from providers.values import plain

REPLACE_KEYS = ("instance", "path")


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _conn(props: dict) -> Connection:
    return Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})


def _redact(text: str, props: dict) -> str:
    """Validator output may quote the offending line of a file that holds a secret: never let it through."""
    for secret in props.get("redact") or []:
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "[secret]")
    return text


def _check_format(props: dict) -> None:
    """Validators that run here, before the file is pushed (the instance may have no parser for the format)."""
    if props.get("validateFormat") == "kubernetes-manifest":
        from components.render import RenderError, validate_manifest

        try:
            validate_manifest(props["content"], props["path"])
        except RenderError as exc:
            raise IncusError(f"{props['path']} in {props['instance']}: {exc}; nothing was written") from None


def _shell(cmd: Optional[list], staged: str) -> Optional[list]:
    return [part.replace("{path}", staged) for part in cmd] if cmd else None


class InstanceFileProvider(ResourceProvider):
    @staticmethod
    def _drain(client, props: dict) -> Optional[dict]:
        """Before a haproxy.cfg drops servers: drain them through the runtime API and wait (bounded) for their
        connections to end, so `up` returns once the members are really out of use."""
        drain = props.get("drain") or {}
        if drain.get("kind") != "haproxy":
            return None
        found = client.pull_file(props["instance"], props["path"])
        if found is None:
            return None
        removed = haproxy_runtime.servers_in(found[0].decode(errors="replace")) - \
            haproxy_runtime.servers_in(props["content"])
        if not removed:
            return None
        return haproxy_runtime.drain(client, props["instance"], removed, float(drain.get("timeoutSeconds") or 0))

    @staticmethod
    def _peers_first(client, name: str, plan: dict) -> None:
        """A restart takes this member's service down for a moment: only while the other members are healthy."""
        peers = [p for p in plan.get("peers") or [] if p != name]
        wait = float(plan.get("waitSeconds") or 600)
        if peers:
            problem = rollout.wait_healthy(client, peers, plan.get("health") or {}, wait)
            if problem:
                raise IncusError(f"not restarting {name}'s service for its new config: the other members are not all "
                                 f"healthy after {wait:.0f}s ({problem}). The new file is in place; run `up` again "
                                 "once they are.")

    def _apply(self, props: dict, drain_first: bool = False) -> dict:
        client = client_for(_conn(props))
        name, path = props["instance"], props["path"]
        staged = f"{path}.cplb-new"
        mode = int(props.get("mode") or "0644", 8)
        _check_format(props)
        drained = self._drain(client, props) if drain_first else None
        client.exec(name, ["mkdir", "-p", path.rsplit("/", 1)[0] or "/"])
        client.push_file(name, staged, props["content"].encode(), mode=mode)
        validate = _shell(props.get("validateCommand"), staged)
        if validate:
            rc, out, err = client.exec(name, validate)
            if rc != 0:
                client.delete_file(name, staged)
                detail = _redact((err or out).strip(), props)[-2000:]
                raise IncusError(
                    f"{path} in {name}: the new config failed validation (`{' '.join(validate)}` exited {rc}); "
                    f"the previous config keeps serving.\n{detail}"
                )
        rc, out, err = client.exec(name, ["mv", "-f", staged, path])
        if rc != 0:
            raise IncusError(f"{path} in {name}: cannot move the new config into place: {err or out}")
        reload = props.get("reloadCommand")
        plan = (props.get("rollout") or {}) if reload else {}
        # A member that serves restarts only while the others are healthy, and the next waits until it is healthy
        # again. One that does not serve yet (a cluster being made: its members are pushed their files in turn) just
        # gets its file.
        serving = bool(plan) and rollout.member_health(client, name, plan.get("health") or {})[0]
        if serving:
            self._peers_first(client, name, plan)
        if reload:
            rc, out, err = client.exec(name, list(reload))
            if rc != 0:
                raise IncusError(f"{path} in {name}: reload (`{' '.join(reload)}`) exited {rc}: "
                                 f"{_redact((err or out).strip(), props)[-2000:]}")
        if serving:
            problem = rollout.wait_healthy(client, [name], plan.get("health") or {}, float(plan.get("waitSeconds") or 600))
            if problem:
                raise IncusError(f"{path} in {name}: the restarted service is not healthy ({problem}); the other "
                                 "members keep their config until it is. Fix it and run `up` again.")
        outs = self._outs(props, content_hash(props["content"]))
        if drained:
            outs["lastDrain"] = drained
        return outs

    @staticmethod
    def _outs(props: dict, digest: str) -> dict:
        return {k: v for k, v in props.items() if k not in ("content", "redact")} | {"contentHash": digest}

    def create(self, props):
        outs = self._apply(props)
        return CreateResult(id_=f"{props['instance']}:{props['path']}", outs=outs)

    def update(self, _id, olds, news):
        same_file = (olds.get("contentHash") == content_hash(news["content"]) and
                     plain(olds.get("mode")) == plain(news.get("mode")) and
                     olds.get("instanceUuid") == news.get("instanceUuid"))
        if same_file:
            # Only how a change is validated or reloaded differs (a new restart command): the file in place is the
            # same, so nothing is pushed and nothing restarts; the new commands apply to the next content change.
            kept = {"lastDrain": olds["lastDrain"]} if "lastDrain" in olds else {}
            return UpdateResult(outs={**self._outs(news, olds["contentHash"]), **kept})
        return UpdateResult(outs=self._apply(news, drain_first=True))

    def diff(self, _id, olds, news):
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        changed = list(replaces)
        content = news.get("content")
        # During preview the content may be unknown (it depends on addresses not yet assigned).
        if not isinstance(content, str) or olds.get("contentHash") != content_hash(content):
            changed.append("content")
        # `drain` is not compared: it only says how the next content change is applied.
        for k in ("mode", "validateCommand", "reloadCommand", "instanceUuid", "validateFormat"):
            new = news.get(k)
            if not isinstance(new, (str, list, tuple, type(None))) or plain(olds.get(k)) != plain(new):
                changed.append(k)
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def read(self, id_, props):
        client = client_for(_conn(props))
        inst = client.get_instance(props["instance"])
        if inst is None:
            return ReadResult(id_="", outs={})
        if inst.get("status") != "Running":
            # A stopped instance's state volume is not mounted: its files cannot be seen, which says nothing about
            # them (a member down for a rollout keeps every one). Read again once it runs.
            return ReadResult(id_=id_, outs=dict(props))
        found = client.pull_file(props["instance"], props["path"])
        if found is None:
            return ReadResult(id_="", outs={})  # removed out of band: the next `up` pushes it again
        digest = hashlib.sha256(found[0]).hexdigest()
        uuid = (inst.get("config") or {}).get("volatile.uuid", "")
        return ReadResult(id_=id_, outs={**props, "contentHash": digest, "instanceUuid": uuid})

    def delete(self, _id, props):
        client = client_for(_conn(props))
        if client.get_instance(props["instance"]) is None:
            return
        client.delete_file(props["instance"], props["path"])


class InstanceFile(pulumi.dynamic.Resource, module="incus", name="InstanceFile"):
    """A file inside an instance, pushed, validated and reloaded. Output: contentHash."""

    @property
    def content_hash(self) -> pulumi.Output[str]:
        return getattr(self, "contentHash")

    def __init__(
        self,
        resource_name: str,
        *,
        instance: pulumi.Input[str],
        instance_uuid: pulumi.Input[str],
        path: str,
        content: pulumi.Input[str],
        connection: dict,
        credentials: Optional[pulumi.Input[dict]] = None,
        mode: str = "0644",
        validate_command: Optional[list[str]] = None,
        reload_command: Optional[list[str]] = None,
        drain: Optional[dict] = None,
        validate_format: Optional[str] = None,
        redact: Optional[list[str]] = None,
        rollout: Optional[pulumi.Input[dict]] = None,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {
            "instance": instance,
            "instanceUuid": instance_uuid,
            "path": path,
            "content": content,
            "connection": connection,
            "credentials": credentials or {},
            "mode": mode,
            "validateCommand": validate_command,
            "reloadCommand": reload_command,
            "drain": drain,
            "contentHash": None,
        }
        # Only when set, so existing resources see no new input (and no diff).
        props |= {k: v for k, v in {
            "validateFormat": validate_format,
            "redact": pulumi.Output.secret(redact) if redact else None,
            # How a restart for a changed file rolls (providers/rollout.py); not compared by diff.
            "rollout": rollout,
        }.items() if v is not None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["credentials"]))
        super().__init__(InstanceFileProvider(), resource_name, props, opts)
