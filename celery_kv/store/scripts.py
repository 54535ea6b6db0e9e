"""Lua scripts: one ``.lua`` file per operation, loaded once, called by EVALSHA.

Each file declares in its header whether it is safe to run again after a
timeout (``-- retry: safe`` or ``-- retry: unsafe``): a script whose second run
cannot change the outcome is retried on any connection failure; an unsafe one
only when the failure happened before the command was sent.

A *step* script (the Celery lifecycle's per-feature operations) answers a table
whose first element is a verdict, ``'ok'``, ``'deny'`` or ``'stop'``, and may
declare ``-- undo: <script>`` (run with the same keys and arguments when a later
step of the same phase denies) and ``-- uses: <script> ...`` (other scripts it
calls as Lua functions, ``name(KEYS, ARGV)``). ``compose`` joins the steps of one
lifecycle phase into a single script, so a phase is one round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

_RETRY_RE = re.compile(r"^--\s*retry:\s*(safe|unsafe)\b", re.MULTILINE)
_UNDO_RE = re.compile(r"^--\s*undo:\s*([a-z0-9_]+)\s*$", re.MULTILINE)
_USES_RE = re.compile(r"^--\s*uses:\s*([a-z0-9_ ]+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ScriptSource:
    name: str
    text: str
    retry_safe: bool
    undo: str | None = None
    uses: tuple[str, ...] = ()


@cache
def load(name: str) -> ScriptSource:
    """Read ``scripts/<name>.lua`` and its header declarations."""
    try:
        folder = resources.files(__package__).joinpath("scripts")
        text = folder.joinpath(f"{name}.lua").read_text("utf-8")
    except FileNotFoundError:
        raise LookupError(f"no Lua script named {name!r}") from None
    match = _RETRY_RE.search(text)
    if match is None:
        raise LookupError(f"script {name!r} does not declare '-- retry: safe|unsafe'")
    undo = _UNDO_RE.search(text)
    uses = _USES_RE.search(text)
    return ScriptSource(
        name, text, match.group(1) == "safe",
        undo.group(1) if undo else None,
        tuple(uses.group(1).split()) if uses else (),
    )


def available() -> list[str]:
    folder = resources.files(__package__).joinpath("scripts")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".lua"))


# The driver of a composed phase. ARGV: the step count n, then each step's key count and
# argument count, then every step's arguments in order; KEYS: every step's keys in order.
# It runs the steps in order and stops at the first that does not answer 'ok': on 'deny'
# it first runs the undo of every earlier step, newest first, so a denied phase holds
# nothing and is charged nothing. It answers {server seconds, microseconds, reply...}.
#
# Counting (metrics.py): when ARGV goes on past the steps' arguments, it holds the counters'
# lifetime (ms) and one tally per step ("task|feature", a tab, rules, a tab, an identity or
# ''), and the key after the steps' keys is the counters' base: the decision is counted in
# the hash <base>:<server minute> by the same script that made it. A denied phase counts
# only the step that denied (what it undid never happened); otherwise every step counts its
# own reply. Rules: "cond>event,event;..." where cond is a verdict, optionally with ":i=v"
# (reply[i] is v, '' for missing) or ":i?" (reply[i] exists); the first rule that matches
# counts its events into the fields "task|feature|event" (and "...|identity"); "-" counts
# nothing, and "-event" takes one back (a Cluster's undo of a step counted in its own call).
_COUNTING = """
local function matches(reply, cond)
  local verdict, rest = string.match(cond, '^([a-z]+)(.*)$')
  if reply[1] ~= verdict then return false end
  if rest == '' then return true end
  local i, op, value = string.match(rest, '^:(%d+)([=?])(.*)$')
  local got = reply[tonumber(i)]
  if op == '?' then return got ~= nil end
  return tostring(got or '') == value
