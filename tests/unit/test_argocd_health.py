"""The Argo CD health checks in deploy/argocd/*.lua, run in real Lua (lupa) against sample objects.

Argo CD runs custom health checks in gopher-lua (Lua 5.1) with only the base and table libraries (no string,
math or io unless `resource.customizations.useOpenLibs` is set). Every script runs here in Lua 5.1 and 5.4 in
such a sandbox, the object converted the way Argo CD converts JSON (maps to tables, lists to 1-based tables,
null to absent). One test asserts that the cases below run every line of every script.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from dockvault.api import API_VERSION, BackupPolicy, RestoreRequestStatus
from dockvault.controller.status import Attempt, Measurement, policy_status
from tests.unit.builders import backup, policy_doc, restore_doc, utc

lupa = pytest.importorskip("lupa")

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "deploy" / "argocd"
POLICY, RESTORE, BACKUP = "backuppolicy-health.lua", "restorerequest-health.lua", "backup-health.lua"
# Argo CD's health.HealthStatusCode values a script may return.
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
LUA_VERSIONS = ["lua51", "lua54"]  # lua51: the dialect of gopher-lua, which Argo CD embeds

# Defined before the sandbox closes, so it keeps `debug` and `load` for itself: runs one script with the global
# `obj` like Argo CD does and, when asked, records the lines run and the lines that could run.
_RUNNER = """
local debug, load, loadstring, pcall, error = debug, load, loadstring, pcall, error
local compile = loadstring or load
return function(src, name, obj, cover)
  local chunk, err = compile(src, "=" .. name)
  if chunk == nil then error(err) end
  local hits, active = {}, {}
  if cover then
    debug.sethook(function(_, line)
      local info = debug.getinfo(2, "SL")
      if info.source == "=" .. name then
        hits[line] = true
        for l in pairs(info.activelines) do active[l] = true end
      end
    end, "l")
  end
  _G.obj = obj
  local ok, hs = pcall(chunk)
  if cover then debug.sethook() end
  _G.obj = nil
  if not ok then error(hs) end
  return hs, hits, active
end
"""
# What Argo CD does not open for custom checks; the string metatable goes too, so "s":find() fails as well.
_SANDBOX = 'string = nil; math = nil; io = nil; os = nil; debug = nil; getmetatable("").__index = nil'


def script(name: str) -> str:
    return (ARGOCD / name).read_text(encoding="utf-8")


def runtime(version: str) -> Any:
    module = pytest.importorskip(f"lupa.{version}")
    lua = module.LuaRuntime(unpack_returned_tuples=True)
    runner = lua.execute(_RUNNER)
    lua.execute(_SANDBOX)
    return lua, runner


def to_lua(lua: Any, value: Any) -> Any:
    """A JSON-like Python value as Argo CD hands it to Lua: dicts and lists become tables, lists 1-based."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:  # a JSON null is an absent field in Lua
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, (list, tuple)):
        return lua.table(*[to_lua(lua, item) for item in value])
    return value


def run(name: str, obj: dict[str, Any], version: str = "lua51", *, cover: dict[str, set[int]] | None = None
        ) -> tuple[str, str]:
    """(hs.status, hs.message) of script `name` for `obj`."""
    lua, runner = runtime(version)
    hs, hits, active = runner(script(name), name, to_lua(lua, obj), cover is not None)
    result = dict(hs.items())
    assert set(result) == {"status", "message"}, result
    assert result["status"] in ARGO_STATUSES
    assert isinstance(result["message"], str) and result["message"]
    if cover is not None:
        cover.setdefault(f"{name} run", set()).update(hits.keys())
        cover.setdefault(f"{name} active", set()).update(active.keys())
    return result["status"], result["message"]


@pytest.fixture(params=LUA_VERSIONS)
def lua_version(request: pytest.FixtureRequest) -> str:
    return request.param


# --- sample objects --------------------------------------------------------------------------------------------------


def cond(type_: str, status: str, reason: str | None = None, message: str | None = None, **extra: Any
         ) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-21T12:00:00Z", **extra}


