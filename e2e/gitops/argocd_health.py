"""Run kloop's Argo CD health checks (Lua) with a real Lua 5.1 interpreter, as Argo CD would.

Argo CD runs a health script with the live object bound to the global ``obj`` (JSON null
becomes nil) and reads back ``hs.status`` and ``hs.message``. Argo CD embeds gopher-lua, a Lua
5.1 implementation; Debian's ``lua5.1`` is the reference interpreter for that dialect.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster.debian import ensure_debian

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "charts" / "kloop" / "files" / "argocd"
LOOPRUN_SCRIPT = SCRIPTS / "health-looprun.lua"
LOOP_SCRIPT = SCRIPTS / "health-loop.lua"
LUA = "lua5.1"
LUA_PATH = "/usr/bin/lua5.1"

_RUNNER = """
local check = assert(loadfile(arg[1]))
local hs = check()
io.write(hs.status, "\\n", hs.message or "")
"""


@dataclass(frozen=True)
class Health:
    """What the script returned: Argo CD's health status and message."""

    status: str
    message: str


def ensure_lua() -> str:
    """The interpreter's path; installs Debian's ``lua5.1`` when missing (as the harness does)."""
    ensure_debian({LUA: LUA_PATH}, lambda msg: print(f"[kloop-gitops] {msg}", flush=True))
    return LUA_PATH


def _lua_string(text: str) -> str:
    """A Lua 5.1 string literal: printable ASCII as is, every other byte as a decimal escape."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def to_lua(value: Any) -> str:
    """A JSON value as a Lua table constructor; null becomes nil, as in Argo CD."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        fields = (f"[{_lua_string(k)}] = {to_lua(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def run_health(script: Path, obj: dict[str, Any]) -> Health:
    """Run ``script`` on ``obj`` with lua5.1 and return what it decided."""
    program = f"obj = {to_lua(obj)}\n{_RUNNER}"
    proc = subprocess.run(
        [ensure_lua(), "-", str(script)],
        input=program,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {proc.stderr}")
    status, _, message = proc.stdout.partition("\n")
    return Health(status, message)
