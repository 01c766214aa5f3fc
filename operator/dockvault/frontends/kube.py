"""Kubernetes mode: kopf handlers that drive the same core as standalone mode, with status in the resources.

Why this shape: the decisions (is a backup due, what the status says, whether a restore still has to run,
which Backup resources should exist) are pure functions of plain dicts below, unit-tested without kopf; the
handlers only read the body, call the core (actions/) and write one status patch. The repository stays the
source of truth: Backup resources mirror its manifests, and deleting a policy never deletes backup data.

One operator instance serves one Docker host: it handles only policies whose spec.host is its host (and
restores of those policies). Several instances of one host share a kopf peering object named after the
host, so one acts at a time; kopf's progress and diff-base annotations carry a per-host prefix, so
instances of different hosts never mistake each other's bookkeeping for their own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from ..actions.backup import run_backup
from ..actions.restore import run_restore
from ..actions.verify import run_drill
from ..api.backup import Backup
from ..api.common import API_VERSION, GROUP, VERSION, Condition
from ..api.loader import parse_document
from ..api.policy import BackupPolicy, BackupPolicyStatus, Verification
from ..api.restore import RestoreRequest, RestoreRequestStatus
from ..metrics import DockvaultMetrics, PolicyFacts, facts_for
from ..controller.schedule import backup_due, drill_due
from ..controller.status import (
    Attempt,
    Measurement,
    iso,
    last_attempt_time,
    policy_status,
    with_transitions,
)
from ..credentials import SecretError, SecretReader, secret_reader
from ..engine.core import DEFAULT_HELPER_IMAGE, Engine
from ..storage.local import LocalRepository

log = logging.getLogger(__name__)

POLICIES = "backuppolicies"
RESTORES = "restorerequests"
BACKUPS = "backups"
LABEL_POLICY = "dockvault.io/policy"
DEFAULT_HOST = "local"
DEFAULT_INTERVAL = 15.0  # seconds between two looks at a policy's schedule
TERMINAL = ("Succeeded", "Failed")


def now_utc() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep plain-dict copy of a kopf body (or any mapping), safe to keep and to hand to pydantic."""
    return json.loads(json.dumps(body, default=dict))


# --- names ---------------------------------------------------------------------------------------

def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40].strip("-")
    return label or "default"


def host_label(host: str) -> str:
    """`host` as a DNS label; a hash suffix keeps distinct hosts distinct after sanitising."""
    label = _dns_label(host)
    if label != host:
        label = f"{label}-{hashlib.sha256(host.encode()).hexdigest()[:6]}"
    return label


def peering_name(host: str) -> str:
    """The kopf peering object shared by every instance of one host (and by no other host)."""
    return f"dockvault-{host_label(host)}"


def annotation_prefix(host: str) -> str:
    """Prefix of kopf's progress and diff-base annotations for this host's instances."""
    return f"{host_label(host)}.kopf.dockvault.io"


def backup_resource_name(policy: str, backup_id: str) -> str:
    return f"{policy}-{backup_id.lower()}"


def host_matches(spec: Mapping[str, Any] | None, host: str) -> bool:
    return (spec or {}).get("host", DEFAULT_HOST) == host


# --- parsing -------------------------------------------------------------------------------------