def policy_obj(*conditions: dict[str, Any], generation: Any = 3, observed: Any = 3, suspend: bool | None = None,
               status: bool = True, **status_fields: Any) -> dict[str, Any]:
    """A BackupPolicy as the API server returns it; observed=None leaves status.observedGeneration out."""
    doc = policy_doc(suspend=suspend)
    doc["metadata"].update(generation=generation, uid="0b6c5d1e", resourceVersion="4711")
    if status:
        doc["status"] = {"observedGeneration": observed, "conditions": list(conditions), "backups": 3,
                         "nextBackupAt": "2026-11-22T18:00:00Z", **status_fields}
    return doc


READY_OK = cond("Ready", "True", "BackupSucceeded", "last successful backup 20261121T180000Z")
READY_SUSPENDED = cond("Ready", "True", "Suspended", "last successful backup 20261121T180000Z")
NO_BACKUP_YET = cond("Ready", "Unknown", "NoBackupYet", "no backup has completed yet")
RUNNING = cond("Ready", "Unknown", "BackupRunning", "backup 20261122T180000Z running")
FAILED = cond("Ready", "False", "BackupFailed", "tar of volume 'mydata' failed with exit code 2")
INVALID = cond("Ready", "False", "InvalidSpec",
               "spec.targets[0].volume.name: 'my data' is not a valid Docker volume name")
RPO_OK = cond("RPOMet", "True", "WithinRPO", "newest good backup 20261121T180000Z is 3h old (RPO 1d)")
RPO_BREACHED = cond("RPOMet", "False", "RPOBreached", "newest good backup 20261119T180000Z is 2d 3h old (RPO 1d)")
KUBE_READY_BREACHED = {**RPO_BREACHED, "type": "Ready"}
RPO_NONE_YET = cond("RPOMet", "False", "NoSuccessfulBackup", "no successful backup yet (RPO 1d)")
RPO_NO_OBJECTIVE = cond("RPOMet", "Unknown", "NoObjective", "spec.objectives.rpo is not set")
RTO_BREACHED = cond("RTOMet", "False", "RTOBreached", "last drill took 45m (RTO 30m)")

WAIT = "Waiting for the operator to observe the policy"
SUSPENDED = "Backups are suspended (spec.suspend: true)"

