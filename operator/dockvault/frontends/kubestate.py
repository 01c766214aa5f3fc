"""Kubernetes mode's state: the resources' status, plus what this process did since it last read them.

It implements actions.state.State. What a policy's status says seeds the memory the first time the policy
is seen; from then on this process's own records are newer. Restore outcomes and the quiesce journal are
written to the API at once (the journal before the engine is asked to halt anything, so a killed pod's
successor can resume the containers); the rest reaches the policy status through the front end's patch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.policy import CopyStatus, Drill, QuiescedContainer, RepositoryCheck
from ..api.restore import RestoreRequestStatus
from ..controller.resources import last_attempt_of, measurement_of, plain, previous_status, restore_patch
from ..controller.status import Attempt, Measurement, iso, parse_time
from ..engine.core import ContainerRef
from ..engine.quiesce import Halted


@dataclass
class _Policy:
    last_attempt: Attempt | None = None
    last_drill: Drill | None = None
    last_good_drill: Drill | None = None
    measured: Measurement | None = None
    quiesced: list[QuiescedContainer] = field(default_factory=list)
    copies: dict[str, CopyStatus] = field(default_factory=dict)
    last_check: RepositoryCheck | None = None


@dataclass
class _Restore:
    spec_hash: str
    policy: str
    status: RestoreRequestStatus
    generation: int | None = None


def _drill(recorded: Drill | None, legacy: Mapping[str, Any] | None) -> Drill | None:
    """A drill from the status: its own field, or the deprecated lastVerification an older dockvault wrote."""
    if recorded is not None or not legacy:
        return recorded
    try:
        return Drill.model_validate(legacy)
    except ValueError:
        return None


def key_of(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def split_key(key: str) -> tuple[str | None, str]:
    namespace, _, name = key.rpartition("/")
    return namespace or None, name


class KubeState:
    def __init__(self, patch_status: Callable[[str, str | None, str, Mapping[str, Any]], None]) -> None:
        """`patch_status(plural, namespace, name, status)` writes one status subresource."""
        self._patch = patch_status
        self._guard = threading.RLock()
        self._policies: dict[str, _Policy] = {}
        self._restores: dict[str, _Restore] = {}

    # --- reading the resources --------------------------------------------------------------------
    def observe_policy(self, key: str, body: Mapping[str, Any]) -> None:
        """Seed this policy's memory from its status, once; this process's own records are newer."""
        with self._guard:
            if key in self._policies:
                return
            status = previous_status(body)
            last = _drill(status.last_drill, status.last_verification)
            good = _drill(status.last_successful_drill, status.last_successful_verification)
            self._policies[key] = _Policy(
                last_attempt=last_attempt_of(status), last_drill=last,
                last_good_drill=good or (last if last is not None and last.succeeded else None),
                measured=measurement_of(status), quiesced=list(status.quiesced or []),
                copies={c.name: c for c in status.copies or []}, last_check=status.last_check)

    def observe_restore(self, key: str, body: Mapping[str, Any], *, spec_hash: str, policy: str) -> None:
        """Remember a request's recorded outcome for its current spec (a Running one was interrupted)."""
        status = dict(plain(body).get("status") or {})
        generation = (body.get("metadata") or {}).get("generation")
        with self._guard:
            known = self._restores.get(key)
            if known is not None and known.spec_hash == spec_hash:
                known.generation = generation
                return
            if status.get("specHash") == spec_hash and status.get("phase") in ("Running", "Succeeded", "Failed"):
                fields = {k: v for k, v in status.items() if k in RestoreRequestStatus.model_fields or
                          k in {f.alias for f in RestoreRequestStatus.model_fields.values()}}
                fields.pop("conditions", None)
                fields.pop("observedGeneration", None)
                try:
                    recorded = RestoreRequestStatus.model_validate(fields)
                except ValueError:
                    recorded = RestoreRequestStatus(phase=status["phase"])
                self._restores[key] = _Restore(spec_hash, policy, recorded, generation)
            else:
                self._restores.pop(key, None)

    def _memo(self, key: str) -> _Policy:
        return self._policies.setdefault(key, _Policy())

    # --- State: backups ---------------------------------------------------------------------------
    def last_attempt(self, policy: str) -> Attempt | None:
        with self._guard:
            return self._memo(policy).last_attempt

    def record_attempt(self, policy: str, attempt: Attempt) -> None:
        with self._guard:
            self._memo(policy).last_attempt = attempt

    def forget_attempt(self, policy: str, backup_id: str) -> None:
        with self._guard:
            memo = self._memo(policy)
            if memo.last_attempt is not None and memo.last_attempt.backup_id == backup_id:
                memo.last_attempt = None

    # --- State: drills and measured restores --------------------------------------------------------
    def last_drill(self, policy: str) -> Drill | None:
        with self._guard:
            return self._memo(policy).last_drill

    def last_successful_drill(self, policy: str) -> Drill | None:
        with self._guard:
            return self._memo(policy).last_good_drill

    def record_drill(self, policy: str, started_at: datetime, drill: Drill) -> None:
        with self._guard:
            memo = self._memo(policy)
            memo.last_drill = drill
            if drill.succeeded:
                memo.last_good_drill = drill
                memo.measured = Measurement(drill.duration_seconds or 0.0, started_at, drill.backup, "drill")

    def last_check(self, policy: str) -> RepositoryCheck | None:
        with self._guard:
            return self._memo(policy).last_check

    def record_check(self, policy: str, check: RepositoryCheck) -> None:
        with self._guard:
            self._memo(policy).last_check = check

    def copy_statuses(self, policy: str) -> list[CopyStatus]:
        with self._guard:
            return [c for _, c in sorted(self._memo(policy).copies.items())]

    def record_copy(self, policy: str, status: CopyStatus) -> None:
        with self._guard:
            self._memo(policy).copies[status.name] = status

    def last_measurement(self, policy: str) -> Measurement | None:
        with self._guard:
            return self._memo(policy).measured

    # --- State: restores ----------------------------------------------------------------------------
    def restore_status(self, request: str, spec_hash: str) -> RestoreRequestStatus | None:
        with self._guard:
            known = self._restores.get(request)
            return known.status if known is not None and known.spec_hash == spec_hash else None

    def record_restore(self, request: str, spec_hash: str, policy: str, status: RestoreRequestStatus) -> None:
        with self._guard:
            known = self._restores.get(request)
            generation = known.generation if known is not None else None
            self._restores[request] = _Restore(spec_hash, policy, status, generation)
            if status.phase == "Succeeded" and status.duration_seconds is not None and status.completed_at:
                self._memo(policy).measured = Measurement(status.duration_seconds, status.completed_at, status.backup,
                                                          "restore")
        namespace, name = split_key(request)
        self._patch("restorerequests", namespace, name, restore_patch(status, spec_hash=spec_hash,
                                                                      generation=generation))

    def interrupted_restores(self) -> list[tuple[str, str, str, RestoreRequestStatus]]:
        with self._guard:
            return [(key, r.spec_hash, r.policy, r.status) for key, r in self._restores.items()
                    if r.status.phase == "Running"]

    # --- State: the quiesce journal, in the policy's status -------------------------------------------
    def halted(self, policy: str, ref: ContainerRef, mode: str) -> None:
        entry = QuiescedContainer(container_id=ref.id, name=ref.name, mode=mode,  # type: ignore[arg-type]
                                  at=iso(datetime.now(UTC)) or "")
        with self._guard:
            memo = self._memo(policy)
            memo.quiesced = [q for q in memo.quiesced if q.container_id != ref.id] + [entry]
            self._write_journal(policy, memo)

    def resumed(self, ref: ContainerRef) -> None:
        with self._guard:
            for policy, memo in self._policies.items():
                if any(q.container_id == ref.id for q in memo.quiesced):
                    memo.quiesced = [q for q in memo.quiesced if q.container_id != ref.id]
                    self._write_journal(policy, memo)

    def halted_containers(self) -> list[Halted]:
        with self._guard:
            return [Halted(ContainerRef(q.container_id, q.name, "halted"), q.mode,
                           parse_time(q.at) or datetime.fromtimestamp(0, UTC), policy)
                    for policy, memo in self._policies.items() for q in memo.quiesced]

    def _write_journal(self, policy: str, memo: _Policy) -> None:
        namespace, name = split_key(policy)
        self._patch("backuppolicies", namespace, name, {"quiesced": [q.to_dict() for q in memo.quiesced]})
