-- Argo CD health check for dockvault.io/Backup (see deploy/argocd/README.md).
--   no status or no phase -> Progressing
--   phase Running         -> Progressing
--   phase Succeeded       -> Healthy
--   phase Failed          -> Degraded, with status.message (why it failed)
--   any other phase       -> Unknown
-- status.message is shown when the operator set one; otherwise a fixed text naming the backup id.
-- Only Lua's base and table functions are used: Argo CD opens no string or math library for custom checks.
local hs = {}

local id = nil
if obj.spec ~= nil then
  id = obj.spec.id
end
if id == nil and obj.metadata ~= nil then
  id = obj.metadata.name
end
if id == nil then
  id = "?"
end

local status = obj.status
if status == nil then
  status = {}
end

local function message(default)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

local phase = status.phase
if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for backup " .. id .. " to start"
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = message("Backup " .. id .. " is running")
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message("Backup " .. id .. " succeeded")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message("Backup " .. id .. " failed")
else
  hs.status = "Unknown"
  hs.message = "Unknown backup phase " .. tostring(phase)
end
return hs
