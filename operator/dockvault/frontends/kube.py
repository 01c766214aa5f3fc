"""Kubernetes mode: kopf handlers that feed the job runner and write what it records into the resources.

Why this shape: the decisions (what status to write, which Backup resources should exist, whether a restore
still has to run) are pure functions in controller/resources.py; every job runs through the same job runner
as in standalone mode (actions/runner.py), with the state kept in the resources (frontends/kubestate.py).
Handlers here only translate: bodies in, status patches, Backup resources and events out. The repository
stays the source of truth: Backup resources mirror its manifests, and deleting a policy never deletes data.

One operator instance serves one Docker host: it handles only policies whose spec.host is its host, and
the restores it performs: those whose spec.host names it, or else of its policies (a restore naming
another host reads that host's policy and repository, and restores into this engine: a migration). Several instances of one host share a kopf peering object named after the
host, so one acts at a time; kopf's progress and diff-base annotations carry a per-host prefix, so
instances of different hosts never mistake each other's bookkeeping for their own. Jobs are started from
kopf's handlers, so a paused (peering) instance starts none.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from ..actions.runner import JobResult, JobRunner, Resources
from ..api.common import GROUP, VERSION
from ..api.loader import deprecated_fields
from ..api.restore import RestoreRequestStatus
from ..controller.resources import (  # noqa: F401 - re-exported: the front end's vocabulary
    DEFAULT_HOST,
    LABEL_POLICY,
    TERMINAL,
    annotation_prefix,
    backup_resource,
    backup_resource_name,
    backup_sync_plan,
    host_matches,
    invalid_policy_patch,
    last_attempt_of,
    measurement_of,
    parse_policy,
    parse_restore,
    peering_name,
    plain,
    policy_patch,
    previous_status,
    restore_interrupted,
    restore_patch,
    restore_should_run,
    spec_hash,
)
from ..controller.status import unlisted_status
from ..credentials import SecretError, SecretReader, secret_reader
from ..engine.core import DEFAULT_HELPER_IMAGE, Engine
from ..metrics import DockvaultMetrics
from .kubestate import KubeState, key_of, split_key

log = logging.getLogger(__name__)

POLICIES = "backuppolicies"
RESTORES = "restorerequests"
BACKUPS = "backups"
DEFAULT_INTERVAL = 15.0  # seconds between two looks at a policy's schedule


def now_utc() -> datetime:
    return datetime.now(UTC)


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
    """What the handlers of one operator instance share: its host, the API, the state and the job runner."""

    host: str = DEFAULT_HOST
    helper_image: str = DEFAULT_HELPER_IMAGE
    interval: float = DEFAULT_INTERVAL
    engine_factory: Callable[[], Engine] | None = None
    api: KubeApi = field(default_factory=KubeApi)
    max_parallel: int = 2
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # policies by key
    restore_bodies: dict[str, dict[str, Any]] = field(default_factory=dict)  # RestoreRequests by key
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.state = KubeState(self.api.patch_status)
        factory = self.engine_factory or (lambda: Engine.from_env(helper_image=self.helper_image))
        self.runner = JobRunner(state=self.state, engine=factory, max_parallel=self.max_parallel,
                                job_context=lambda key: secret_reader(self.api.secret_reader(split_key(key)[0])),
                                on_result=self.report)
        self.cancel = self.runner.cancel

    @property
    def metrics(self) -> DockvaultMetrics | None:
        return self.runner.metrics

    @metrics.setter
    def metrics(self, value: DockvaultMetrics | None) -> None:
        self.runner.metrics = value

    def facts(self):
        return self.runner.facts()

    def remember(self, key: str, body: Mapping[str, Any] | None) -> None:
        with self._guard:
            if body is None:
                self.bodies.pop(key, None)
            else:
                self.bodies[key] = plain(body)

    def body(self, key: str) -> dict[str, Any] | None:
        with self._guard:
            return self.bodies.get(key)

    # --- status out ----------------------------------------------------------------------------------
    def policy_status(self, key: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The policy's whole status (camelCase) from its body, its repository and the state."""
        policy, _ = parse_policy(body)
        if policy is None:
            return policy_patch(body, [], None, now_utc())  # the errors as the Ready condition
        backups = self.runner.list_backups(key, policy)
        if backups is None:  # the status says so, instead of going stale
            return unlisted_status(policy, self.runner.listing_error(key) or "unknown error",
                                   self.state.last_attempt(key), now=now_utc(),
                                   previous=previous_status(body).conditions).to_dict()
        return policy_patch(body, backups, self.state.last_attempt(key), now_utc(),
                            measured=self.state.last_measurement(key), drill=self.state.last_drill(key),
                            good_drill=self.state.last_successful_drill(key), policy=policy,
                            copies=self.state.copy_statuses(key), check=self.state.last_check(key))

    def report(self, result: JobResult) -> None:
        """The runner's callback after every job: policy status, Backup resources and an event."""
        key = result.job.policy
        body = self.body(key)
        if body is None:
            return
        namespace, name = split_key(key)
        mine = result.policy.spec.host == self.host  # else another host's policy served a restore: its status is theirs
        if mine:
            self.api.patch_status(POLICIES, namespace, name, self.policy_status(key, body))
        if mine and result.backup is not None:
            record = result.backup.record
            try:
                self.api.create_backup(backup_resource(record, body))
                for backup_id in result.backup.deleted:
                    self.api.delete_backup(namespace, backup_resource_name(result.policy.name, backup_id))
            except Exception as exc:  # noqa: BLE001 - the repository holds the backup; a resync repairs the resources
                log.error("%s: cannot write Backup resources: %s", key, exc)
                kopf.warn(body, reason="BackupResourceFailed", message=f"backup {record.id}: {exc}")
        target = self.restore_body(result.job.request) if result.job.request else (body if mine else None)
        if target is None:
            return
        kind = result.job.kind.capitalize()
        if result.succeeded:
            kopf.event(target, type="Normal", reason=f"{kind}Succeeded", message=result.message)
        else:
            retrying = result.job.kind == "backup" and self._retrying(key)
            reason = "BackupRetrying" if retrying else f"{kind}Failed"
            kopf.warn(target, reason=reason, message=result.message or reason)

    def _retrying(self, key: str) -> bool:
        last = self.state.last_attempt(key)
        return last is not None and last.next_retry_at is not None

    def restore_body(self, key: str) -> dict[str, Any] | None:
        with self._guard:
            return self.restore_bodies.get(key)

    # --- jobs in -------------------------------------------------------------------------------------
    def resources(self, namespace: str | None, policy_name: str, restores: Mapping[Any, Any]) -> Resources:
        """One policy and its pending restores, as the runner takes them."""
        key = key_of(namespace, policy_name)
        body = self.body(key)
        policy = parse_policy(body)[0] if body is not None else None
        if policy is None:
            return Resources()
        wanted = {}
        for (ns, name), bodies in restores.items():
            for restore_body in bodies:
                request, _ = parse_restore(restore_body)
                if ns != namespace or request is None or request.spec.policy != policy_name:
                    continue
                if (request.spec.host or policy.spec.host) != self.host:  # another host performs it
                    continue
                if not restore_should_run(restore_body, request.spec_hash):
                    continue
                rkey = key_of(ns, name)
                self.state.observe_restore(rkey, restore_body, spec_hash=request.spec_hash, policy=key)
                with self._guard:
                    self.restore_bodies[rkey] = plain(restore_body)
                wanted[rkey] = (request, key)
        if policy.spec.host != self.host:  # another host's policy, here only as the source of a restore (migration)
            return Resources({}, wanted, {key: policy})
        return Resources({key: policy}, wanted)


