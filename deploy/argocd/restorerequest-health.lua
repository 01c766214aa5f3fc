-- Argo CD health check for dockvault.io/RestoreRequest (see deploy/argocd/README.md).
--   no status, phase Pending or Running -> Progressing
--   phase Succeeded                     -> Healthy
--   phase Failed                        -> Degraded, with status.message (why it failed)
--   any other phase                     -> Unknown
-- status.message is shown when the operator set one; otherwise a fixed text.
-- Only Lua's base and table functions are used: Argo CD opens no string or math library for custom checks.
local hs = {}

local status = obj.status
if status == nil then
  status = {}
end
local phase = status.phase
if phase == nil then
  phase = "Pending"
end

local function message(default)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

local function from(backup)
  if backup == nil or backup == "" then
    return ""
  end
  return " from backup " .. backup
end

if phase == "Pending" then
  hs.status = "Progressing"
  hs.message = message("Waiting for the restore to start")
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = message("Restoring" .. from(status.backup))
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message("Restored" .. from(status.backup))
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message("Restore failed")
else
  hs.status = "Unknown"
  hs.message = "Unknown restore phase " .. tostring(phase)
end
return hs
