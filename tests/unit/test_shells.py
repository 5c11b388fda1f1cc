"""Shell dialects: adversarial strings arrive byte-exact. sh is checked against a real
sh; PowerShell and cmd.exe against models of their documented parsing rules."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.transports.shells import Cmd, PosixShell, PowerShell, UnsafeValue, detect

NASTY = "it's \"quoted\" $HOME `id` ; rm -rf / %PATH% & | > < ^ ! \\ \\\" \n tab\t é ✓ ‘smart’"
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


def run_sh(command: str) -> bytes:
    return subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout


@settings(max_examples=150, deadline=None)
@given(value=texts)
def test_sh_argument_and_environment_arrive_byte_exact(value, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dir with 'quote' and $x")
    sh = PosixShell()
    assert run_sh(sh.command(["printf", "%s", value], cwd=str(cwd))) == value.encode()
    got = run_sh(sh.command(["sh", "-c", 'printf %s "$V"; printf "|%s" "$(pwd)"'], env={"V": value}, cwd=str(cwd)))
    assert got == value.encode() + b"|" + str(cwd).encode()


def test_sh_nasty_example_and_exit_code():
    sh = PosixShell()
    assert run_sh(sh.command(["printf", "%s", NASTY])) == NASTY.encode()
    assert subprocess.run(["sh", "-c", sh.command(["sh", "-c", "exit 9"])]).returncode == 9


# -- PowerShell: a model of verbatim (single-quoted) string literals -----------------------
PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def ps_parse_verbatim(token: str) -> str:
    """about_Quoting_Rules: a verbatim string starts and ends with a single-quote
    character; inside, two consecutive single-quote characters stand for one."""
    assert token[0] in PS_QUOTES and token[-1] in PS_QUOTES
    inner, out, i = token[1:-1], [], 0
    while i < len(inner):
        ch = inner[i]
        if ch in PS_QUOTES:
            assert i + 1 < len(inner) and inner[i + 1] in PS_QUOTES, f"unescaped quote at {i} in {token!r}"
            out.append(ch)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


@settings(max_examples=500)
@given(value=texts)
def test_powershell_literal_round_trips(value):
    assert ps_parse_verbatim(PowerShell().quote(value)) == value


def test_powershell_command_shape():
    line = PowerShell().command(["C:\\py\\python.exe", NASTY], env={"K": "a'b"}, cwd="C:\\work dir")
    assert "$PSNativeCommandArgumentPassing = 'Standard'" in line
    assert "Set-Location -LiteralPath 'C:\\work dir'" in line and "$env:K = 'a''b'" in line
    assert line.endswith("exit $LASTEXITCODE")


# -- cmd.exe: caret escaping, then the MSVCRT argv rules ----------------------------------
def cmd_phase(line: str) -> str:
    """cmd.exe outside quotes: ^x stands for x. (Our lines hold no unescaped quote.)"""
    out, i = [], 0
    while i < len(line):
        if line[i] == "^":
            out.append(line[i + 1])
            i += 2
        else:
            assert line[i] not in '"&|<>()', f"unescaped {line[i]!r} would reach cmd's parser"
            out.append(line[i])
            i += 1
    return "".join(out)


def msvcrt_split(line: str) -> list[str]:
    """Microsoft's 'Parsing C command-line arguments' rules (post-2008 CRT)."""
    args, current, in_quotes, i, have = [], [], False, 0, False
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            n = 0
            while i < len(line) and line[i] == "\\":
                n += 1
                i += 1
            if i < len(line) and line[i] == '"':
                current.append("\\" * (n // 2))
                if n % 2:
                    current.append('"')
                    i += 1
                have = True
            else:
                current.append("\\" * n)
                have = True
            continue
        if ch == '"':
            if in_quotes and i + 1 < len(line) and line[i + 1] == '"':
                current.append('"')
                i += 2
                continue
            in_quotes = not in_quotes
            have = True
            i += 1
            continue
        if ch in " \t" and not in_quotes:
            if have or current:
                args.append("".join(current))
            current, have = [], False
            i += 1
            continue
        current.append(ch)
        have = True
        i += 1
    if have or current:
        args.append("".join(current))
    return args


cmd_safe = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r%!"), max_size=40)


@settings(max_examples=500)
@given(args=st.lists(cmd_safe, min_size=1, max_size=4))
def test_cmd_arguments_round_trip_through_both_parsers(args):
    cmd = Cmd()
    line = " ".join(cmd.quote(a) for a in args)
    assert msvcrt_split(cmd_phase(line)) == args


@pytest.mark.parametrize("value", ["%PATH%", "a!b", "line\nbreak", "cr\r"])
def test_cmd_refuses_what_it_cannot_carry(value):
    with pytest.raises(UnsafeValue):
        Cmd().quote(value)
    with pytest.raises(UnsafeValue):
        Cmd().command(["x"], env={"K": value})


def test_cmd_refuses_an_empty_environment_value_which_set_would_remove():
    assert Cmd().quote("") == '^"^"'
    with pytest.raises(UnsafeValue, match="removes K"):
        Cmd().command(["x"], env={"K": ""})


def test_environment_names_are_validated_in_every_dialect():
    for shell in (PosixShell(), PowerShell(), Cmd()):
        with pytest.raises(UnsafeValue, match="name"):
            shell.command(["x"], env={"A;rm -rf /": "1"})


def test_join_and_detection():
    assert PosixShell().join("/work/", "in", "model.onnx") == "/work/in/model.onnx"
    assert PowerShell().join("C:\\work\\", "in") == "C:\\work\\in"
    assert detect("bash%COMSPEC%").name == "sh"
    assert detect('"$0C:\\Windows\\system32\\cmd.exe"').name == "cmd"
    assert detect("%COMSPEC%").name == "powershell"
