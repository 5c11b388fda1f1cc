"""Shell dialects: how an argv, its environment and its working folder become one
command line that a remote login shell runs exactly as intended.

SSH runs commands through the remote user's shell: POSIX sh on Linux and macOS,
PowerShell or cmd.exe on Windows OpenSSH. Each dialect quotes for its own parser, so a
value containing quotes, ``$``, backticks, ``;``, ``%VAR%``, ``&`` or a newline arrives
byte-exact or is refused; it is never pasted unescaped. Environment variable *names*
are checked against a strict pattern, because no shell lets a name be quoted.

Temporary and work directories are not a dialect's job: the host's own Python makes
them (hostside.py), the same way on every OS, under the host's work directory.
"""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod
from typing import Mapping

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnsafeValue(ValueError):
    """A value this dialect cannot carry faithfully; the message says which character."""


def _check_env(env: Mapping[str, str]) -> None:
    for name in env:
        if not _ENV_NAME.match(name):
            raise UnsafeValue(f"environment variable name {name!r} is not [A-Za-z_][A-Za-z0-9_]*")


class Shell(ABC):
    name: str
    separator: str

    @abstractmethod
    def quote(self, value: str) -> str:
        """``value`` as one literal word of this shell."""

    @abstractmethod
    def command(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        """One command line that runs ``argv`` in ``cwd`` with ``env`` added, and exits
        with its exit code."""

    def join(self, *parts: str) -> str:
        """Join path parts with this platform's separator, without doubling it."""
        cleaned = [p.rstrip("/\\") if i < len(parts) - 1 else p for i, p in enumerate(parts) if p]
        return self.separator.join(cleaned)


class PosixShell(Shell):
    """sh, bash, zsh, dash: single quotes make everything literal except ``'``."""

    name = "sh"
    separator = "/"

    def quote(self, value: str) -> str:
        if "\x00" in value:
            raise UnsafeValue("a NUL byte cannot pass through any shell")
        return shlex.quote(value)

    def command(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        env = dict(env or {})
        _check_env(env)
        steps = []
        if cwd:
            steps.append(f"cd -- {self.quote(cwd)}")
        if env:
            steps.append("export " + " ".join(f"{k}={self.quote(v)}" for k, v in env.items()))
        steps.append("exec " + " ".join(self.quote(a) for a in argv))
        return " && ".join(steps)


#: every character PowerShell accepts as a single quote in a verbatim string
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"


class PowerShell(Shell):
    """PowerShell: verbatim single-quoted strings, in which only single-quote characters
    (ASCII and the four Unicode ones PowerShell also honours) need doubling. Native
    programs get their arguments with ``$PSNativeCommandArgumentPassing = 'Standard'``
    (PowerShell 7.3+), so embedded double quotes are not mangled."""

    name = "powershell"
    separator = "\\"

    def quote(self, value: str) -> str:
        if "\x00" in value:
            raise UnsafeValue("a NUL byte cannot pass through any shell")
        return "'" + "".join(ch * 2 if ch in _PS_QUOTES else ch for ch in value) + "'"

    def command(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        env = dict(env or {})
        _check_env(env)
        steps = ["$ErrorActionPreference = 'Stop'", "$PSNativeCommandArgumentPassing = 'Standard'"]
        if cwd:
            steps.append(f"Set-Location -LiteralPath {self.quote(cwd)}")
        steps += [f"$env:{k} = {self.quote(v)}" for k, v in env.items()]
        steps.append("& " + " ".join(self.quote(a) for a in argv))
        steps.append("exit $LASTEXITCODE")
        return "; ".join(steps)


#: characters cmd.exe treats specially outside double quotes
_CMD_META = set('()%!^"<>&|')


class Cmd(Shell):
    """cmd.exe: each argument is quoted by the MSVCRT rules programs use to split their
    command line (backslashes doubled before a quote, quotes backslash-escaped), then
    every cmd metacharacter is caret-escaped, which only works outside quotes, so the
    whole word is written unquoted-for-cmd. ``%`` and ``!`` cannot be escaped reliably on
    a cmd command line, and a newline ends the command: such values are refused."""

    name = "cmd"
    separator = "\\"

    def _msvcrt(self, value: str) -> str:
        if value and not any(ch in value for ch in ' \t"'):
            return value
        out, backslashes = ['"'], 0
        for ch in value:
            if ch == "\\":
                backslashes += 1
                continue
            if ch == '"':
                out.append("\\" * (backslashes * 2 + 1) + '"')
            else:
                out.append("\\" * backslashes + ch)
            backslashes = 0
        out.append("\\" * (backslashes * 2) + '"')
        return "".join(out)

    def quote(self, value: str) -> str:
        for bad, why in (("\x00", "a NUL byte"), ("\n", "a newline"), ("\r", "a carriage return"),
                         ("%", "'%' (cmd expands %VAR% on its command line)"),
                         ("!", "'!' (cmd may expand !VAR!)")):
            if bad in value:
                raise UnsafeValue(f"{why} cannot be passed through cmd.exe; use the powershell dialect")
        return "".join("^" + ch if ch in _CMD_META else ch for ch in self._msvcrt(value))

    def _set_value(self, value: str) -> str:
        """A value for ``set "K=V"``: inside those quotes cmd takes V literally, except
        that a quote would end it and % or ! would still expand. An empty value cannot be
        set at all: ``set "K="`` removes K (seen against Wine's cmd.exe)."""
        if not value:
            raise UnsafeValue("an empty value cannot be set through cmd.exe (set \"K=\" removes K)")
        if '"' in value:
            raise UnsafeValue("a double quote cannot be set in a cmd.exe environment variable")
        self.quote(value)  # the same refusals as for arguments
        return value

    def command(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        env = dict(env or {})
        _check_env(env)
        steps = []
        if cwd:
            steps.append(f"cd /d {self.quote(cwd)}")
        steps += [f'set "{k}={self._set_value(v)}"' for k, v in env.items()]
        steps.append(" ".join(self.quote(a) for a in argv))
        return " && ".join(steps)


DIALECTS: dict[str, Shell] = {s.name: s for s in (PosixShell(), PowerShell(), Cmd())}

#: a probe whose output differs per dialect: sh prints "sh", PowerShell "ps", cmd "cmd"
DETECT_PROBE = 'echo "$0%COMSPEC%" 2>&1'


def detect(probe_output: str) -> Shell:
    """Tell the remote shell from what :data:`DETECT_PROBE` printed."""
    text = probe_output.strip()
    if "%COMSPEC%" not in text and ("cmd.exe" in text.lower()):
        return DIALECTS["cmd"]
    if text.endswith("%COMSPEC%") and text != "%COMSPEC%":
        return DIALECTS["sh"]
    return DIALECTS["powershell"]