POLICY_CASES = [
    # (object, status, message)
    pytest.param(policy_obj(status=False), "Progressing", WAIT, id="no-status"),
    pytest.param({**policy_obj(status=False), "status": {}}, "Progressing", WAIT, id="empty-status"),
    pytest.param(policy_obj(READY_OK, RPO_OK, observed=None), "Progressing", WAIT, id="no-observedGeneration"),
    pytest.param(policy_obj(READY_OK, RPO_OK, generation=4, observed=3), "Progressing",
                 "Waiting for the operator to observe generation 4 (observed 3)", id="stale-observedGeneration"),
    pytest.param(policy_obj(INVALID, RPO_OK, generation=5, observed=4), "Progressing",
                 "Waiting for the operator to observe generation 5 (observed 4)", id="stale-wins-over-invalid"),
    pytest.param(policy_obj(READY_OK, RPO_OK, suspend=True, generation=2, observed=1), "Progressing",
                 "Waiting for the operator to observe generation 2 (observed 1)", id="stale-wins-over-suspend"),
    pytest.param(policy_obj(READY_OK, RPO_OK, generation=None, observed=1), "Healthy",
                 "WithinRPO: newest good backup 20261121T180000Z is 3h old (RPO 1d)", id="no-metadata-generation"),
    pytest.param(policy_obj(), "Progressing", "Waiting for the Ready condition", id="empty-conditions"),
    pytest.param({**policy_obj(status=False), "status": {"observedGeneration": 3}}, "Progressing",
                 "Waiting for the Ready condition", id="no-conditions-field"),
    pytest.param(policy_obj(RPO_OK), "Progressing", "Waiting for the Ready condition", id="ready-missing"),
    pytest.param(policy_obj(NO_BACKUP_YET, RPO_NONE_YET), "Progressing",
                 "NoBackupYet: no backup has completed yet", id="ready-unknown-no-backup-yet"),
    pytest.param(policy_obj(RUNNING, RPO_OK), "Progressing", "BackupRunning: backup 20261122T180000Z running",
                 id="ready-unknown-backup-running"),
    pytest.param(policy_obj(cond("Ready", "Unknown")), "Progressing", "Ready=Unknown", id="ready-unknown-bare"),
    pytest.param(policy_obj(READY_OK, RPO_BREACHED), "Degraded",
                 "RPOBreached: newest good backup 20261119T180000Z is 2d 3h old (RPO 1d)", id="ready-true-rpo-false"),
    pytest.param(policy_obj(READY_OK, RPO_OK), "Healthy",
                 "WithinRPO: newest good backup 20261121T180000Z is 3h old (RPO 1d)", id="ready-true-rpo-true"),
    pytest.param(policy_obj(RPO_OK, RTO_BREACHED, READY_OK), "Healthy",
                 "WithinRPO: newest good backup 20261121T180000Z is 3h old (RPO 1d)", id="any-order-rto-ignored"),
    pytest.param(policy_obj(READY_OK), "Progressing", "Waiting for the RPOMet condition", id="rpo-missing"),
    pytest.param(policy_obj(READY_OK, cond("RPOMet", "Unknown", "Measuring", "")), "Progressing", "Measuring",
                 id="rpo-unknown"),
    pytest.param(policy_obj(READY_OK, RPO_NO_OBJECTIVE), "Healthy",
                 "BackupSucceeded: last successful backup 20261121T180000Z (no RPO objective set)",
                 id="rpo-no-objective"),
    pytest.param(policy_obj(INVALID), "Degraded",
                 "InvalidSpec: spec.targets[0].volume.name: 'my data' is not a valid Docker volume name",
                 id="invalid-spec"),
    pytest.param(policy_obj(FAILED, RPO_OK), "Degraded", "BackupFailed: tar of volume 'mydata' failed with exit code 2",
                 id="backup-failed"),
    pytest.param(policy_obj(cond("Ready", "False", "BackupFailed")), "Degraded", "BackupFailed",
                 id="ready-false-no-message"),
    pytest.param(policy_obj(cond("Ready", "False", "", "")), "Degraded", "Ready=False", id="ready-false-bare"),
    pytest.param(policy_obj(READY_SUSPENDED, RPO_OK, suspend=True), "Suspended", SUSPENDED, id="suspended"),
    pytest.param(policy_obj(READY_SUSPENDED, RPO_BREACHED, suspend=True), "Suspended",
                 f"{SUSPENDED}; RPOBreached: newest good backup 20261119T180000Z is 2d 3h old (RPO 1d)",
                 id="suspended-rpo-breached"),
    pytest.param(policy_obj(NO_BACKUP_YET, RPO_NONE_YET, suspend=True), "Suspended",
                 f"{SUSPENDED}; NoSuccessfulBackup: no successful backup yet (RPO 1d)", id="suspended-never-ran"),
    pytest.param(policy_obj(INVALID, suspend=True), "Degraded",
                 "InvalidSpec: spec.targets[0].volume.name: 'my data' is not a valid Docker volume name",
                 id="suspended-invalid-spec"),
    pytest.param(policy_obj(FAILED, RPO_BREACHED, suspend=True), "Degraded",
                 "BackupFailed: tar of volume 'mydata' failed with exit code 2", id="suspended-backup-failed"),
    # Kubernetes mode (frontends/kube.py kube_ready) demotes Ready to RPOMet's reason and message on a missed RPO.
    pytest.param(policy_obj(KUBE_READY_BREACHED, RPO_BREACHED), "Degraded",
                 "RPOBreached: newest good backup 20261119T180000Z is 2d 3h old (RPO 1d)", id="kube-ready-demoted"),
    pytest.param(policy_obj(KUBE_READY_BREACHED, RPO_BREACHED, suspend=True), "Suspended",
                 f"{SUSPENDED}; RPOBreached: newest good backup 20261119T180000Z is 2d 3h old (RPO 1d)",
                 id="kube-ready-demoted-suspended"),
    pytest.param(policy_obj(cond("Ready", "False", "BackupFailed", "exit 2"), RPO_BREACHED, suspend=True), "Degraded",
                 "BackupFailed: exit 2", id="failed-and-rpo-breached-suspended"),
    pytest.param(policy_obj(READY_OK, RPO_OK, suspend=False), "Healthy",
                 "WithinRPO: newest good backup 20261121T180000Z is 3h old (RPO 1d)", id="suspend-false"),
]


