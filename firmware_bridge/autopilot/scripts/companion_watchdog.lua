-- SkyCourier companion watchdog: runs on the flight controller (ArduPilot Lua scripting).
--
-- The companion computer commands GUIDED flight. If it dies, nothing would ever tell the
-- autopilot, and ArduPilot's own GCS failsafe only watches the ground station's system id.
-- This script watches the companion's HEARTBEAT (MAV_COMP_ID_ONBOARD_COMPUTER = 191 by
-- default) and, once it has been heard, switches to a safe mode (RTL unless SCW_ACTION says
-- otherwise) when it falls silent for SCW_TIMEOUT seconds while the vehicle is armed in
-- GUIDED or AUTO. It never acts on a companion it has not heard, and re-arms itself when
-- the heartbeat comes back.
--
-- Install: copy to APM/scripts/ on the SD card (or ./scripts/ beside SITL), set SCR_ENABLE 1
-- and reboot. Parameters (table SCW_): ENABLE, TIMEOUT (s), COMPID, ACTION (mode number:
-- 6 RTL, 9 LAND).

local PARAM_TABLE_KEY = 72
local MAV_SEVERITY_CRITICAL = 2
local HEARTBEAT_MSGID = 0
local MODE_AUTO = 3
local MODE_GUIDED = 4

assert(param:add_table(PARAM_TABLE_KEY, "SCW_", 4), "SCW: could not add parameter table")
assert(param:add_param(PARAM_TABLE_KEY, 1, "ENABLE", 1), "SCW: could not add SCW_ENABLE")
assert(param:add_param(PARAM_TABLE_KEY, 2, "TIMEOUT", 5), "SCW: could not add SCW_TIMEOUT")
assert(param:add_param(PARAM_TABLE_KEY, 3, "COMPID", 191), "SCW: could not add SCW_COMPID")
assert(param:add_param(PARAM_TABLE_KEY, 4, "ACTION", 6), "SCW: could not add SCW_ACTION")

local SCW_ENABLE = Parameter("SCW_ENABLE")
local SCW_TIMEOUT = Parameter("SCW_TIMEOUT")
local SCW_COMPID = Parameter("SCW_COMPID")
local SCW_ACTION = Parameter("SCW_ACTION")

mavlink.init(8, 1)
mavlink.register_rx_msgid(HEARTBEAT_MSGID)

local last_heard_ms = nil
local tripped = false

-- Source component id of a received message. mavlink.receive_chan() hands over ArduPilot's
-- mavlink_message_t as bytes, not the wire frame: checksum (2), magic, len, incompat_flags,
-- compat_flags, seq, sysid, compid, msgid (3), payload...; so compid is the 9th byte.
local function source_component(msg)
  return string.byte(msg, 9)
end

local function update()
  local now = millis():toint()
  local frame = mavlink.receive_chan()
  while frame do
    if source_component(frame) == SCW_COMPID:get() then
      last_heard_ms = now
      if tripped then
        gcs:send_text(MAV_SEVERITY_CRITICAL, "SCW: companion heartbeat back")
        tripped = false
      end
    end
    frame = mavlink.receive_chan()
  end

  if SCW_ENABLE:get() == 1 and last_heard_ms and not tripped and arming:is_armed() then
    local mode = vehicle:get_mode()
    local silent_ms = now - last_heard_ms
    if (mode == MODE_GUIDED or mode == MODE_AUTO) and silent_ms > SCW_TIMEOUT:get() * 1000 then
      tripped = true
      local action = math.floor(SCW_ACTION:get())
      vehicle:set_mode(action)
      gcs:send_text(MAV_SEVERITY_CRITICAL,
        string.format("SCW: companion silent %.1f s, mode %d", silent_ms / 1000, action))
    end
  end
  return update, 200
end

gcs:send_text(6, "SCW: companion watchdog running")
return update, 1000
