-- Argo CD health check for kloop.dev/Loop (resource.customizations.health.kloop.dev_Loop).
-- A Loop is as healthy as its newest run: Healthy when it succeeded (or none ran yet), Degraded
-- when it halted or failed, Suspended while it awaits approval or is paused, else Progressing.
local hs = {}
local status = obj.status
if status == nil or status.lastRun == nil or status.phase == nil then
  hs.status = "Healthy"
  hs.message = "No run yet"
  return hs
end
local phase = status.phase
local message = "Newest run " .. status.lastRun .. ": " .. phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Halted" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "AwaitingApproval" or phase == "Paused" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