def restore_obj(status: dict[str, Any] | None) -> dict[str, Any]:
    doc = restore_doc()
    doc["metadata"].update(generation=1, uid="7f3e", resourceVersion="99")
    if status is not None:
        doc["status"] = status
    return doc


T0, T1 = "2026-11-21T12:00:00Z", "2026-11-21T12:03:30Z"
RESTORE_CASES = [
    pytest.param(restore_obj(None), "Progressing", "Waiting for the restore to start", id="no-status"),
    pytest.param(restore_obj({}), "Progressing", "Waiting for the restore to start", id="no-phase"),
    pytest.param(restore_obj({"phase": "Pending"}), "Progressing", "Waiting for the restore to start", id="pending"),
    pytest.param(restore_obj({"phase": "Pending", "message": "waiting for backup 20261121T180000Z to finish"}),
                 "Progressing", "waiting for backup 20261121T180000Z to finish", id="pending-message"),
    pytest.param(restore_obj({"phase": "Running", "startedAt": T0}), "Progressing", "Restoring", id="running"),
    pytest.param(restore_obj({"phase": "Running", "startedAt": T0, "backup": "20261121T180000Z"}), "Progressing",
                 "Restoring from backup 20261121T180000Z", id="running-backup"),
    pytest.param(restore_obj({"phase": "Running", "backup": "20261121T180000Z", "message": "target media: 40%"}),
                 "Progressing", "target media: 40%", id="running-message"),
    pytest.param(restore_obj({"phase": "Succeeded", "backup": "20261121T180000Z", "startedAt": T0,
                              "completedAt": T1, "durationSeconds": 210.5,
                              "message": "restored 1 target(s) from backup 20261121T180000Z"}),
                 "Healthy", "restored 1 target(s) from backup 20261121T180000Z", id="succeeded"),
    pytest.param(restore_obj({"phase": "Succeeded", "backup": "20261121T180000Z", "message": ""}), "Healthy",
                 "Restored from backup 20261121T180000Z", id="succeeded-no-message"),
    pytest.param(restore_obj({"phase": "Succeeded", "backup": ""}), "Healthy", "Restored", id="succeeded-bare"),
    pytest.param(restore_obj({"phase": "Failed", "startedAt": T0, "completedAt": T1,
                              "message": "no backup of policy 'myapp' before 2026-11-20T00:00:00Z"}),
                 "Degraded", "no backup of policy 'myapp' before 2026-11-20T00:00:00Z", id="failed"),
    pytest.param(restore_obj({"phase": "Failed"}), "Degraded", "Restore failed", id="failed-no-message"),
    pytest.param(restore_obj({"phase": "Cancelled"}), "Unknown", "Unknown restore phase Cancelled",
                 id="unknown-phase"),
]


def backup_obj(status: dict[str, Any] | None, *, spec_id: bool = True) -> dict[str, Any]:
    doc = {"apiVersion": API_VERSION, "kind": "Backup",
           "metadata": {"name": "myapp-20261121t180000z", "generation": 1},
           "spec": {"policy": "myapp", "id": "20261121T180000Z", "trigger": "schedule"}}
    if not spec_id:
        del doc["spec"]["id"]
    if status is not None:
        doc["status"] = status
    return doc


BACKUP_CASES = [
    pytest.param(backup_obj(None), "Progressing", "Waiting for backup 20261121T180000Z to start", id="no-status"),
    pytest.param(backup_obj({"startedAt": T0}), "Progressing", "Waiting for backup 20261121T180000Z to start",
                 id="no-phase"),
    pytest.param(backup_obj({"phase": "Running", "startedAt": T0}), "Progressing",
                 "Backup 20261121T180000Z is running", id="running"),
    pytest.param(backup_obj({"phase": "Running", "message": "target media: 1.2 GiB"}), "Progressing",
                 "target media: 1.2 GiB", id="running-message"),
    pytest.param(backup_obj({"phase": "Succeeded", "startedAt": T0, "completedAt": T1, "bytes": 1048576,
                             "artifacts": [{"target": "media", "file": "media.tar.zst"}]}),
                 "Healthy", "Backup 20261121T180000Z succeeded", id="succeeded"),
    pytest.param(backup_obj({"phase": "Succeeded"}, spec_id=False), "Healthy",
                 "Backup myapp-20261121t180000z succeeded", id="succeeded-id-from-name"),
    pytest.param({"metadata": {}, "status": {"phase": "Succeeded"}}, "Healthy", "Backup ? succeeded",
                 id="succeeded-nameless"),
    pytest.param(backup_obj({"phase": "Failed", "message": "tar of volume 'mydata' failed with exit code 2"}),
                 "Degraded", "tar of volume 'mydata' failed with exit code 2", id="failed"),
    pytest.param(backup_obj({"phase": "Failed", "message": ""}), "Degraded", "Backup 20261121T180000Z failed",
                 id="failed-no-message"),
    pytest.param(backup_obj({"phase": "Pruned"}), "Unknown", "Unknown backup phase Pruned", id="unknown-phase"),
]

