-- Argo CD health check for berth.dev/StatefulLocalVolume, following kstatus:
--   being deleted                                  -> Progressing
--   status.observedGeneration absent or behind     -> Progressing (the spec is not observed yet)
--   Stalled=True                                   -> Degraded    (berth cannot go on by itself)
--   Reconciling=True                               -> Progressing
--   Ready=True                                     -> Healthy
--   Ready=False, Unknown or absent                 -> Progressing
-- Install it in argocd-cm as resource.customizations.health.berth.dev_StatefulLocalVolume
-- (docs/install.md). Written for Lua 5.1, the dialect of Argo CD's interpreter.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted: berth is removing the volume from its Marathon app"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status and obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for berth to observe the latest spec"
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local where = ""
  if obj.status.host ~= nil then
    where = " on " .. obj.status.host
  end
  hs.message = (obj.status.phase or "Ready") .. where
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
