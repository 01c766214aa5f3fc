-- Argo CD health check for dockvault.io/BackupPolicy (see deploy/argocd/README.md).
-- Order matters; the first rule that matches decides:
--   status or status.observedGeneration missing, or != metadata.generation -> Progressing
--   Ready=False but not only for a missed RPO (InvalidSpec, BackupFailed, ...) -> Degraded
--   spec.suspend: true                                                         -> Suspended
--   Ready=False only for a missed RPO (Kubernetes mode then copies RPOMet's
--   reason into Ready)                                                         -> Degraded
--   Ready missing or Unknown (no backup yet, a backup running)                 -> Progressing
--   RPOMet=False (RPO breached, no successful backup)                          -> Degraded
--   RPOMet=True                                                                -> Healthy
--   RPOMet=Unknown with reason NoObjective (spec.objectives.rpo not set)       -> Healthy
--   RPOMet missing or otherwise Unknown                                        -> Progressing
-- Only Lua's base and table functions are used: Argo CD opens no string or math library for custom checks.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function explain(c)
  local reason = c.reason
  if reason == nil or reason == "" then
    reason = c.type .. "=" .. tostring(c.status)
  end
  if c.message == nil or c.message == "" then
    return reason
  end
  return reason .. ": " .. c.message
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the policy"
  return hs
end
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (observed " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local rpo = condition(status, "RPOMet")

-- In Kubernetes mode the operator sets Ready=False with RPOMet's reason when the RPO is missed: that is no
-- failure of its own, and a suspended policy stays Suspended past its RPO.
local missed_rpo_only = ready ~= nil and rpo ~= nil and ready.status == "False" and rpo.status == "False" and
  ready.reason == rpo.reason
if ready ~= nil and ready.status == "False" and not missed_rpo_only then
  hs.status = "Degraded"
  hs.message = explain(ready)
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Backups are suspended (spec.suspend: true)"
  if rpo ~= nil and rpo.status == "False" then
    hs.message = hs.message .. "; " .. explain(rpo)
  end
  return hs
end

if missed_rpo_only then
  hs.status = "Degraded"
  hs.message = explain(rpo)
  return hs
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = explain(ready)
  return hs
end

if rpo == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the RPOMet condition"
  return hs
end
if rpo.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(rpo)
  return hs
end
if rpo.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(rpo)
  return hs
end
if rpo.reason == "NoObjective" then
  hs.status = "Healthy"
  hs.message = explain(ready) .. " (no RPO objective set)"
  return hs
end
hs.status = "Progressing"
hs.message = explain(rpo)
return hs