ALL_CASES = {POLICY: POLICY_CASES, RESTORE: RESTORE_CASES, BACKUP: BACKUP_CASES}


# --- the scripts, case by case ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "status", "message"), POLICY_CASES)
def test_backuppolicy_health(lua_version: str, obj: dict, status: str, message: str) -> None:
    assert run(POLICY, obj, lua_version) == (status, message)


@pytest.mark.parametrize(("obj", "status", "message"), RESTORE_CASES)
def test_restorerequest_health(lua_version: str, obj: dict, status: str, message: str) -> None:
    assert run(RESTORE, obj, lua_version) == (status, message)


@pytest.mark.parametrize(("obj", "status", "message"), BACKUP_CASES)
def test_backup_health(lua_version: str, obj: dict, status: str, message: str) -> None:
    assert run(BACKUP, obj, lua_version) == (status, message)


def test_numbers_arrive_as_floats_like_argo_cd_json() -> None:
    """Argo CD decodes JSON numbers to float64; gopher-lua prints 4.0 as 4, and 3 == 3.0."""
    stale = policy_obj(READY_OK, RPO_OK, generation=4.0, observed=3.0)
    assert run(POLICY, stale) == ("Progressing", "Waiting for the operator to observe generation 4 (observed 3)")
    assert run(POLICY, policy_obj(READY_OK, RPO_OK, generation=3.0, observed=3))[0] == "Healthy"


def test_every_line_of_every_script_runs_in_some_case() -> None:
    cover: dict[str, set[int]] = {}
    for name, cases in ALL_CASES.items():
        for case in cases:
            obj, status, message = case.values
            assert run(name, copy.deepcopy(obj), "lua54", cover=cover) == (status, message), case.id
    for name in ALL_CASES:
        missed = sorted(cover[f"{name} active"] - cover[f"{name} run"])
        assert not missed, f"{name}: lines {missed} never run; add a case"


def test_scripts_use_only_base_and_table_functions() -> None:
    """Argo CD opens no string/math/io/os library for custom checks (unless useOpenLibs); no method calls either."""
    for name in ALL_CASES:
        code = "\n".join(line.split("--", 1)[0] for line in script(name).splitlines())
        assert not re.search(r"\b(string|math|io|os|debug|require)\b\s*[.(]", code), name
        assert not re.search(r"[\w)\]\"']:\w+\s*\(", code), f"{name}: method call on a value"


# --- fed by what dockvault itself computes (kstatus-style) -----------------------------------------------------------

NOW = utc(2026, 11, 21, 12)


def policy_model(generation: int = 2, **spec: Any) -> BackupPolicy:
    doc = policy_doc(**spec)
    doc["metadata"]["generation"] = generation
    return BackupPolicy.model_validate(doc)


def as_cluster_object(model: BackupPolicy, status: Any) -> dict[str, Any]:
    """The policy as `kubectl get -o json` would show it with the status the operator wrote."""
    return {**model.to_dict(), "status": status.to_dict()}


def conditions(status: Any) -> dict[str, Any]:
    return {c.type: c for c in status.conditions}


