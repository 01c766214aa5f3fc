"""The `dockvault` command: validate, run, backup, drill, check, get, describe, retention plan, crds."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional


import typer
from rich.console import Console

from . import __version__
from .engine.names import DEFAULT_HELPER_IMAGE, TRANSPORTS

if TYPE_CHECKING:  # the commands import what they use: `dockvault --help` must start fast
    from prometheus_client import CollectorRegistry

    from .api import BackupPolicy
    from .api.policy import BackupPolicyStatus
    from .frontends.httpserver import MetricsServer
    from .frontends.standalone import Controller
    from .frontends.state import StateStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Declarative backups for Docker hosts.")
get_app = typer.Typer(no_args_is_help=True, help="List policies, backups or restores.")
retention_app = typer.Typer(no_args_is_help=True, help="Inspect retention.")
describe_app = typer.Typer(no_args_is_help=True, help="Show one resource in detail.")
app.add_typer(get_app, name="get")
app.add_typer(retention_app, name="retention")
app.add_typer(describe_app, name="describe")

# Piped output is for scripts and grep: never wrap or cut it at 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, soft_wrap=True)


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/dockvault"
    return str(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "dockvault")


ConfigDir = Annotated[Path, typer.Option("--config-dir", "-c", envvar="DOCKVAULT_CONFIG_DIR",
                                         help="directory of BackupPolicy / RestoreRequest YAML files")]
StateDir = Annotated[Path, typer.Option("--state-dir", envvar="DOCKVAULT_STATE_DIR", help="where the SQLite state lives")]
HelperImage = Annotated[str, typer.Option("--helper-image", envvar="DOCKVAULT_HELPER_IMAGE",
                                          help="image with GNU tar and sh for helper containers")]
Output = Annotated[str, typer.Option("--output", "-o", help="table or json")]
LEVELS = ("full", "differential", "incremental")
MetricsAddr = Annotated[str, typer.Option("--metrics-addr", envvar="DOCKVAULT_METRICS_ADDR",
                                          help="serve /metrics, /healthz, /readyz here; 'off' to disable")]


def _serve_metrics(address: str, registry: CollectorRegistry, ready=lambda: True) -> MetricsServer | None:
    """Start the metrics server unless disabled; a bad or busy address is a clear error."""
    from .frontends.httpserver import MetricsServer
    if address in ("", "off"):
        return None
    server = MetricsServer(registry, address, ready=ready)
    try:
        server.start()
    except (OSError, ValueError) as exc:
        raise _fail(f"--metrics-addr: {exc}") from None
    logging.getLogger(__name__).info("serving metrics on http://%s/metrics", address)
    return server


def _setup_logging(verbose: bool = False) -> None:
    from .credentials import install_log_masking
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_masking()
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"dockvault {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True)] = None,
    transport: Annotated[Optional[str], typer.Option(
        "--transport", envvar="DOCKVAULT_TRANSPORT",
        help="how volume streams reach helper containers: auto (fifo when the engine shares dockvault's temp dir, "
             "else api), api (through the Docker API: remote engines), fifo (named pipes)")] = None,
) -> None:
    """dockvault backs up Docker volumes on schedule, prunes safely and restores on request."""
    if transport is not None:
        if transport not in TRANSPORTS:
            raise _fail(f"--transport {transport!r}: use one of {', '.join(TRANSPORTS)}", 2)
        os.environ["DOCKVAULT_TRANSPORT"] = transport  # read where the engine is made, here and in job threads


def _loaded() -> None:
    """The command's modules are imported: collect garbage again (see main). What exists now, mostly what the
    imports made, is frozen: left out of every later collection, as it lives as long as the process."""
    gc.freeze()
    gc.enable()


def _controller(config_dir: Path, state_dir: Path, helper_image: str, max_parallel: int = 2, host: str = "local") -> Controller:
    from .frontends.standalone import Controller
    from .engine.core import Engine
    from .frontends.state import StateStore
    _loaded()
    try:
        state = StateStore(state_dir)
    except (OSError, sqlite3.Error) as exc:
        full = state_dir.is_dir() and shutil.disk_usage(state_dir).free < (1 << 20)
        raise _fail(f"cannot use the state dir {state_dir}: {exc}" + ("; the disk is full: free some space" if full else "")) from None
    return Controller(config_dir=config_dir, state=state,
                      engine=lambda: Engine.from_env(helper_image=helper_image), max_parallel=max_parallel, host=host)


def _policy(config_dir: Path, name: str) -> BackupPolicy:
    from .frontends.standalone import load_config
    config = load_config(config_dir)
    policy = config.policy(name)
    if policy is None:
        problems = [str(e) for e in config.errors if e.name == name]
        hint = ("; " + "; ".join(problems)) if problems else ""
        raise _fail(f"no valid BackupPolicy {name!r} in {config_dir}{hint}")
    return policy


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(help="YAML files or directories")]) -> None:
    """Check resources; print every problem with file, resource and field, and exit non-zero on any."""
    from .api import load_paths
    result = load_paths(paths)
    for error in result.errors:
        out.print(str(error), highlight=False, markup=False)
    for warning in result.warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False)
    for item in result.items:
        err.print(f"{item.file}: {item.resource.kind} {item.resource.metadata.name}: ok", highlight=False, markup=False)
    if result.errors:
        raise typer.Exit(1)


@app.command()
def crds(directory: Annotated[Path, typer.Option("--out", help="where to write the CRD files")] = Path("crds")) -> None:
    """Regenerate the CustomResourceDefinitions from the models."""
    from .api.crd import write_crds

    for path in write_crds(directory):
        out.print(str(path))


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).warning("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


@app.command()
def run(
    config_dir: ConfigDir,
    state_dir: StateDir = Path(_default_state_dir()),
    once: Annotated[bool, typer.Option("--once", help="one reconcile pass, then exit (0 only if all succeeded)")] = False,
    max_parallel: Annotated[int, typer.Option("--max-parallel", min=1, help="jobs running at the same time")] = 2,
    helper_image: HelperImage = DEFAULT_HELPER_IMAGE,
    host: Annotated[str, typer.Option("--host", help="run only policies whose spec.host is this")] = "local",
    metrics_addr: MetricsAddr = "127.0.0.1:9477",
    verbose: bool = False,
) -> None:
    """Reconcile the config directory: scheduled backups, retention and restore requests."""
    from prometheus_client import CollectorRegistry
    from .metrics import DockvaultMetrics
    from .engine.core import EngineError
    from .frontends.state import StateLocked
    _setup_logging(verbose)
    controller = _controller(config_dir, state_dir, helper_image, max_parallel, host)
    server = None
    if not once:
        registry = CollectorRegistry()
        controller.metrics = DockvaultMetrics(registry, controller.facts)
        server = _serve_metrics(metrics_addr, registry, controller.ready.is_set)
    stop = threading.Event()
    _install_signal_handlers(stop)
    watcher = threading.Thread(target=lambda: (stop.wait(), controller.cancel.set()), daemon=True)
    watcher.start()
    try:
        if once:
            ok = controller.run_once()
            raise typer.Exit(0 if ok else 1)
        controller.serve(stop)
    except (EngineError, StateLocked) as exc:
        raise _fail(str(exc)) from None
    finally:
        controller.shutdown()
        if server is not None:
            server.stop()


@app.command()
def kube(
    host: Annotated[str, typer.Option("--host", help="serve only resources whose spec.host is this")] = "local",
    namespace: Annotated[Optional[list[str]], typer.Option("--namespace", "-n", help="watch only these namespaces")]
    = None,
    peering: Annotated[bool, typer.Option("--peering/--no-peering", help="one active instance per host")] = True,
    helper_image: HelperImage = DEFAULT_HELPER_IMAGE,
    metrics_addr: MetricsAddr = "127.0.0.1:9477",
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="seconds between two looks at each "
                                                                        "policy's schedule")] = 15.0,
    verbose: bool = False,
) -> None:
    """Kubernetes mode: reconcile BackupPolicy, RestoreRequest and Backup resources with kopf."""
    from prometheus_client import CollectorRegistry
    _setup_logging(verbose)
    try:
        from .frontends.kube import run_operator
    except ImportError as exc:
        raise _fail(f"Kubernetes mode needs the 'kube' extra (pip install 'dockvault[kube]'): {exc}") from None
    _loaded()
    registry = CollectorRegistry()  # the operator registers its exporter on it
    server = _serve_metrics(metrics_addr, registry)
    try:
        run_operator(host=host, namespaces=namespace or None, helper_image=helper_image, peering=peering,
                     registry=registry, interval=interval)
    finally:
        if server is not None:
            server.stop()


Wait = Annotated[float, typer.Option("--wait", min=0, help="seconds to wait while another job of the policy runs "
                                                            "(0: refuse at once)")]


@contextlib.contextmanager
def _foreground(controller: Controller, policy: str, what: str, wait: float) -> Iterator[None]:
    """One job run by hand, under the policy's job lock shared with `dockvault run`: SIGTERM and Ctrl-C cancel it
    cleanly, engine errors and a busy policy become messages."""
    from .engine.core import EngineError
    from .actions.locks import PolicyBusy
    prev = signal.signal(signal.SIGTERM, lambda *_: controller.cancel.set())
    try:
        with controller.runner.locks.acquire(policy, what, timeout=wait):
            yield
    except (EngineError, PolicyBusy) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        controller.cancel.set()
        raise _fail("interrupted", 130) from None
    finally:
        signal.signal(signal.SIGTERM, prev)
        controller.shutdown()


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(n)


def _age(when: str | datetime | None, now: datetime) -> str:
    from .controller.status import parse_time
    moment = parse_time(when) if isinstance(when, str) else when
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "in " + _age(now, moment)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command()
def backup(
    policy_name: Annotated[str, typer.Argument(metavar="POLICY")],
    config_dir: ConfigDir,
    state_dir: StateDir = Path(_default_state_dir()),
    helper_image: HelperImage = DEFAULT_HELPER_IMAGE,
    wait: Wait = 0,
    level: Annotated[str, typer.Option(
        "--level", help="volume targets: full, or only the changes since the last full (differential) or since the previous "
             "backup (incremental); without a usable base the run is a full and says so. Dumps are always full.",
    )] = "full",
) -> None:
    """Run one backup of POLICY now (with retention afterwards when it succeeds)."""
    if level not in LEVELS:
        raise _fail(f"--level {level!r}: use one of {', '.join(LEVELS)}", 2)
    _setup_logging()
    policy = _policy(config_dir, policy_name)
    controller = _controller(config_dir, state_dir, helper_image)
    with _foreground(controller, policy.name, "manual backup", wait):
        if err.is_terminal:
            from rich.progress import (DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                                       TransferSpeedColumn)
            columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), DownloadColumn(), TransferSpeedColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=err, transient=True) as bar:
                task = bar.add_task(f"backup {policy.name}", total=None)
                result = controller.runner.backup_now(policy.name, policy, progress=lambda n: bar.advance(task, n),
                                                      level=level)
        else:
            result = controller.runner.backup_now(policy.name, policy, level=level)
    outcome = result.backup
    if outcome is None or not result.succeeded:
        raise _fail(f"backup {policy.name}/{result.backup_id} failed: {result.message}")
    st, spec = outcome.record.status, outcome.record.spec
    chain = f" ({spec.level} on {spec.base})" if spec.base else f" ({spec.level})" if spec.level else ""
    out.print(f"backup {policy.name}/{outcome.record.id}{chain} succeeded: {_human(st.bytes)} in "
              f"{st.duration_seconds:.1f}s", highlight=False)
    if st.message:
        err.print(f"note: {st.message}", highlight=False)
    for artifact in st.artifacts:
        out.print(f"  {artifact.file}  {_human(artifact.bytes)}  sha256:{artifact.sha256}", highlight=False)
    if outcome.deleted:
        out.print(f"retention deleted: {', '.join(outcome.deleted)}", highlight=False)


@app.command()
def drill(
    ctx: typer.Context,
    policy_name: Annotated[str, typer.Argument(metavar="POLICY")],
    config_dir: ConfigDir,
    state_dir: StateDir = Path(_default_state_dir()),
    helper_image: HelperImage = DEFAULT_HELPER_IMAGE,
    wait: Wait = 0,
) -> None:
    """Run a restore drill now: restore the newest backup into throwaway resources, check it, measure the RTO."""
    if ctx.info_name == "verify":
        err.print("warning: `dockvault verify` is deprecated; use `dockvault drill`", highlight=False)
    _setup_logging()
    policy = _policy(config_dir, policy_name)
    controller = _controller(config_dir, state_dir, helper_image)
    with _foreground(controller, policy.name, "manual drill", wait):
        result = controller.runner.drill_now(policy.name, policy)
    if result.drill is None:
        raise _fail(f"drill of {policy.name} failed: {result.message}")
    v = result.drill.drill
    if not result.succeeded:
        raise _fail(f"drill of {policy.name} (backup {v.backup}) failed after {v.duration_seconds:.1f}s: {v.message}")
    out.print(f"drill of {policy.name} succeeded: backup {v.backup} restored and checked in {v.duration_seconds:.1f}s "
              f"(measured RTO)", highlight=False)
    out.print(f"  {v.message}", highlight=False, markup=False)


app.command("verify", hidden=True, deprecated=True, help="Deprecated name of `dockvault drill`.")(drill)


def _emit(rows: list[dict], columns: list[str], output: str) -> None:
    from rich.table import Table
    if output == "json":  # plain: rich's highlighting took 95% of the time to list 10,000 backups
        sys.stdout.write(json.dumps(rows, default=str, indent=2) + "\n")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(str(row.get(c, "-") if row.get(c) is not None else "-") for c in columns))
    out.print(table)


def _seconds(value: float | timedelta | None) -> str:
    from .api.common import format_duration
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return format_duration(timedelta(seconds=max(0, round(seconds)))) if seconds >= 1 else f"{seconds:.1f}s"


def _status(policy: BackupPolicy, state: StateStore, now: datetime) -> BackupPolicyStatus:
    """The policy's status now; conditions are remembered so their lastTransitionTime holds still."""
    from .controller.status import policy_status, unlisted_status
    from .credentials import mask
    from .storage import repository_for
    try:
        backups = repository_for(policy).backups(policy.name)
    except Exception as exc:  # noqa: BLE001 - one unreachable repository never hides the other policies
        return unlisted_status(policy, mask(str(exc)) or type(exc).__name__, state.last_attempt(policy.name), now=now,
                               previous=state.conditions(policy.name))
    status = policy_status(policy, backups, state.last_attempt(policy.name),
                           now=now, measured=state.last_measurement(policy.name),
                           drill=state.last_drill(policy.name), good_drill=state.last_successful_drill(policy.name),
                           previous=state.conditions(policy.name),
                           copies=state.copy_statuses(policy.name), check=state.last_check(policy.name))
    state.save_conditions(policy.name, status.conditions)
    return status


