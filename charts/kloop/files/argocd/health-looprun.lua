-- Argo CD health check for kloop.dev/LoopRun (resource.customizations.health.kloop.dev_LoopRun).
-- Healthy: Succeeded. Degraded: Halted, Failed, or Stalled (e.g. its Loop is missing).
-- Suspended: AwaitingApproval or Paused (a human acts). Progressing: everything else.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kloop operator to start the run"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the kloop operator to observe generation " .. generation
  return hs
end
local stalled = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Stalled" and condition.status == "True" then
      stalled = condition
    end
  end
end
local phase = status.phase
local message = status.message or ""
if phase == "Succeeded" then
  if status.teardown ~= nil and status.teardown.state == "Running" then
    hs.status = "Progressing"
    hs.message = "Succeeded; teardown pod running"
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Succeeded: " .. message
  return hs
end
if phase == "Halted" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = phase .. " (" .. (status.haltReason or "unknown") .. "): " .. message
  return hs
end
if phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = "Awaiting approval: " .. message
  return hs
end
if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused: " .. message
  return hs
end
if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = phase .. ", stalled (" .. (stalled.reason or "") .. "): " .. (stalled.message or "")
  return hs
end
hs.status = "Progressing"
hs.message = phase .. ": " .. message
return hs