def explained(condition: Any) -> str:
    return f"{condition.reason}: {condition.message}"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_fresh_successful_backup_within_rpo_is_healthy(version: str) -> None:
    model = policy_model()
    status = policy_status(model, [backup(utc(2026, 11, 21, 9))], None, now=NOW)
    rpo = conditions(status)["RPOMet"]
    assert (conditions(status)["Ready"].status, rpo.status) == ("True", "True")
    assert run(POLICY, as_cluster_object(model, status), version) == ("Healthy", explained(rpo))
    assert explained(rpo) == "WithinRPO: newest good backup 20261121T090000Z is 2h58m old (RPO 1d)"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_accepted_schedule_with_old_backup_is_degraded(version: str) -> None:
    model = policy_model()
    status = policy_status(model, [backup(utc(2026, 11, 18, 9))], None, now=NOW)
    # Ready means "protected" in both modes: the last backup succeeded, but the newest is past the RPO
    assert (conditions(status)["Ready"].status, conditions(status)["Ready"].reason) == ("False", "RPOBreached")
    assert run(POLICY, as_cluster_object(model, status), version) == (
        "Degraded", explained(conditions(status)["RPOMet"]))
    assert conditions(status)["RPOMet"].reason == "RPOBreached"


def test_new_policy_is_progressing_until_its_first_backup() -> None:
    model = policy_model()
    status = policy_status(model, [], None, now=NOW)
    assert conditions(status)["RPOMet"].status == "False"  # NoSuccessfulBackup, yet nothing is broken
    assert run(POLICY, as_cluster_object(model, status)) == ("Progressing", explained(conditions(status)["Ready"]))


def test_running_backup_is_progressing() -> None:
    model = policy_model()
    running = Attempt(backup_id="20261121T115900Z", phase="Running", started_at=utc(2026, 11, 21, 11, 59))
    status = policy_status(model, [backup(utc(2026, 11, 20, 18))], running, now=NOW)
    assert run(POLICY, as_cluster_object(model, status)) == (
        "Progressing", "BackupRunning: backup 20261121T115900Z running")


def test_failed_last_attempt_is_degraded_with_its_message() -> None:
    model = policy_model()
    failed = Attempt(backup_id="20261121T110000Z", phase="Failed", started_at=utc(2026, 11, 21, 11),
                     completed_at=utc(2026, 11, 21, 11, 1), message="tar of volume 'mydata' failed with exit code 2")
    status = policy_status(model, [backup(utc(2026, 11, 21, 9))], failed, now=NOW)
    assert run(POLICY, as_cluster_object(model, status)) == (
        "Degraded", "BackupFailed: tar of volume 'mydata' failed with exit code 2")


def test_suspended_policy_is_suspended_even_past_its_rpo() -> None:
    model = policy_model(suspend=True)
    status = policy_status(model, [backup(utc(2026, 11, 18, 9))], None, now=NOW)
    assert conditions(status)["Ready"].reason == "RPOBreached"  # not protected; spec.suspend says why
    assert run(POLICY, as_cluster_object(model, status)) == (
        "Suspended", f"{SUSPENDED}; {explained(conditions(status)['RPOMet'])}")


def test_policy_without_rpo_objective_is_healthy_after_a_backup() -> None:
    model = policy_model(objectives={"rto": "30m"})
    status = policy_status(model, [backup(utc(2026, 11, 21, 9))], None, now=NOW,
                           measured=Measurement(seconds=120, at=utc(2026, 11, 21, 10), backup_id=None, source="drill"))
    assert conditions(status)["RPOMet"].reason == "NoObjective"
    assert run(POLICY, as_cluster_object(model, status)) == (
        "Healthy", f"{explained(conditions(status)['Ready'])} (no RPO objective set)")


def test_edited_policy_is_progressing_until_the_operator_catches_up() -> None:
    model = policy_model(generation=2)
    status = policy_status(model, [backup(utc(2026, 11, 21, 9))], None, now=NOW)
    edited = as_cluster_object(model, status)
    edited["metadata"]["generation"] = 3
    assert run(POLICY, edited) == ("Progressing", "Waiting for the operator to observe generation 3 (observed 2)")


# Kubernetes mode: the status patch the operator's kopf front end writes (frontends/kube.py policy_patch).


def kube_policy_patch() -> Any:
    kube = pytest.importorskip("dockvault.frontends.kube")
    if not hasattr(kube, "policy_patch"):
        pytest.skip("dockvault.frontends.kube has no policy_patch")
    return kube.policy_patch