def _intent(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a body the models describe; the status is the operator's own and is read separately."""
    doc = plain(body)
    return {key: doc[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in doc}


def _where(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return "/".join(part for part in (meta.get("namespace"), meta.get("name")) if part) or "?"


def parse_policy(body: Mapping[str, Any]) -> tuple[BackupPolicy | None, list[str]]:
    """The policy, or the problems as `FIELD: MESSAGE` lines (field paths as in the YAML)."""
    result = parse_document(_intent(body), file=_where(body))
    if result.errors:
        return None, [f"{e.path}: {e.message}" if e.path else e.message for e in result.errors]
    return result.items[0].resource, []  # type: ignore[return-value]


def parse_restore(body: Mapping[str, Any]) -> tuple[RestoreRequest | None, list[str]]:
    result = parse_document(_intent(body), file=_where(body))
    if result.errors:
        return None, [f"{e.path}: {e.message}" if e.path else e.message for e in result.errors]
    return result.items[0].resource, []  # type: ignore[return-value]


def previous_status(body: Mapping[str, Any]) -> BackupPolicyStatus:
    """What the policy's status says so far; kopf's own and unknown fields are dropped, a damaged status is empty."""
    raw = dict(plain(body).get("status") or {})
    known = {field_.alias or name for name, field_ in BackupPolicyStatus.model_fields.items()}
    try:
        return BackupPolicyStatus.model_validate({k: v for k, v in raw.items() if k in known})
    except ValueError:
        log.warning("%s: unreadable status ignored", _where(body))
        return BackupPolicyStatus()


def last_attempt_of(status: BackupPolicyStatus) -> Attempt | None:
    ref = status.last_backup
    started = _parse_time(ref.started_at) if ref else None
    if ref is None or started is None:
        return None
    return Attempt(ref.id, ref.phase, started, _parse_time(ref.completed_at), ref.bytes, ref.message)


def attempt_of(record: Backup) -> Attempt:
    st = record.status
    return Attempt(record.id, st.phase, st.started_at, st.completed_at, st.bytes, st.message, record.spec.trigger)


def measurement_of(status: BackupPolicyStatus) -> Measurement | None:
    rto = status.measured_rto
    at = _parse_time(rto.at) if rto else None
    if rto is None or at is None:
        return None
    return Measurement(rto.seconds, at, rto.backup, rto.source)


# --- policy status -------------------------------------------------------------------------------

def kube_ready(conditions: Sequence[Condition]) -> list[Condition]:
    """In Kubernetes mode Ready means "protected": the last backup succeeded AND the RPO is met."""
    by_type = {c.type: c for c in conditions}
    ready, rpo = by_type.get("Ready"), by_type.get("RPOMet")
    if ready is None or rpo is None or ready.status != "True" or rpo.status != "False":
        return list(conditions)
    demoted = Condition(type="Ready", status="False", reason=rpo.reason, message=rpo.message)
    return [demoted if c.type == "Ready" else c for c in conditions]


def policy_patch(
    policy_body: Mapping[str, Any],
    backups: Sequence[Backup],
    last_attempt: Attempt | None,
    now: datetime,
    *,
    measured: Measurement | None = None,
    verification: Verification | None = None,
) -> dict[str, Any]:
    """The policy's whole status (camelCase, for patch.status) from its body, its repository's backups and its last run."""
    generation = (policy_body.get("metadata") or {}).get("generation")
    previous = previous_status(policy_body)
    policy, errors = parse_policy(policy_body)
    if policy is None:
        return invalid_policy_patch(errors, previous=previous.conditions, generation=generation, now=now)
    status = policy_status(policy, backups, last_attempt, now=now, measured=measured, verification=verification,
                           previous=previous.conditions)
    conditions = with_transitions(kube_ready(status.conditions), previous.conditions, now=now, generation=generation)
    return status.model_copy(update={"conditions": conditions}).to_dict()


def invalid_policy_patch(errors: Sequence[str], *, previous: Sequence[Condition] = (), generation: int | None,
                         now: datetime) -> dict[str, Any]:
    message = "; ".join(errors) or "invalid spec"
    condition = Condition(type="Ready", status="False", reason="InvalidSpec", message=message)
    stamped = with_transitions([condition], previous, now=now, generation=generation)
    others = [c.to_dict() for c in previous if c.type != "Ready"]
    return {"observedGeneration": generation, "conditions": [stamped[0].to_dict(), *others]}


# --- Backup resources ----------------------------------------------------------------------------

def owner_reference(policy_body: Mapping[str, Any]) -> dict[str, Any]:
    meta = policy_body.get("metadata") or {}
    return {"apiVersion": API_VERSION, "kind": "BackupPolicy", "name": meta.get("name"), "uid": meta.get("uid"),
            "controller": True, "blockOwnerDeletion": False}


def backup_resource(record: Backup, policy_body: Mapping[str, Any]) -> dict[str, Any]:
    """The Backup custom resource of one run, owned by its policy (so `kubectl get backups` lists what exists)."""
    meta = policy_body.get("metadata") or {}
    metadata: dict[str, Any] = {"name": backup_resource_name(record.policy, record.id),
                                "labels": {LABEL_POLICY: record.policy}}
    if meta.get("namespace"):
        metadata["namespace"] = meta["namespace"]
    if meta.get("uid"):
        metadata["ownerReferences"] = [owner_reference(policy_body)]
    body = {"apiVersion": API_VERSION, "kind": "Backup", "metadata": metadata, "spec": record.spec.to_dict()}
    if record.status is not None:
        body["status"] = record.status.to_dict()
    return body


def backup_sync_plan(existing: Iterable[Mapping[str, Any]], backups: Sequence[Backup], *,
                     policy: str) -> tuple[list[Backup], list[str]]:
    """Which Backup resources to create (complete backups in the repository without one) and which to delete
    (resources of succeeded backups the repository no longer has). Records of failed runs are left alone."""
    have = {(obj.get("metadata") or {}).get("name"): obj for obj in existing}
    wanted = {backup_resource_name(policy, b.id): b for b in backups if b.succeeded}
    create = [b for name, b in sorted(wanted.items()) if name not in have]
    delete = sorted(name for name, obj in have.items()
                    if name not in wanted and (obj.get("spec") or {}).get("policy") == policy
                    and (obj.get("status") or {}).get("phase") == "Succeeded")
    return create, delete


# --- restores ------------------------------------------------------------------------------------

def spec_hash(body: Mapping[str, Any]) -> str:
    """The request's identity of intent, as standalone mode computes it (raw spec when it does not validate)."""
    request, _ = parse_restore(body)
    if request is not None:
        return request.spec_hash
    canonical = json.dumps(plain(body).get("spec") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def restore_should_run(body: Mapping[str, Any]) -> bool:
    """False once a terminal phase is recorded for this very spec; a changed spec runs again."""
    status = body.get("status") or {}
    return not (status.get("phase") in TERMINAL and status.get("specHash") == spec_hash(body))


def restore_interrupted(body: Mapping[str, Any]) -> bool:
    """A restore of this spec was Running when its operator stopped: it must not silently start over."""
    status = body.get("status") or {}
    return status.get("phase") == "Running" and status.get("specHash") == spec_hash(body)


def restore_patch(status: RestoreRequestStatus, *, spec_hash: str, generation: int | None) -> dict[str, Any]:
    """A RestoreRequest's status (camelCase) with its spec hash and a Succeeded condition."""
    condition = {
        "Pending": ("Unknown", "RestorePending"),
        "Running": ("Unknown", "RestoreRunning"),
        "Succeeded": ("True", "RestoreSucceeded"),
        "Failed": ("False", "RestoreFailed"),
    }[status.phase]
    stamped = Condition(type="Succeeded", status=condition[0], reason=condition[1], message=status.message or "",
                        last_transition_time=iso(now_utc().replace(microsecond=0)), observed_generation=generation)
    out = status.model_copy(update={"observed_generation": generation, "conditions": [stamped]}).to_dict()
    out["specHash"] = spec_hash
    return out


# --- the Kubernetes API beyond kopf's own patch ----------------------------------------------------

class KubeApi:
    """The few writes kopf's patch cannot do: Backup resources, a RestoreRequest's Running phase; and reading
    the Secrets that `passwordFrom.secretKeyRef` names."""

    def __init__(self) -> None:
        self._client = None
        self._objects = None
        self._core = None
        self._lock = threading.Lock()

    def _api_client(self):
        """One ApiClient per instance (call with self._lock held)."""
        if self._client is None:
            import kubernetes

            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                # kubernetes reads $KUBECONFIG at import time; read it now, as kopf's login does
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                                   client_configuration=config)
            self._client = kubernetes.client.ApiClient(config)
        return self._client

    @property
    def objects(self):
        with self._lock:
            if self._objects is None:
                import kubernetes

                self._objects = kubernetes.client.CustomObjectsApi(self._api_client())
            return self._objects

    @property
    def core(self):
        with self._lock:
            if self._core is None:
                import kubernetes

                self._core = kubernetes.client.CoreV1Api(self._api_client())
            return self._core

    def read_secret(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret, decoded; failures name the Secret and key, never a value."""
        what = f"passwordFrom.secretKeyRef: Secret {namespace}/{name}"
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except Exception as exc:  # noqa: BLE001 - ApiException and transport errors alike
            status = self._status_of(exc)
            if status == 404:
                raise SecretError(f"{what} does not exist") from None
            if status == 403:
                raise SecretError(f"{what}: forbidden; the operator's service account needs `get` on it "
                                  "(Helm chart: secrets.enabled, secrets.resourceNames)") from None
            raise SecretError(f"{what}: cannot read it: "
                              f"{f'HTTP {status}' if status else type(exc).__name__}") from None
        data = getattr(secret, "data", None) or {}
        if key not in data or data[key] is None:
            raise SecretError(f"{what} has no key {key!r}")
        try:
            return base64.b64decode(data[key], validate=True).decode("utf-8").rstrip("\r\n")
        except (binascii.Error, UnicodeDecodeError):
            raise SecretError(f"{what}: key {key!r} is not base64-encoded UTF-8 text") from None

    def secret_reader(self, namespace: str | None) -> SecretReader:
        """A reader for credentials.secret_reader, bound to the namespace of the resource being served."""
        def read(name: str, key: str) -> str:
            if not namespace:
                raise SecretError(f"passwordFrom.secretKeyRef: Secret {name}: the resource has no namespace")
            return self.read_secret(namespace, name, key)
        return read

    @staticmethod
    def _status_of(exc: Exception) -> int | None:
        return getattr(exc, "status", None)

    def create_backup(self, body: Mapping[str, Any]) -> None:
        namespace, name = body["metadata"].get("namespace"), body["metadata"]["name"]
        try:
            self.objects.create_namespaced_custom_object(GROUP, VERSION, namespace, BACKUPS, dict(body))
        except Exception as exc:
            if self._status_of(exc) != 409:
                raise
        if "status" in body:  # with a status subresource, the API server ignores status on create
            self.objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, BACKUPS, name,
                                                               {"status": body["status"]})

    def delete_backup(self, namespace: str, name: str) -> None:
        try:
            self.objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, BACKUPS, name)
        except Exception as exc:
            if self._status_of(exc) != 404:
                raise

    def list_backups(self, namespace: str, policy: str) -> list[dict[str, Any]]:
        found = self.objects.list_namespaced_custom_object(GROUP, VERSION, namespace, BACKUPS,
                                                           label_selector=f"{LABEL_POLICY}={policy}")
        return [item for item in found.get("items", [])
                if (item.get("metadata") or {}).get("labels", {}).get(LABEL_POLICY) == policy]

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name,
                                                           {"status": dict(status)})


# --- runtime and handlers ------------------------------------------------------------------------

@dataclass
class Runtime:
    """What the handlers of one operator instance share: its host, the engine, the API, per-policy locks."""

    host: str = DEFAULT_HOST
    helper_image: str = DEFAULT_HELPER_IMAGE
    interval: float = DEFAULT_INTERVAL
    engine_factory: Callable[[], Engine] | None = None
    api: KubeApi = field(default_factory=KubeApi)
    cancel: threading.Event = field(default_factory=threading.Event)
    metrics: DockvaultMetrics | None = None
    _engine: Engine | None = None
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _facts: dict[tuple[str, str], PolicyFacts] = field(default_factory=dict)

    def facts(self) -> list[PolicyFacts]:
        """What the exporter reports; refreshed at every reconcile, read by scrapes in other threads."""
        with self._guard:
            return [self._facts[key] for key in sorted(self._facts)]

    def remember(self, namespace: str | None, facts: PolicyFacts | None, name: str) -> None:
        with self._guard:
            if facts is None:
                self._facts.pop((namespace or "", name), None)
            else:
                self._facts[(namespace or "", name)] = facts

    @property
    def engine(self) -> Engine:
        with self._guard:
            if self._engine is None:
                factory = self.engine_factory or (lambda: Engine.from_env(helper_image=self.helper_image))
                self._engine = factory()
            return self._engine

    def lock(self, namespace: str | None, policy: str) -> threading.Lock:
        """At most one job (backup, drill, restore) per policy at a time."""
        with self._guard:
            return self._locks.setdefault((namespace or "", policy), threading.Lock())


def repository_for(policy: BackupPolicy) -> LocalRepository:
    assert policy.spec.storage.local is not None
    return LocalRepository(policy.spec.storage.local.path)


def _normal(body: Any, reason: str, message: str) -> None:
    kopf.event(body, type="Normal", reason=reason, message=message)


def reconcile_policy(rt: Runtime, body: Mapping[str, Any], *, run_jobs: bool) -> dict[str, Any]:
    """One reconcile of a policy: with `run_jobs`, run a due backup and a due drill; return the status to patch."""
    policy, errors = parse_policy(body)
    if policy is None:
        if not run_jobs:  # once per change of the spec, not on every tick
            kopf.warn(body, reason="InvalidSpec", message="; ".join(errors))
        return policy_patch(body, [], None, now_utc())
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    previous = previous_status(body)
    last, measured, verification = last_attempt_of(previous), measurement_of(previous), previous.last_verification
    repository = repository_for(policy)
    backups = repository.backups(policy.name)
    if not run_jobs:
        return policy_patch(body, backups, last, now_utc(), measured=measured, verification=verification)
    with rt.lock(namespace, policy.name):
        due = backup_due(policy.spec, last_attempt=last_attempt_time(backups, last), now=now_utc())
        if due.due:
            last = _backup(rt, policy, body, repository, reason=due.reason)
            backups = repository.backups(policy.name)
        last_drill = _parse_time(verification.started_at) if verification else None
        if drill_due(policy.spec, last_drill=last_drill, has_backup=any(b.succeeded for b in backups), now=now_utc()).due:
            with secret_reader(rt.api.secret_reader(namespace)):  # this thread runs the job: see credentials.py
                outcome = run_drill(policy, engine=rt.engine, repository=repository, cancel=rt.cancel)
            verification = outcome.verification
            if rt.metrics is not None:
                rt.metrics.restore_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                            duration_seconds=outcome.seconds)
            if outcome.succeeded:
                measured = Measurement(outcome.seconds, outcome.started_at, verification.backup, "drill")
                _normal(body, "DrillSucceeded", f"restore drill of backup {verification.backup} took "
                                                f"{outcome.seconds:.1f}s")
            else:
                kopf.warn(body, reason="DrillFailed", message=verification.message or "restore drill failed")
    verified_at = (_parse_time(verification.started_at).timestamp() + (verification.duration_seconds or 0)
                   if verification and verification.result == "Succeeded" and verification.started_at else None)
    rt.remember(namespace, facts_for(policy, backups, last=last, measured=measured, verified_at=verified_at), policy.name)
    return policy_patch(body, backups, last, now_utc(), measured=measured, verification=verification)


def _backup(rt: Runtime, policy: BackupPolicy, body: Mapping[str, Any], repository: LocalRepository, *,
            reason: str) -> Attempt:
    namespace = (body.get("metadata") or {}).get("namespace")
    log.info("backup of %s/%s is due: %s", namespace, policy.name, reason)
    with secret_reader(rt.api.secret_reader(namespace)):  # this thread runs the job: see credentials.py
        outcome = run_backup(policy, engine=rt.engine, repository=repository, trigger="schedule", cancel=rt.cancel)
    record = outcome.record
    if rt.metrics is not None:
        rt.metrics.backup_finished(policy.name, policy.spec.host, succeeded=outcome.succeeded,
                                   duration_seconds=record.status.duration_seconds or 0.0)
        if outcome.deleted:
            rt.metrics.retention_deleted(policy.name, policy.spec.host, len(outcome.deleted))
    try:
        rt.api.create_backup(backup_resource(record, body))
        for backup_id in outcome.deleted:
            rt.api.delete_backup(namespace, backup_resource_name(policy.name, backup_id))
    except Exception as exc:  # noqa: BLE001 - the repository holds the backup; a resync repairs the resources
        log.error("%s/%s: cannot write Backup resources: %s", namespace, policy.name, exc)
        kopf.warn(body, reason="BackupResourceFailed", message=f"backup {record.id}: {exc}")
    st = record.status
    if outcome.succeeded:
        pruned = f"; retention deleted {', '.join(outcome.deleted)}" if outcome.deleted else ""
        _normal(body, "BackupSucceeded", f"backup {record.id}: {st.bytes} bytes in {st.duration_seconds}s{pruned}")
    else:
        kopf.warn(body, reason="BackupFailed", message=f"backup {record.id}: {st.message}")
    return attempt_of(record)


def sync_backup_resources(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Make the policy's Backup resources match its repository (after downtime, or a policy created anew)."""
    policy, _ = parse_policy(body)
    if policy is None:
        return
    namespace = (body.get("metadata") or {}).get("namespace")
    create, delete = backup_sync_plan(rt.api.list_backups(namespace, policy.name),
                                      repository_for(policy).backups(policy.name), policy=policy.name)
    for backup in create:
        rt.api.create_backup(backup_resource(backup, body))
    for name in delete:
        rt.api.delete_backup(namespace, name)


def handle_restore(rt: Runtime, body: Mapping[str, Any], policies: Mapping[Any, Any], patch: dict) -> None:
    """Run a RestoreRequest once per spec; a request for another host's policy is left to that host."""
    if not restore_should_run(body):
        return
    meta = body.get("metadata") or {}
    namespace, name, generation = meta.get("namespace"), meta.get("name"), meta.get("generation")
    digest = spec_hash(body)
    request, errors = parse_restore(body)
    if request is None:
        failed = RestoreRequestStatus(phase="Failed", message="invalid spec: " + "; ".join(errors))
        patch.setdefault("status", {}).update(restore_patch(failed, spec_hash=digest, generation=generation))
        kopf.warn(body, reason="InvalidSpec", message=failed.message)
        return
    policy_body = next(iter(policies.get((namespace, request.spec.policy), ())), None)
    if policy_body is not None and not host_matches(policy_body.get("spec"), rt.host):
        return
    policy = parse_policy(policy_body)[0] if policy_body is not None else None
    if policy is None:
        why = "does not exist" if policy_body is None else "is invalid"
        waiting = RestoreRequestStatus(phase="Pending", message=f"waiting: BackupPolicy {request.spec.policy!r} {why}")
        patch.setdefault("status", {}).update(restore_patch(waiting, spec_hash=digest, generation=generation))
        raise kopf.TemporaryError(waiting.message, delay=max(rt.interval, 5))
    repository = repository_for(policy)
    if restore_interrupted(body):
        outcome = repository.restore_outcome(request.name, digest)  # it finished, but its status was never written
        status = outcome or RestoreRequestStatus(
            phase="Failed", started_at=(body.get("status") or {}).get("startedAt") or None,
            message="interrupted: the operator stopped during the restore; change the spec to run it again")
    else:
        running = RestoreRequestStatus(phase="Running", started_at=now_utc())
        rt.api.patch_status(RESTORES, namespace, name, restore_patch(running, spec_hash=digest, generation=generation))
        with rt.lock(namespace, policy.name), secret_reader(rt.api.secret_reader(namespace)):
            status = run_restore(request, policy, engine=rt.engine, repository=repository, cancel=rt.cancel).status
        repository.save_restore(request.name, digest, status)
    patch.setdefault("status", {}).update(restore_patch(status, spec_hash=digest, generation=generation))
    if status.phase == "Succeeded":
        _normal(body, "RestoreSucceeded", status.message or "restored")
    else:
        kopf.warn(body, reason="RestoreFailed", message=status.message or "restore failed")


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of one instance, bound to `rt` (no module-level global state)."""
    registry = kopf.OperatorRegistry()
    policy_kind = {"group": GROUP, "version": VERSION, "plural": POLICIES}
    restore_kind = {"group": GROUP, "version": VERSION, "plural": RESTORES}
    ours = {"when": lambda spec, **_: host_matches(spec, rt.host), "registry": registry}

    @kopf.on.login(registry=registry)  # a custom registry does not get kopf's default login handlers
    def login(**kwargs):
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(**policy_kind, id="dockvault_policies", registry=registry)  # the id is the handlers' kwarg
    def dockvault_policies(namespace, name, body, **_):
        return {(namespace, name): plain(body)}

    @kopf.on.create(**policy_kind, **ours)
    @kopf.on.resume(**policy_kind, **ours)
    def policy_appeared(body, patch, logger, **_):
        patch.setdefault("status", {}).update(reconcile_policy(rt, body, run_jobs=False))
        try:
            sync_backup_resources(rt, body)
        except Exception as exc:  # noqa: BLE001 - a status without Backup resources beats no status
            logger.error("cannot sync Backup resources: %s", exc)

    @kopf.on.update(**policy_kind, **ours)
    def policy_changed(body, patch, **_):
        patch.setdefault("status", {}).update(reconcile_policy(rt, body, run_jobs=False))

    @kopf.timer(**policy_kind, interval=rt.interval, backoff=max(rt.interval, 10.0), **ours)
    def policy_tick(body, patch, logger, **_):
        try:
            status = reconcile_policy(rt, body, run_jobs=True)
        except Exception as exc:
            kopf.exception(body, reason="ReconcileFailed", message=str(exc))
            raise
        patch.setdefault("status", {}).update(status)

    @kopf.on.delete(**policy_kind, optional=True, **ours)
    def policy_deleted(name, namespace, logger, **_):
        rt.remember(namespace, None, name)
        logger.info("policy %s deleted; its backups stay in the repository", name)

    @kopf.on.create(**restore_kind, registry=registry)
    @kopf.on.resume(**restore_kind, registry=registry)
    @kopf.on.update(**restore_kind, field="spec", registry=registry)
    def restore(body, patch, dockvault_policies, **_):
        try:
            handle_restore(rt, body, dockvault_policies, patch)
        except kopf.TemporaryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a request must end Failed, never stay Running
            kopf.exception(body, reason="RestoreFailed", message=str(exc))
            failed = RestoreRequestStatus(phase="Failed", message=f"{type(exc).__name__}: {exc}")
            meta = body.get("metadata") or {}
            patch.setdefault("status", {}).update(
                restore_patch(failed, spec_hash=spec_hash(body), generation=meta.get("generation")))

    return registry


def configure(settings: kopf.OperatorSettings, *, host: str, peering: bool, clusterwide: bool) -> None:
    """kopf settings of one instance: events, per-host bookkeeping annotations, peering per host."""
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING  # kopf's own per-object logs; our Normal events are posted explicitly
    prefix = annotation_prefix(host)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=prefix)
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.peering.name = peering_name(host)
    settings.peering.standalone = not peering
    settings.peering.clusterwide = clusterwide
    settings.execution.max_workers = 4


async def operator(
    *,
    host: str = DEFAULT_HOST,
    namespaces: Sequence[str] | None = None,
    helper_image: str = DEFAULT_HELPER_IMAGE,
    peering: bool = True,
    stop_flag: Any = None,
    ready_flag: Any = None,
    interval: float = DEFAULT_INTERVAL,
    engine_factory: Callable[[], Engine] | None = None,
    priority: int | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run one instance in the current event loop until `stop_flag` is set (what tests and run_operator call)."""
    rt = Runtime(host=host, helper_image=helper_image, interval=interval, engine_factory=engine_factory)
    if registry is not None:
        rt.metrics = DockvaultMetrics(registry, rt.facts)
    settings = kopf.OperatorSettings()
    clusterwide = not namespaces
    configure(settings, host=host, peering=peering, clusterwide=clusterwide)
    # Equal priorities make every peer pause; a random one lets exactly one instance of the host act.
    settings.peering.priority = priority if priority is not None else random.randint(1, 1_000_000)
    try:
        await kopf.operator(registry=build_registry(rt), settings=settings, clusterwide=clusterwide,
                            namespaces=list(namespaces or ()), standalone=not peering,
                            peering_name=peering_name(host) if peering else None,  # given, kopf makes peering mandatory
                            priority=settings.peering.priority, stop_flag=stop_flag, ready_flag=ready_flag)
    finally:
        rt.cancel.set()


def run_operator(
    *,
    host: str = DEFAULT_HOST,
    namespaces: list[str] | None = None,
    helper_image: str,
    peering: bool = True,
    stop_flag: Any = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Serve BackupPolicies, RestoreRequests and Backups of Docker host `host` until stopped (`dockvault kube`)."""
    asyncio.run(operator(host=host, namespaces=namespaces, helper_image=helper_image, peering=peering,
                         stop_flag=stop_flag, registry=registry))