end
local function count(key, reply, tally)
  local label, rules, who = string.match(tally, '^([^\t]*)\t([^\t]*)\t(.*)$')
  if not label then return 0 end
  for rule in string.gmatch(rules, '[^;]+') do
    local cond, events = string.match(rule, '^([^>]+)>(.*)$')
    if cond and matches(reply, cond) then
      local n = 0
      for event in string.gmatch(events, '[^,]+') do
        local by = 1
        if string.sub(event, 1, 1) == '-' then  -- an undo takes back what its step counted
          event, by = string.sub(event, 2), -1
        end
        if event ~= '' then
          redis.call('HINCRBY', key, label .. '|' .. event, by)
          if who ~= '' then
            redis.call('HINCRBY', key, label .. '|' .. event .. '|' .. who, by)
          end
          n = n + 1
        end
      end
      return n
    end
  end
  return 0
end
"""

_DRIVER = """
local unpack = unpack or table.unpack
local n = tonumber(ARGV[1])
local calls, ki, ai = {}, 1, 2 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  calls[i] = {{unpack(KEYS, ki, ki + nk - 1)}, {unpack(ARGV, ai, ai + na - 1)}}
  ki, ai = ki + nk, ai + na
end
local t = redis.call('TIME')
local out = {t[1], t[2]}
for i = 1, n do
  local reply = STEPS[i](calls[i][1], calls[i][2])
  out[i + 2] = reply
  if reply[1] ~= 'ok' then
    if reply[1] == 'deny' then
      for j = i - 1, 1, -1 do
        if UNDO[j] then
          UNDO[j](calls[j][1], calls[j][2])
        end
      end
    end
    break
  end
end
if ARGV[ai] and ARGV[ai] ~= '0' then
  local key = KEYS[ki] .. ':' .. math.floor(tonumber(t[1]) / 60)
  local ran, counted = #out - 2, 0
  local first = out[ran + 2][1] == 'deny' and ran or 1
  for i = first, ran do
    counted = counted + count(key, out[i + 2], ARGV[ai + i])
  end
  if counted > 0 then
    redis.call('PEXPIRE', key, ARGV[ai])
  end
end
return out
"""


def _functions(names: tuple[str, ...], defined: list[str] | None = None) -> str:
    """``local function <name>(KEYS, ARGV)`` for each script named and, first, every
    script it uses (each once, ``defined`` naming those already written)."""
    defined = [] if defined is None else defined
    chunks: list[str] = []

    def define(name: str) -> None:
        if name in defined:
            return
        source = load(name)
        for used in source.uses:
            define(used)
        defined.append(name)
        chunks.append(f"local function {name}(KEYS, ARGV)\n{source.text}\nend\n")

    for name in names:
        define(name)
    return "".join(chunks)


@cache
def standalone(name: str) -> ScriptSource:
    """``name`` run on its own: the scripts it uses become local functions before its
    body (a step in a phase gets them from ``compose``)."""
    source = load(name)
    if not source.uses:
        return source
    return replace(source, text=_functions(source.uses) + source.text)


@cache
def compose(steps: tuple[str, ...]) -> ScriptSource:
    """One script that runs ``steps`` (step script names) in order, as ``_DRIVER`` says.

    Every script a step uses, the step itself and its undo become local functions;
    the composite is safe to retry only when every step is.
    """
    if not steps:
        raise ValueError("a phase needs at least one step")
    defined: list[str] = []
    chunks: list[str] = []
    for name in steps:
        chunks.append(_functions((name,), defined))
        undo = load(name).undo
        if undo is not None:
            chunks.append(_functions((undo,), defined))
    sources = [load(name) for name in steps]
    table = ", ".join(steps)
    undos = ", ".join(source.undo or "false" for source in sources)
    head = f"local STEPS = {{{table}}}\nlocal UNDO = {{{undos}}}\n"
    text = "".join(chunks) + head + _COUNTING + _DRIVER
    return ScriptSource(
        "+".join(steps), text, all(source.retry_safe for source in sources)
    )