def _policy_rows(config_dir: Path, state: StateStore, now: datetime) -> list[dict]:
    from .api import BackupPolicy
    from .frontends.standalone import load_config
    rows = []
    config = load_config(config_dir)
    for name, item in sorted(config.policies.items()):
        policy: BackupPolicy = item.resource  # type: ignore[assignment]
        status = _status(policy, state, now)
        ready = status.conditions[0]
        last_ok = status.last_successful_backup
        objectives = policy.spec.objectives
        rows.append({
            "NAME": name, "READY": ready.status, "REASON": ready.reason,
            "LAST SUCCESS": _age(last_ok.completed_at, now) if last_ok else None,
            "LAST BACKUP": f"{status.last_backup.id} {status.last_backup.phase}" if status.last_backup else None,
            "NEXT RUN": _age(status.next_backup_at, now) if status.next_backup_at else None,
            "BACKUPS": status.backups,
            "RPO AGE / TARGET": f"{_seconds(status.rpo_age_seconds)} / {_seconds(objectives.rpo)}",
            "LAST RTO / TARGET": f"{_seconds(status.measured_rto.seconds if status.measured_rto else None)} / "
                                 f"{_seconds(objectives.rto)}",
            "FILE": item.file,
            "status": status.to_dict(),
        })
    for error in config.errors:
        if error.kind == "BackupPolicy":
            rows.append({"NAME": error.name or "?", "READY": "False", "REASON": "InvalidSpec", "FILE": error.file,
                         "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                                    "message": str(error)}]}})
    return rows


@get_app.command("policies")
def get_policies(config_dir: ConfigDir, state_dir: StateDir = Path(_default_state_dir()), output: Output = "table") -> None:
    """NAME, READY, LAST SUCCESS, NEXT RUN, BACKUPS for every policy."""
    from .frontends.state import StateStore
    rows = _policy_rows(config_dir, StateStore(state_dir), datetime.now(UTC))
    columns = ["NAME", "READY", "REASON", "LAST SUCCESS", "NEXT RUN", "BACKUPS", "RPO AGE / TARGET", "LAST RTO / TARGET"]
    _emit(rows if output != "table" else [{k: v for k, v in r.items() if k != "status"} for r in rows], columns, output)


@get_app.command("backups")
def get_backups(
    config_dir: ConfigDir,
    policy_name: Annotated[Optional[str], typer.Option("--policy", "-p")] = None,
    output: Output = "table",
) -> None:
    """Every backup in the policies' repositories, read from the manifests; a damaged one (manifest unreadable
    or missing, an artifact missing or of the wrong size) is listed as such, never hidden."""
    from .actions.check import MANIFEST_DAMAGE, check_repository
    from .frontends.standalone import load_config
    from .storage import repository_for
    now = datetime.now(UTC)
    rows = []
    for name, item in sorted(load_config(config_dir).policies.items()):
        if policy_name and name != policy_name:
            continue
        repository = repository_for(item.resource)  # type: ignore[arg-type]
        listed, stored = repository.listing(name)
        records = {record.id: record for record in listed}
        damage: dict[str, list[str]] = {}
        for d in check_repository(name, repository, backups=listed, stored=stored).damage:
            damage.setdefault(d.backup_id, []).append(d.problem if d.artifact == MANIFEST_DAMAGE
                                                      else f"{d.artifact}: {d.problem}")
        for backup_id in sorted(records.keys() | damage.keys()):
            record, problems = records.get(backup_id), damage.get(backup_id, [])
            if record is None:
                rows.append({"POLICY": name, "ID": backup_id, "PHASE": "Damaged", "DAMAGE": "; ".join(problems)}
                            if output == "table" else {"policy": name, "id": backup_id, "phase": "Damaged",
                                                       "damage": problems})
                continue
            st = record.status
            row = {"POLICY": name, "ID": record.id, "PHASE": "Damaged" if problems else st.phase,
                   "TRIGGER": record.spec.trigger,
                   "LEVEL": record.level, "BASE": record.base, "SIZE": _human(st.bytes), "DURATION": f"{st.duration_seconds:.1f}s", "AGE": _age(st.completed_at, now),
                   "TARGETS": ",".join(a.target for a in st.artifacts), "DAMAGE": "; ".join(problems) or None}
            rows.append(row if output == "table" else {**record.to_dict(), **({"damage": problems} if problems else {})})
    _emit(rows, ["POLICY", "ID", "PHASE", "TRIGGER", "LEVEL", "BASE", "SIZE", "DURATION", "AGE", "TARGETS", "DAMAGE"],
          output)


def _subset(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        percent = float(value.strip().removesuffix("%"))
    except ValueError:
        percent = -1.0
    if not 0 < percent <= 100:
        raise _fail(f"--subset {value!r}: give a percentage greater than 0 and at most 100, e.g. 10%", 2)
    return percent


@app.command()
def check(
    config_dir: ConfigDir,
    policy_name: Annotated[Optional[str], typer.Argument(metavar="POLICY", help="the policy to check")] = None,
    every: Annotated[bool, typer.Option("--all", help="check every policy in the config directory")] = False,
    read_data: Annotated[bool, typer.Option("--read-data", help="also read every artifact back and compare its "
                                                                "sha256 with the manifest")] = False,
    subset: Annotated[Optional[str], typer.Option("--subset", metavar="N%", help="with --read-data: read a random "
                                                  "N% of the artifacts (a fresh sample each run)")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="the sample's seed, to read the same one again")] = None,
    output: Output = "table",
) -> None:
    """Check a policy's repository and copies: every manifest readable, every artifact present with its recorded
    size, and with --read-data its sha256 intact. Exit 1 when anything is damaged."""
    from .actions.check import check_policy
    from .frontends.standalone import load_config
    from .storage import repository_for
    _loaded()  # --read-data may read for hours
    if (policy_name is None) == (not every):
        raise _fail("name one POLICY or give --all", 2)
    if subset is not None and not read_data:
        raise _fail("--subset needs --read-data", 2)
    percent = _subset(subset)
    config = load_config(config_dir)
    names = [_policy(config_dir, policy_name).name] if policy_name else sorted(config.policies)
    reports = []
    for name in names:
        policy = config.policy(name)
        reports += check_policy(policy, repository_for(policy), read_data=read_data, subset=percent, seed=seed)
    if output == "json":
        out.print_json(json.dumps([{**report.__dict__, "damage": [d.__dict__ for d in report.damage], "ok": report.ok}
                                   for report in reports], default=str))
    else:
        _emit([{"POLICY": r.policy, "REPOSITORY": r.repository, "BACKUPS": r.backups, "ARTIFACTS": r.artifacts,
                "READ": f"{r.read} ({_human(r.bytes_read)})" if r.read_data else "-",
                "DAMAGED": len(r.damaged_backups), "RESULT": "ok" if r.ok else r.error or "damaged",
                "TIME": f"{r.seconds:.1f}s"} for r in reports],
              ["POLICY", "REPOSITORY", "BACKUPS", "ARTIFACTS", "READ", "DAMAGED", "RESULT", "TIME"], output)
        damage = [{"POLICY": r.policy, "REPOSITORY": r.repository, "BACKUP": d.backup_id, "ARTIFACT": d.artifact,
                   "PROBLEM": d.problem} for r in reports for d in r.damage]
        if damage:
            out.print()
            _emit(damage, ["POLICY", "REPOSITORY", "BACKUP", "ARTIFACT", "PROBLEM"], output)
        if percent is not None and reports:
            out.print(f"read a random {percent:g}% of the intact artifacts (--seed {reports[0].seed} reads the same "
                      f"sample)", highlight=False)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@get_app.command("restores")
def get_restores(config_dir: ConfigDir, state_dir: StateDir = Path(_default_state_dir()), output: Output = "table") -> None:
    """Every RestoreRequest in the config directory with its recorded outcome."""
    from .frontends.state import StateStore
    from .frontends.standalone import load_config
    state = StateStore(state_dir)
    now = datetime.now(UTC)
    rows = []
    for name, item in sorted(load_config(config_dir).restores.items()):
        request = item.resource
        status = state.restore_status(request.name, request.spec_hash)  # type: ignore[union-attr]
        phase = status.phase if status else "Pending"
        rows.append({"NAME": name, "POLICY": request.spec.policy, "PHASE": phase,  # type: ignore[union-attr]
                     "BACKUP": status.backup if status else None,
                     "DURATION": f"{status.duration_seconds:.1f}s" if status and status.duration_seconds else None,
                     "AGE": _age(status.completed_at, now) if status and status.completed_at else None,
                     "MESSAGE": status.message if status else None,
                     "status": status.to_dict() if status else {"phase": "Pending"}})
    _emit(rows if output != "table" else [{k: v for k, v in r.items() if k != "status"} for r in rows],
          ["NAME", "POLICY", "PHASE", "BACKUP", "DURATION", "AGE", "MESSAGE"], output)


@describe_app.command("policy")
def describe_policy(name: str, config_dir: ConfigDir, state_dir: StateDir = Path(_default_state_dir())) -> None:
    """The policy's spec, computed status and recent runs."""
    from .frontends.state import StateStore
    import yaml

    policy = _policy(config_dir, name)
    state = StateStore(state_dir)
    now = datetime.now(UTC)
    status = _status(policy, state, now)
    document = policy.model_copy(update={"status": status}).to_dict()
    out.print(yaml.safe_dump(document, sort_keys=False), highlight=False)
    out.print("Recent runs:", style="bold")
    for backup_id, phase, started, message in state.attempts(name)[-10:]:
        out.print(f"  {backup_id}  {phase:<9}  {started}  {message or ''}", highlight=False)


@retention_app.command("plan")
def retention_plan(
    policy_name: Annotated[str, typer.Argument(metavar="POLICY")], config_dir: ConfigDir, output: Output = "table"
) -> None:
    """What retention would keep and delete now, with the reasons; deletes nothing."""
    from .controller.retention import plan_retention
    from .storage import repository_for
    policy = _policy(config_dir, policy_name)
    backups = [b for b in repository_for(policy).backups(policy.name) if b.spec.host == policy.spec.host]
    plan = plan_retention(backups, policy.spec.retention, now=datetime.now(UTC), tz=policy.spec.timezone)
    by_id = {b.id: b for b in backups}
    rows = [{"BACKUP": d.backup_id, "LEVEL": by_id[d.backup_id].level, "CHAIN": _chain_text(by_id[d.backup_id], by_id),
             "ACTION": "ignore" if d.ignored else "keep" if d.keep else "delete",
             "REASONS": ", ".join(d.reasons)} for d in plan.decisions]
    _emit(rows, ["BACKUP", "LEVEL", "CHAIN", "ACTION", "REASONS"], output)
    if output == "table":
        out.print(f"{len(plan.keep)} to keep, {len(plan.delete)} to delete", highlight=False)


def _chain_text(backup, by_id) -> str:
    """The backups a restore of `backup` reads, full first ("-" for a plain full)."""
    from .controller.chains import BrokenChain, chain_of
    if backup.base is None:
        return "-"
    try:
        return " <- ".join(link.id for link in chain_of(backup, by_id))
    except BrokenChain:
        return f"BROKEN (base {backup.base} missing)"


def main() -> None:
    """The console script."""
    # Start-up: the collector is paused while the command imports what it needs. The imports make tens of
    # thousands of objects that live as long as the process, and the collections they would set off cost 40-50 ms
    # of every one-shot backup here. The commands that run jobs or may run long (run, kube, backup, drill, check)
    # turn it back on once their modules are in (_loaded); the short listings (validate, crds, get, describe,
    # retention plan) end with it paused.
    collecting = gc.isenabled()
    gc.disable()
    try:
        app()
    finally:
        # Python's shutdown runs full garbage collections over every object the imports made (pydantic's schemas,
        # the Docker SDK, rich): 0.1 s of CPU per command, after its work is done. Frozen objects are left out of
        # them; the rest of the shutdown (atexit, thread joins, flushes, finalizers) runs as before.
        gc.freeze()
        if collecting:
            gc.enable()
