"""The Kubernetes resources as plain dicts: pure decisions the kopf front end acts on, unit-tested without kopf.

Which policy status to write, which Backup resources should exist, whether a RestoreRequest still has to run,
and the names kopf's per-host bookkeeping uses. Ready, RPOMet and RTOMet mean the same as in standalone mode
(controller/status.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..api.backup import Backup
from ..api.common import API_VERSION, Condition
from ..api.loader import parse_document
from ..api.policy import BackupPolicy, BackupPolicyStatus, CopyStatus, Drill, RepositoryCheck
from ..api.restore import RestoreRequest, RestoreRequestStatus
from .status import Attempt, Measurement, iso, parse_time, policy_status, with_transitions

log = logging.getLogger(__name__)

LABEL_POLICY = "dockvault.io/policy"
DEFAULT_HOST = "local"
TERMINAL = ("Succeeded", "Failed")


def now_utc() -> datetime:
    return datetime.now(UTC)


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
    started = parse_time(ref.started_at) if ref else None
    if ref is None or started is None:
        return None
    return Attempt(ref.id, ref.phase, started, parse_time(ref.completed_at), ref.bytes, ref.message,
                   error=ref.error, attempt=ref.attempt or 1, next_retry_at=parse_time(ref.next_retry_at),
                   level=ref.level or "full")


def measurement_of(status: BackupPolicyStatus) -> Measurement | None:
    rto = status.measured_rto
    at = parse_time(rto.at) if rto else None
    if rto is None or at is None:
        return None
    return Measurement(rto.seconds, at, rto.backup, rto.source)


# --- policy status -------------------------------------------------------------------------------

def policy_patch(
    policy_body: Mapping[str, Any],
    backups: Sequence[Backup],
    last_attempt: Attempt | None,
    now: datetime,
    *,
    measured: Measurement | None = None,
    drill: Drill | None = None,
    good_drill: Drill | None = None,
    policy: BackupPolicy | None = None,
    copies: Sequence[CopyStatus] = (),
    check: RepositoryCheck | None = None,
) -> dict[str, Any]:
    """The policy's whole status (camelCase, for patch.status) from its body, its repository's backups and its last run.
    `policy`: the body already parsed, when the caller has it."""
    generation = (policy_body.get("metadata") or {}).get("generation")
    previous = previous_status(policy_body)
    errors: list[str] = []
    if policy is None:
        policy, errors = parse_policy(policy_body)
    if policy is None:
        return invalid_policy_patch(errors, previous=previous.conditions, generation=generation, now=now)
    status = policy_status(policy, backups, last_attempt, now=now, measured=measured, drill=drill,
                           good_drill=good_drill, previous=previous.conditions, copies=copies, check=check)
    return status.model_copy(update={"observed_generation": generation}).to_dict()


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


def restore_should_run(body: Mapping[str, Any], digest: str | None = None) -> bool:
    """False once a terminal phase is recorded for this very spec; a changed spec runs again.
    `digest`: the spec's hash when the caller has parsed the request already."""
    status = body.get("status") or {}
    if status.get("phase") not in TERMINAL:
        return True
    return status.get("specHash") != (digest or spec_hash(body))


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


