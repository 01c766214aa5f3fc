"""What the job runner remembers between jobs, behind one small interface with one implementation per front end.

Standalone mode keeps it in SQLite (frontends/state.py); Kubernetes mode in the resources' status and
Backup resources (frontends/kubestate.py). Either way it is a cache of the repository, never the truth:
successful backups are read back from manifests, restore outcomes are also saved beside the backups.
Policies and requests are named by key: their name, or namespace/name in Kubernetes mode.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..api.policy import CopyStatus, Drill, RepositoryCheck
from ..api.restore import RestoreRequestStatus
from ..controller.status import Attempt, Measurement
from ..engine.core import ContainerRef
from ..engine.quiesce import Halted


class State(Protocol):
    # --- backups ---------------------------------------------------------------------------------
    def last_attempt(self, policy: str) -> Attempt | None: ...

    def record_attempt(self, policy: str, attempt: Attempt) -> None:
        """Remember a run (Running, then its outcome; one backup id keeps one row)."""

    def forget_attempt(self, policy: str, backup_id: str) -> None: ...

    # --- drills and measured restores --------------------------------------------------------------
    def last_drill(self, policy: str) -> Drill | None: ...

    def last_successful_drill(self, policy: str) -> Drill | None: ...

    def record_drill(self, policy: str, started_at: datetime, drill: Drill) -> None: ...

    def last_measurement(self, policy: str) -> Measurement | None:
        """The newest successful restore or drill of the policy: the RTO last achieved."""

    # --- repository checks (spec.check) ---------------------------------------------------------------
    def last_check(self, policy: str) -> RepositoryCheck | None: ...

    def record_check(self, policy: str, check: RepositoryCheck) -> None: ...

    # --- copies (3-2-1) ------------------------------------------------------------------------------
    def copy_statuses(self, policy: str) -> list[CopyStatus]: ...

    def record_copy(self, policy: str, status: CopyStatus) -> None:
        """Remember the last sync of one copy (one row per policy and copy name)."""

    # --- restores -----------------------------------------------------------------------------------
    def restore_status(self, request: str, spec_hash: str) -> RestoreRequestStatus | None: ...

    def record_restore(self, request: str, spec_hash: str, policy: str, status: RestoreRequestStatus) -> None: ...

    def interrupted_restores(self) -> list[tuple[str, str, str, RestoreRequestStatus]]:
        """(request, spec hash, policy, status) of restores left Running by a killed dockvault."""

    # --- the quiesce journal ------------------------------------------------------------------------
    def halted(self, policy: str, ref: ContainerRef, mode: str) -> None:
        """Durably note, before the engine is asked, that a job of `policy` pauses or stops `ref`."""

    def resumed(self, ref: ContainerRef) -> None: ...

    def halted_containers(self) -> list[Halted]: ...


class PolicyJournal:
    """The quiesce journal of one policy's job, as engine.quiesce wants it."""

    def __init__(self, state: State, policy: str) -> None:
        self._state = state
        self._policy = policy

    def halted(self, ref: ContainerRef, mode: str) -> None:
        self._state.halted(self._policy, ref, mode)

    def resumed(self, ref: ContainerRef) -> None:
        self._state.resumed(ref)
