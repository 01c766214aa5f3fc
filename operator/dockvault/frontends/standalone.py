"""Standalone mode: resources from a directory of YAML files, status in a local SQLite store.

The directory is watched; added, changed and removed files apply without restart. A bad file is
reported and skipped, and every other policy keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..actions.locks import JobLocks
from ..actions.runner import JobRunner, Resources
from ..api import BackupPolicy, RestoreRequest
from ..api.loader import Loaded, ResourceError, load_paths
from ..engine.core import Engine
from ..controller.facts import PolicyFacts
from .state import StateStore

if TYPE_CHECKING:
    from ..metrics import DockvaultMetrics  # only `dockvault run` serves metrics: the one-shot commands never load them

log = logging.getLogger(__name__)


@dataclass
class Config:
    policies: dict[str, Loaded] = field(default_factory=dict)
    restores: dict[str, Loaded] = field(default_factory=dict)
    errors: list[ResourceError] = field(default_factory=list)
    warnings: list[ResourceError] = field(default_factory=list)

    def policy(self, name: str) -> BackupPolicy | None:
        item = self.policies.get(name)
        return item.resource if item else None  # type: ignore[return-value]


def load_config(config_dir: Path) -> Config:
    """Every resource in the directory; duplicates and foreign kinds become errors naming both files."""
    loaded = load_paths([config_dir])
    config = Config(errors=list(loaded.errors), warnings=list(loaded.warnings))
    for item in loaded.items:
        resource = item.resource
        if isinstance(resource, BackupPolicy):
            table = config.policies
        elif isinstance(resource, RestoreRequest):
            table = config.restores
        else:
            config.errors.append(ResourceError(item.file, resource.kind, resource.metadata.name, "kind",
                                               "Backup records live in the repository, not in the config directory"))
            continue
        if resource.name in table:
            config.errors.append(ResourceError(item.file, resource.kind, resource.name, "metadata.name",
                                               f"duplicate name; already defined in {table[resource.name].file}"))
            continue
        table[resource.name] = item
    return config


class Controller:
    """Standalone wiring: the config directory in, the SQLite state and logs out; the job runner does the rest."""

    def __init__(
        self,
        *,
        config_dir: Path,
        state: StateStore,
        engine: Callable[[], Engine],
        max_parallel: int = 2,
        host: str = "local",
        metrics: DockvaultMetrics | None = None,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.state = state
        self.host = host
        self.runner = JobRunner(state=state, engine=engine, locks=JobLocks(state.directory), max_parallel=max_parallel)
        self.cancel = self.runner.cancel
        self.config = Config()
        self._seen_errors: set[str] = set()
        self.ready = threading.Event()

    @property
    def metrics(self) -> DockvaultMetrics | None:
        return self.runner.metrics

    @metrics.setter
    def metrics(self, value: DockvaultMetrics | None) -> None:
        self.runner.metrics = value

    def facts(self) -> list[PolicyFacts]:
        return self.runner.facts()

    def resources(self) -> Resources:
        """This host's policies to run; the restores this host performs (spec.host, by default the policy's host);
        other hosts' policies only as sources of those restores (migration between hosts)."""
        every: dict[str, BackupPolicy] = {name: item.resource for name, item in self.config.policies.items()}  # type: ignore[misc]
        mine = {name: policy for name, policy in every.items() if policy.spec.host == self.host}
        restores = {}
        for name, item in self.config.restores.items():
            request: RestoreRequest = item.resource  # type: ignore[assignment]
            policy = every.get(request.spec.policy)
            if policy is not None and (request.spec.host or policy.spec.host) == self.host:
                restores[name] = (request, request.spec.policy)
        return Resources(mine, restores, {n: p for n, p in every.items() if n not in mine})

    # --- configuration -------------------------------------------------------------------------
    def reload(self, *, refresh: bool = True) -> Config:
        """Load the config directory again and log what changed; `refresh` the metrics facts of its policies."""
        old = self.config
        self.config = new = load_config(self.config_dir)
        messages = {f"invalid resource, skipped: {e}" for e in new.errors}
        for request in new.restores.values():
            wanted = request.resource.spec.policy  # type: ignore[union-attr]
            if wanted not in new.policies:
                messages.add(f"restore {request.resource.name} waits: policy {wanted!r} is not loaded")
        for message in sorted(messages - self._seen_errors):
            log.error("%s", message)
        warnings = {str(w) for w in new.warnings}
        for message in sorted(warnings - self._seen_errors):
            log.warning("%s", message)
        self._seen_errors = messages | warnings
        resources = self.resources()
        if self.metrics is not None:
            for policy in resources.policies.values():
                self.metrics.policy_seen(policy.name, policy.spec.host, [t.name for t in policy.spec.targets])
        if refresh:
            self.runner.refresh_all(resources)
        for kind, before, after in (("policy", old.policies, new.policies), ("restore", old.restores, new.restores)):
            for name in sorted(after.keys() - before.keys()):
                log.info("%s %s added (%s)", kind, name, after[name].file)
            for name in sorted(before.keys() - after.keys()):
                log.info("%s %s removed", kind, name)
            for name in sorted(after.keys() & before.keys()):
                if after[name].resource != before[name].resource:
                    log.info("%s %s changed (%s)", kind, name, after[name].file)
        return new

    def startup(self) -> None:
        """Take the state dir, load the config, recover what a killed dockvault left, rebuild the cache."""
        self.state.lock()
        self.reload(refresh=False)  # the repositories are listed once, after the recovery
        resources = self.resources()
        busy = self.runner.recover(resources)
        # Helpers of any policy the config names may belong to a live job of another process (or host) on this engine.
        removed = self.runner.engine.remove_leftovers(spare=frozenset(resources.policies) | frozenset(resources.others))
        if removed:
            log.warning("removed %d leftover helper(s) of unknown policies: %s", len(removed), ", ".join(removed))
        for name, backups in self.runner.refresh_all(resources).items():
            if name not in busy and backups is not None:
                self.state.sync_backups(name, backups)
        self.ready.set()

    # --- serving -------------------------------------------------------------------------------
    def run_once(self) -> bool:
        """One reconcile pass; True only when the config was valid and every job succeeded."""
        self.startup()
        ok = not self.config.errors
        for request in self.config.restores.values():
            if request.resource.spec.policy not in self.config.policies:  # type: ignore[union-attr]
                ok = False
        return self.runner.run_pass(self.resources()) and ok

    def serve(self, stop: threading.Event, *, tick: float = 1.0, facts_every: float = 5.0) -> None:
        """Watch the config directory and dispatch due jobs every tick until `stop` is set.

        Facts are also re-read every `facts_every` seconds: a `dockvault backup` run by hand in another
        process must show in the metrics without waiting for this process's next job.
        """
        from watchfiles import watch

        self.startup()
        self.runner.dispatch(self.resources())
        refreshed = time.monotonic()
        for changes in watch(self.config_dir, stop_event=stop, yield_on_timeout=True, rust_timeout=int(tick * 1000)):
            if changes:
                self.reload()
            elif time.monotonic() - refreshed >= facts_every:
                self.runner.refresh_all(self.resources())
                refreshed = time.monotonic()
            self.runner.dispatch(self.resources())

    def shutdown(self) -> None:
        self.runner.shutdown()
