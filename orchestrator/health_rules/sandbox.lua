-- The sandbox Conveyor runs Argo CD health scripts in. Loaded once per LuaRuntime; returns
-- `run(id, name, text, obj, seconds)` -> ok, result, and `forget(id)` (drops a compiled chunk). Nothing here is reachable from a
-- script: each call gets a fresh environment holding copies of the allowed libraries only.
local json_decode, json_encode, limit, clock = ...
local pcall, error, select, type, pairs, load = pcall, error, select, type, pairs, load
local sethook, setupvalue = debug.sethook, debug.setupvalue
local pack, unpack = table.pack, table.unpack
local real_string = string

local TIMEOUT = "health script exceeded its time limit"

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Lua patterns backtrack inside one C call, where no hook can stop them: "a*a*b" on 3,000
-- characters takes half a minute. Refuse a match whose worst case (subject length to the power
-- of the quantifiers, plus one unless anchored) exceeds `limit` steps.
local function guard(s, p)
  if type(s) ~= "string" or type(p) ~= "string" then return end
  local bare = real_string.gsub(p, "%%.", "")
  local _, quantifiers = real_string.gsub(bare, "[%*%+%-]", "")
  if quantifiers == 0 then return end
  local exponent = quantifiers + (real_string.sub(p, 1, 1) == "^" and 0 or 1)
  if (#s + 1) ^ exponent > limit then
    error("pattern '" .. real_string.sub(p, 1, 40) .. "' is too expensive on a " .. #s ..
          "-character string (a health script may not backtrack that much)", 3)
  end
end

local safe_string = copy(real_string)
safe_string.dump = nil
for _, name in pairs({"match", "gmatch", "gsub"}) do
  local f = real_string[name]
  safe_string[name] = function(s, p, ...) guard(s, p) return f(s, p, ...) end
end
local find = real_string.find
safe_string.find = function(s, p, init, plain)
  if not plain then guard(s, p) end
  return find(s, p, init, plain)
end
-- Method calls ("x"):find(...) go through the strings' metatable: point it at the guarded
-- copy and protect it, so getmetatable("") cannot hand the real one out.
local string_meta = getmetatable("")
string_meta.__index = safe_string
string_meta.__metatable = false

local safe_table = copy(table)
safe_table.getn = function(t) return #t end            -- Lua 5.1, which gopher-lua speaks
local safe_math = copy(math)
safe_math.pow = function(x, y) return x ^ y end
safe_math.mod = math.fmod
local safe_os = {time = os.time, date = os.date}       -- Argo CD's oslib_safe: nothing else
-- Lua closures around the Python callables: a script must never hold a Python object (its
-- userdata's metatable has __gc and friends, which called by hand could corrupt memory).
local json = {
  decode = function(text) return json_decode(text) end,
  encode = function(value) return json_encode(value) end,
}

-- gopher-lua (Lua 5.1) has one number type: 6 / 2 prints "3" there, "3.0" in Lua 5.4.
-- tostring prints an integral float as Argo CD would (concatenation cannot be changed).
local real_tostring, math_type, fmt = tostring, math.type, string.format
local function compat_tostring(value)
  if math_type(value) == "float" and value == value // 1 and value > -2^53 and value < 2^53 then
    return fmt("%d", value)
  end
  return real_tostring(value)
end

local compiled = {}

local function environment(state)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    select = select, tonumber = tonumber, tostring = compat_tostring, type = type,
    unpack = unpack, rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = rawset,
    getmetatable = getmetatable, _VERSION = _VERSION,
    print = function() end,
    string = copy(safe_string), table = copy(safe_table), math = copy(safe_math),
    os = copy(safe_os),
  }
  -- A finalizer would run later, outside this call's time limit (or in no call at all).
  env.setmetatable = function(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("__gc metamethods are not allowed in health scripts", 2)
    end
    return setmetatable(t, mt)
  end
  -- A script's own pcall must not swallow the time limit: re-raise it once it has fired.
  env.pcall = function(f, ...)
    local r = pack(pcall(f, ...))
    if state.expired then error(TIMEOUT, 0) end
    return unpack(r, 1, r.n)
  end
  env.xpcall = function(f, handler, ...)
    local r = pack(xpcall(f, handler, ...))
    if state.expired then error(TIMEOUT, 0) end
    return unpack(r, 1, r.n)
  end
  env.require = function(name)
    if name == "os" then return env.os end
    if name == "json" then return json end
    error("module '" .. tostring(name) .. "' not found (health scripts may require only " ..
          "os and json)", 2)
  end
  env._G = env
  return env
end

local function forget(id)
  compiled[id] = nil
end

local function run(id, name, text, obj, seconds)
  local chunk = compiled[id]
  if chunk == nil then
    local err
    chunk, err = load(text, "=" .. name, "t", {})
    if chunk == nil then return false, err end
    compiled[id] = chunk
  end
  local state = {expired = false}
  local env = environment(state)
  env.obj = obj
  setupvalue(chunk, 1, env)                            -- the chunk's _ENV
  local deadline = clock() + seconds
  sethook(function()
    if clock() > deadline then
      state.expired = true
      error(TIMEOUT, 0)
    end
  end, "", 1000)
  local result = pack(pcall(chunk))
  sethook()
  setupvalue(chunk, 1, {})
  if state.expired then return false, TIMEOUT end
  return result[1], result[2]
end

return run, forget