def kube_object(body: dict[str, Any], backups: list, last: Attempt | None = None) -> dict[str, Any]:
    return {**body, "status": kube_policy_patch()(body, backups, last, NOW)}


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_kube_mode_fresh_backup_is_healthy_and_breached_rpo_degraded(version: str) -> None:
    body = policy_model().to_dict()
    fresh = kube_object(body, [backup(utc(2026, 11, 21, 9))])
    assert run(POLICY, fresh, version) == (
        "Healthy", "WithinRPO: newest good backup 20261121T090000Z is 2h58m old (RPO 1d)")
    old = kube_object(body, [backup(utc(2026, 11, 18, 9))])
    ready = next(c for c in old["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RPOBreached")  # Ready means "protected" there
    assert run(POLICY, old, version) == ("Degraded", f"RPOBreached: {ready['message']}")


def test_kube_mode_suspended_policy_past_its_rpo_is_suspended() -> None:
    body = policy_model(suspend=True).to_dict()
    obj = kube_object(body, [backup(utc(2026, 11, 18, 9))])
    rpo = next(c for c in obj["status"]["conditions"] if c["type"] == "RPOMet")
    assert run(POLICY, obj) == ("Suspended", f"{SUSPENDED}; RPOBreached: {rpo['message']}")


def test_kube_mode_invalid_spec_is_degraded_with_the_field_path() -> None:
    body = policy_model().to_dict()
    body["spec"]["targets"][0]["volume"]["name"] = "my data"
    obj = kube_object(body, [])
    status, message = run(POLICY, obj)
    assert status == "Degraded"
    assert message.startswith("InvalidSpec: ") and "spec.targets[0].volume.name" in message, message


def test_kube_mode_new_policy_is_progressing() -> None:
    obj = kube_object(policy_model().to_dict(), [])
    assert run(POLICY, obj) == ("Progressing", "NoBackupYet: no backup has completed yet")


def test_backup_records_from_the_model() -> None:
    assert run(BACKUP, backup(utc(2026, 11, 21, 9)).to_dict()) == ("Healthy", "Backup 20261121T090000Z succeeded")
    assert run(BACKUP, backup(utc(2026, 11, 21, 9), phase="Running", completed=False).to_dict()) == (
        "Progressing", "Backup 20261121T090000Z is running")
    assert run(BACKUP, backup(utc(2026, 11, 21, 9), phase="Failed").to_dict()) == (
        "Degraded", "Backup 20261121T090000Z failed")


def test_restore_statuses_from_the_model() -> None:
    def with_status(**fields: Any) -> dict[str, Any]:
        return restore_obj(RestoreRequestStatus(**fields).to_dict())

    assert run(RESTORE, with_status()) == ("Progressing", "Waiting for the restore to start")
    assert run(RESTORE, with_status(phase="Running", started_at=utc(2026, 11, 21, 12))) == ("Progressing", "Restoring")
    done = with_status(phase="Succeeded", backup="20261121T090000Z", duration_seconds=3.5,
                       message="restored 1 target(s) from backup 20261121T090000Z")
    assert run(RESTORE, done) == ("Healthy", "restored 1 target(s) from backup 20261121T090000Z")
    failed = with_status(phase="Failed", message="spec.targets[0].from: backup 20261121T090000Z has no target 'db'")
    assert run(RESTORE, failed) == ("Degraded", "spec.targets[0].from: backup 20261121T090000Z has no target 'db'")


# --- the argocd-cm patch ---------------------------------------------------------------------------------------------


def load_render() -> ModuleType:
    """deploy/argocd/render.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dockvault_argocd_render", ARGOCD / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_argocd_cm_patch_is_current() -> None:
    render = load_render()
    assert not render.is_stale(), "deploy/argocd/argocd-cm-patch.yaml is stale: run `python deploy/argocd/render.py`"
    assert render.main(["--check"]) == 0


def test_argocd_cm_patch_embeds_each_script_under_argo_cd_key() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text(encoding="utf-8"))
    assert (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert patch["data"] == {
        "resource.customizations.health.dockvault.io_BackupPolicy": script(POLICY),
        "resource.customizations.health.dockvault.io_RestoreRequest": script(RESTORE),
        "resource.customizations.health.dockvault.io_Backup": script(BACKUP),
    }


def test_render_refuses_scripts_yaml_would_mangle() -> None:
    render = load_render()
    with pytest.raises(ValueError):
        render.render_patch({"k": "hs = {}  \nreturn hs\n"})
    with pytest.raises(ValueError):
        render.render_patch({"k": "return hs"})