def sync_backup_resources(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Make the policy's Backup resources match its repository (after downtime, or a policy created anew)."""
    policy, _ = parse_policy(body)
    if policy is None:
        return
    namespace = (body.get("metadata") or {}).get("namespace")
    backups = rt.runner.list_backups(key_of(namespace, policy.name), policy)
    if backups is None:
        return  # logged; the next sync repairs the resources
    create, delete = backup_sync_plan(rt.api.list_backups(namespace, policy.name), backups, policy=policy.name)
    for backup in create:
        rt.api.create_backup(backup_resource(backup, body))
    for name in delete:
        rt.api.delete_backup(namespace, name)


def reconcile_policy(rt: Runtime, body: Mapping[str, Any], restores: Mapping[Any, Any], *,
                     run_jobs: bool) -> dict[str, Any]:
    """One look at a policy: with `run_jobs`, recover once and start what is due; return the status to patch."""
    meta = body.get("metadata") or {}
    key = key_of(meta.get("namespace"), meta.get("name"))
    policy, errors = parse_policy(body)
    if policy is None:
        rt.remember(key, None)
        if not run_jobs:  # once per change of the spec, not on every tick
            kopf.warn(body, reason="InvalidSpec", message="; ".join(errors))
        return policy_patch(body, [], None, now_utc())
    if not run_jobs:
        for old, new in deprecated_fields("BackupPolicy", plain(body)):
            kopf.warn(body, reason="DeprecatedField", message=f"{old} is deprecated; rename it to {new}")
    rt.remember(key, body)
    rt.state.observe_policy(key, body)
    rt.runner.refresh(key, policy)
    if run_jobs:  # job threads inherit this handler's kopf context, so they can post events
        resources = rt.resources(meta.get("namespace"), meta.get("name"), restores)
        rt.runner.recover(Resources({key: policy}))  # in the policy's job context: its Secrets can be read
        rt.runner.dispatch(resources)
    return rt.policy_status(key, body)


def handle_restore(rt: Runtime, body: Mapping[str, Any], policies: Mapping[Any, Any], restores: Mapping[Any, Any],
                   patch: dict) -> None:
    """Hand a RestoreRequest to the runner once per spec; a request for another host's policy is left to that host."""
    if not restore_should_run(body):
        return
    meta = body.get("metadata") or {}
    namespace, generation = meta.get("namespace"), meta.get("generation")
    digest = spec_hash(body)
    request, errors = parse_restore(body)
    if request is None:
        failed = RestoreRequestStatus(phase="Failed", message="invalid spec: " + "; ".join(errors))
        patch.setdefault("status", {}).update(restore_patch(failed, spec_hash=digest, generation=generation))
        kopf.warn(body, reason="InvalidSpec", message=failed.message)
        return
    policy_body = next(iter(policies.get((namespace, request.spec.policy), ())), None)
    if request.spec.host is not None and request.spec.host != rt.host:
        return  # the host it names performs it
    if request.spec.host is None and policy_body is not None and not host_matches(policy_body.get("spec"), rt.host):
        return  # the policy's host performs it
    policy = parse_policy(policy_body)[0] if policy_body is not None else None
    if policy is None:
        why = "does not exist" if policy_body is None else "is invalid"
        waiting = RestoreRequestStatus(phase="Pending", message=f"waiting: BackupPolicy {request.spec.policy!r} {why}")
        patch.setdefault("status", {}).update(restore_patch(waiting, spec_hash=digest, generation=generation))
        raise kopf.TemporaryError(waiting.message, delay=max(rt.interval, 5))
    key = key_of(namespace, request.spec.policy)
    rt.remember(key, policy_body)
    rt.state.observe_policy(key, policy_body)
    rt.runner.dispatch(rt.resources(namespace, request.spec.policy, restores))


def build_registry(rt: Runtime) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of one instance, bound to `rt` (no module-level global state)."""
    registry = kopf.OperatorRegistry()
    policy_kind = {"group": GROUP, "version": VERSION, "plural": POLICIES}
    restore_kind = {"group": GROUP, "version": VERSION, "plural": RESTORES}
    ours = {"when": lambda spec, **_: host_matches(spec, rt.host), "registry": registry}

    @kopf.on.login(registry=registry)  # a custom registry does not get kopf's default login handlers
    def login(**kwargs):
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    # Handlers taking an index wait until every index is filled: a restore and a drill due at start-up are
    # seen together, and the restore goes first.
    @kopf.index(**policy_kind, id="dockvault_policies", registry=registry)  # the id is the handlers' kwarg
    def dockvault_policies(namespace, name, body, **_):
        return {(namespace, name): plain(body)}

    @kopf.index(**restore_kind, id="dockvault_restores", registry=registry)
    def dockvault_restores(namespace, name, body, **_):
        return {(namespace, name): plain(body)}

    @kopf.on.create(**policy_kind, **ours)
    @kopf.on.resume(**policy_kind, **ours)
    def policy_appeared(body, patch, logger, dockvault_restores, **_):
        patch.setdefault("status", {}).update(reconcile_policy(rt, body, dockvault_restores, run_jobs=False))
        try:
            sync_backup_resources(rt, body)
        except Exception as exc:  # noqa: BLE001 - a status without Backup resources beats no status
            logger.error("cannot sync Backup resources: %s", exc)

    @kopf.on.update(**policy_kind, **ours)
    def policy_changed(body, patch, dockvault_restores, **_):
        patch.setdefault("status", {}).update(reconcile_policy(rt, body, dockvault_restores, run_jobs=False))

    @kopf.timer(**policy_kind, interval=rt.interval, backoff=max(rt.interval, 10.0), **ours)
    def policy_tick(body, patch, dockvault_restores, **_):
        try:
            status = reconcile_policy(rt, body, dockvault_restores, run_jobs=True)
        except Exception as exc:
            kopf.exception(body, reason="ReconcileFailed", message=str(exc))
            raise
        patch.setdefault("status", {}).update(status)

    @kopf.on.delete(**policy_kind, optional=True, **ours)
    def policy_deleted(name, namespace, logger, **_):
        rt.remember(key_of(namespace, name), None)
        rt.runner.refresh(key_of(namespace, name), None)
        logger.info("policy %s deleted; its backups stay in the repository", name)

    @kopf.on.create(**restore_kind, registry=registry)
    @kopf.on.resume(**restore_kind, registry=registry)
    @kopf.on.update(**restore_kind, field="spec", registry=registry)
    def restore(body, patch, dockvault_policies, dockvault_restores, **_):
        try:
            handle_restore(rt, body, dockvault_policies, dockvault_restores, patch)
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
    max_parallel: int = 2,
) -> None:
    """Run one instance in the current event loop until `stop_flag` is set (what tests and run_operator call)."""
    rt = Runtime(host=host, helper_image=helper_image, interval=interval, engine_factory=engine_factory,
                 max_parallel=max_parallel)
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
        await asyncio.to_thread(rt.runner.shutdown)


def run_operator(
    *,
    host: str = DEFAULT_HOST,
    namespaces: list[str] | None = None,
    helper_image: str,
    peering: bool = True,
    stop_flag: Any = None,
    registry: CollectorRegistry | None = None,
    max_parallel: int = 2,
    interval: float = DEFAULT_INTERVAL,
) -> None:
    """Serve BackupPolicies, RestoreRequests and Backups of Docker host `host` until stopped (`dockvault kube`)."""
    asyncio.run(operator(host=host, namespaces=namespaces, helper_image=helper_image, peering=peering,
                         stop_flag=stop_flag, registry=registry, max_parallel=max_parallel, interval=interval))
