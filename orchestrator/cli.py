"""The ``modelpack`` command: argument parsing and output only.

Exit codes: 0 all good, 1 a job (or verification) failed, 2 a usage, configuration or
input error, 128 + the signal's number when cancelled (130 SIGINT, 143 SIGTERM, 129
SIGHUP; see interrupts.py). Input errors print one line naming the file, the key and
the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .errors import InputError
from .interrupts import Cancelled, cancellable
from .interrupts import exit_code as interrupt_exit_code
from .execute import StageTimeouts

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2


def _out(text: str = "") -> None:
    print(text, flush=True)


# -- inventory -------------------------------------------------------------------------
def _inventory(path: Path | None):
    from .inventory import default_inventory, find_inventory_file, load_inventory

    found = find_inventory_file(path)
    if found is not None:
        return load_inventory(found)
    return default_inventory(_local_docker_answers())


def _local_docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # any failure to reach the engine means "not there"
        return False


#: how long a host may take to answer at first unless --connect-timeout says otherwise: a
#: dead or silent host costs this much of the run, once
FIRST_ANSWER = 15.0


def _transport(host: Any, first_answer: float | None = None) -> Any:
    """A host's transport; Docker hosts build an image the first time a job needs it.
    ``first_answer`` (the user's --connect-timeout) bounds the first contact."""
    from .images import on_demand
    from .transports import make_transport

    return make_transport(host, on_demand(lambda line: print(f"modelpack: {host.name}: {line}", file=sys.stderr,
                                                              flush=True)), first_answer or FIRST_ANSWER)


def _check_output(path: Path, key: str, folder: bool) -> None:
    """Refuse an output path that cannot be written, before any host is touched: a build
    that has run for an hour must not fail at its last step."""
    if folder and path.exists() and not path.is_dir():
        raise InputError(path, key, "exists and is not a folder")
    if not folder and path.is_dir():
        raise InputError(path, key, "is a folder; give a file name")
    start = path if folder else path.parent
    existing = next(p for p in [start, *start.parents] if p.exists())
    if not existing.is_dir():
        raise InputError(path, key, f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(path, key, f"{existing} is not writable")


# -- build -----------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    from .collect import staging_dir
    from .plan import plan
    from .preflight import prepare
    from .report.compare import regressions
    from .report.console import ConsoleEvents
    from .cache import DurationHistory, PackageCache
    from .report.html import render_report
    from .report.junit import junit_xml
    from .report.summary import summary, write_json
    from .storage import cache_root, write_atomic
    from .scheduler import Scheduler
    from .spec import load_spec

    _check_output(Path(args.out), "--out", folder=True)
    if args.json:
        _check_output(Path(args.json), "--json", folder=False)
    previous = _read_summary(args.compare) if args.compare else None
    run_id = uuid.uuid4().hex[:12]
    attestations = _attestations(args, run_id)  # a bad key fails here, before any host is touched
    specs = [load_spec(p, args.allow_outside) for p in _spec_files(args.spec)]
    inventory = _inventory(args.hosts)
    jobs = plan(specs, args.target, args.model)
    run = prepare(jobs, inventory, lambda host: _transport(host, args.connect_timeout), args.keep)
    cache = None if args.no_cache else PackageCache(args.cache_dir or cache_root())
    history = DurationHistory((args.cache_dir or cache_root()) / "durations.json")
    jobs = history.longest_first(jobs)

    out_dir = Path(args.out)
    staging = staging_dir(out_dir)
    scheduler = Scheduler(
        jobs, run.eligible, run.transports, out_dir, staging,
        run_labels={"org.modelpack.run": run_id}, disabled=run.down,
        timeouts=StageTimeouts(args.connect_timeout or StageTimeouts.connect, args.push_timeout, args.timeout,
                               args.pull_timeout),
        max_parallel=args.jobs, cache=cache, cache_key_for=run.cache_key, rebuild=args.rebuild, emulated=run.emulated,
        attest=attestations,
    )
    console = ConsoleEvents(scheduler.records, sys.stdout, verbosity=args.verbosity)
    scheduler.events = console
    try:
        with console:
            records = scheduler.run()
        for record in records:
            if record.status == "built":
                if args.verbosity >= 0:
                    cached = " from cache" if record.cached else ""
                    twin = f" (+ {record.zip.name})" if record.zip else ""
                    _out(f"built   {record.job.id}: {record.package}{twin}{cached} (sha256 {record.sha256})")
            else:
                _out(f"{record.status:7} {record.job.id}: [{record.failure}] {record.reason}")
        history.record(records)
        data = summary(records, run_id, inventory.source)
        # written through the staging folder: --out never holds a partial file
        write_json(out_dir / "summary.json", data, staging)
        write_atomic(out_dir / "report.html", render_report(data, previous), staging)
        write_atomic(out_dir / "junit.xml", junit_xml(data), staging)
    except KeyboardInterrupt as interrupt:
        scheduler.cancel()
        print(f"modelpack: {interrupt_name(interrupt)}; build containers and workspaces removed", file=sys.stderr)
        return interrupt_exit_code(interrupt)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if args.json:
        write_json(Path(args.json), data)
    if args.verbosity >= 0:
        _out(f"report: {out_dir / 'report.html'}")
    found = regressions(data, previous) if previous else []
    for regression in found:
        _out(f"regression: {regression.describe()}")
    if any(r.status != "built" for r in records) or (found and args.fail_on_regression):
        return EXIT_FAILED
    return EXIT_OK


def _spec_files(paths: list[Path]) -> list[Path]:
    """Spec files as given; a folder stands for every modelpack.yaml below it."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("modelpack.yaml"))
            if not found:
                raise InputError(path, None, "folder holds no modelpack.yaml")
            files += found
        else:
            files.append(path)
    return files


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, None, f"not a readable summary.json: {exc}") from None
    from .report.summary import RunSummary
    from .runtime.schema import SchemaError

    try:
        typed = RunSummary.check(data)
    except SchemaError as exc:
        raise InputError(path, exc.where, f"{exc.problem}; not a modelpack summary.json") from None
    return dataclasses.asdict(typed)  # every key the definition has, optional ones included


def cmd_report(args: argparse.Namespace) -> int:
    from .report.compare import regressions
    from .report.html import render_report
    from .storage import write_atomic

    data = _read_summary(args.summary)
    previous = _read_summary(args.compare) if args.compare else None
    out = Path(args.out) if args.out else Path(args.summary).with_name("report.html")
    write_atomic(out, render_report(data, previous))
    _out(f"wrote {out}")
    for regression in regressions(data, previous) if previous else []:
        _out(f"regression: {regression.describe()}")
    return EXIT_OK


# -- hosts -----------------------------------------------------------------------------
def cmd_hosts(args: argparse.Namespace) -> int:
    from .targets import TARGETS

    inventory = _inventory(args.hosts)
    chosen = _chosen_hosts(inventory, args.names)
    if args.action == "bootstrap":
        return _bootstrap_hosts(inventory, chosen, bool(args.names), args.wheelhouse, args.connect_timeout)
    if args.action == "clean":
        return _clean_hosts(chosen, args.connect_timeout)
    rows: list[dict[str, Any]] = []
    if args.action == "list":
        rows = [h.model_dump(exclude_defaults=True) for h in inventory.hosts]
        if args.json:
            _out(json.dumps({"inventory": inventory.source, "hosts": rows}, indent=2))
        else:
            _out(f"inventory: {inventory.source}")
            for h in inventory.hosts:
                state = "" if h.enabled else " (disabled)"
                _out(f"{h.name:20} {h.transport:7} slots={h.slots} targets={','.join(h.targets)}"
                     f" features={','.join(h.features) or '-'}{state}")
        return EXIT_OK

    from .inventory import rejection

    hosts = [h for h in inventory.hosts if h.enabled]
    environments = {h.name: sorted({TARGETS[t].environment for t in h.targets}) for h in hosts}
    ready_hosts = [h for h in hosts if all(rejection(h, TARGETS[t]) is None for t in h.targets)]

    from .preflight import probe_all

    health = probe_all({h.name: _transport(h, args.connect_timeout) for h in ready_hosts},
                        {h.name: environments[h.name] for h in ready_hosts})
    for host in inventory.hosts:
        for target in host.targets:
            why_not = rejection(host, TARGETS[target])
            status = health.get((host.name, TARGETS[target].environment)) if why_not is None else None
            ok = status is not None and status.reachable
            rows.append({
                "host": host.name, "target": target, "ready": ok,
                "detail": why_not or (status.detail if status else ""),
                "emulated": status.emulated if status else None,
                "emulation": status.facts.get("emulation") if status else None,
            })
    if args.json:
        _out(json.dumps({"inventory": inventory.source, "checks": rows}, indent=2))
    else:
        for row in rows:
            mark = "ok  " if row["ready"] else "FAIL"
            emulated = f" (emulated: {row['emulation']})" if row["emulation"] else " (emulated)" if row["emulated"] else ""
            _out(f"{mark} {row['host']:20} {row['target']:16} {row['detail']}{emulated}")
    return EXIT_OK if all(r["ready"] for r in rows) else EXIT_FAILED


def _chosen_hosts(inventory: Any, names: list[str]) -> list[Any]:
    known = {h.name: h for h in inventory.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(inventory.source, "hosts", f"no host named {', '.join(unknown)} (have: {', '.join(known)})")
    return [known[n] for n in names] if names else [h for h in inventory.hosts if h.enabled]


def _bootstrap_hosts(inventory: Any, hosts: list[Any], named: bool, wheelhouse: Path | None,
                     first_answer: float | None) -> int:
    from .bootstrap import BootstrapError, bootstrap
    from .transports.base import TransportError

    not_ssh = [h.name for h in hosts if h.transport != "ssh"]
    if not named:  # no names: every enabled SSH host
        hosts, not_ssh = [h for h in hosts if h.transport == "ssh"], []
        if not hosts:
            raise InputError(inventory.source, "hosts", "no ssh host to bootstrap")
    if not_ssh:
        raise InputError(inventory.source, "hosts", f"{', '.join(not_ssh)}: only ssh hosts are bootstrapped"
                         " (Docker hosts use the images from scripts/build-images)")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise InputError(wheelhouse, None, "--wheelhouse is not a folder")
    failed = False
    for host in hosts:
        try:
            done = bootstrap(_transport(host, first_answer), wheelhouse, lambda step: _out(f"{host.name}: {step}"),
                             host.pins)
        except (BootstrapError, TransportError) as exc:
            _out(f"FAIL {host.name}: {exc}")
            failed = True
            continue
        how = "reused" if done.reused else f"created ({_mb(done.sent_bytes)} sent)"
        _out(f"ok   {host.name}: {done.environment} environment {done.env_hash[:12]} {how},"
             f" {done.wheels} wheels, builds use {done.python}")
    return EXIT_FAILED if failed else EXIT_OK


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _clean_hosts(hosts: list[Any], first_answer: float | None) -> int:
    from .transports.base import TransportError

    failed = False
    for host in hosts:
        try:
            removed = _transport(host, first_answer).reap()
        except TransportError as exc:
            _out(f"FAIL {host.name}: {exc}")
            failed = True
            continue
        _out(f"ok   {host.name}: removed {len(removed)}" + "".join(f"\n       {item}" for item in removed))
    return EXIT_FAILED if failed else EXIT_OK


# -- package commands --------------------------------------------------------------------
def _checked_package(path: Path, into: Path | None = None) -> dict[str, Any]:
    """The manifest of a completely checked package (its files left in ``into``)."""
    from .collect import VerificationError, verify_archive

    if not path.is_file():
        raise InputError(path, None, "file not found")
    try:
        return verify_archive(path, into=into)
    except VerificationError as exc:
        raise InputError(path, None, str(exc).removeprefix(f"{path.name}: ")) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    manifest = _checked_package(args.package)
    if args.html:
        from .report.html import render_card

        sys.stdout.write(render_card(manifest, _attestations_in(args.package)))
        return EXIT_OK
    if args.json:
        _out(json.dumps(manifest, indent=2, sort_keys=True))
        return EXIT_OK
    for line in _text_card(manifest):
        _out(line)
    _out(f"  attestations  {_attestations_in(args.package)}")
    return EXIT_OK


def _attestations_in(package: Path) -> str:
    """Which attestations a (verified) package archive carries, and its signer's key id."""
    import tarfile

    from .runtime.signature import ATTESTATIONS, SIGNATURE, bundle_signer

    with tarfile.open(package, "r:gz") as tar:
        present = {m.name: m for m in tar.getmembers() if m.name in ATTESTATIONS and m.isfile()}
        signer = None
        if SIGNATURE in present:
            signer = bundle_signer(tar.extractfile(present[SIGNATURE]).read()) or "unreadable"  # type: ignore[union-attr]
    if not present:
        return "none (unsigned; the reproducible payload only)"
    signed = f"signed by key {signer[:16]}" if signer else "unsigned"
    return f"{signed}; {', '.join(sorted(present))}"


def _at(value: Any, *path: Any, default: Any = "-") -> Any:
    """``value[path[0]][path[1]]...``, or ``default`` where the path does not exist. A
    manifest is checked against its schema, but its free-form sections (compiler,
    provenance, candidates) come from whoever made the package."""
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return default
    return default if value is None else value


def _text_card(m: dict[str, Any]) -> list[str]:
    """`modelpack inspect`'s summary of a package, one line per fact."""
    t = m["target"]
    lines = [f"{m['name']} {m['version']} for {t['name']} ({t['os']}/{t['arch']})",
             f"  source model  sha256 {m['source']['sha256']}"]
    for kind in ("inputs", "outputs"):
        for tensor in m[kind]:
            ranges = [f"{dim}={_at(r, 0)}..{_at(r, 1, default='')}" for dim, r in
                      zip(tensor["shape"], tensor.get("range") or []) if r]
            accepts = f" ({', '.join(ranges)})" if ranges else ""
            lines.append(f"  {kind[:-1]:6} {tensor['name']}: {tensor['dtype']}{tensor['shape']}{accepts}")
    if _at(m, "shapes", "static", default=None):
        lines.append(f"  shapes        STATIC: {m['shapes']['static']}")
    functions = m.get("functions")
    if isinstance(functions, dict):
        steps = " > ".join(str(_at(s, "op")) for part in ("pre", "post", "runtime")
                           for s in (_at(functions, part, default=[]) if isinstance(_at(functions, part), list) else []))
        where = _at(functions, "applied_by")
        lines.append(f"  functions     {steps} (in the {where}; labels in the runtime)"
                     if _at(functions, "runtime", default=None) else f"  functions     {steps} (in the {where})")
    c = m.get("compiler")
    variant = f" variant {_at(c, 'variant')}" if _at(c, "variant", default=None) else ""
    options = _at(c, "options", default={})
    lines.append(f"  compiler      {_at(c, 'name')} {_at(c, 'version')}"
                 f" {json.dumps(options, sort_keys=True, default=str)}{variant}")
    for artifact in m["artifacts"]:
        lines.append(f"  artifact      {artifact['path']} ({artifact['format']}, {artifact['role']})")
    emulated = " under EMULATION" if _at(m, "selection", "emulated", default=False) else ""
    how = "benchmarked" + emulated if _at(m, "selection", "measured", default=False) else "accuracy only"
    decision = _at(m, "selection", "benchmark", "decision", default=None)
    if decision is not None:
        how += (f"; ranking {decision} after {_at(m, 'selection', 'benchmark', 'rounds')} rounds (95 % intervals);"
                f" host contention {_at(m, 'selection', 'benchmark', 'contention')}x")
    lines.append(f"  candidates    ({how})")
    for row in m.get("candidates") or []:
        median, p90 = _at(row, "latency_ms", "median", default=None), _at(row, "latency_ms", "p90", default=None)
        timing = f" median {median} ms p90 {p90} ms" if median is not None else ""
        lines.append(f"    {str(_at(row, 'id')):14} {str(_at(row, 'status')):11}{timing} {_at(row, 'reason', default='')}")
    selftest = m.get("selftest")
    if selftest is None:
        lines.append("  self-test     not recorded")
    else:
        tolerance = m.get("tolerance") or {}
        own = _at(tolerance, "outputs", default={})
        own_gates = "".join(f"; {name}: atol={_at(o, 'atol')}, rtol={_at(o, 'rtol')}"
                            for name, o in (own.items() if isinstance(own, dict) else []))
        lines.append(f"  self-test     {'passed' if selftest['passed'] else 'FAILED'} on {_at(selftest, 'ran_on')}"
                     f" (atol={_at(tolerance, 'atol')}, rtol={_at(tolerance, 'rtol')}{own_gates})")
        artifacts = _at(selftest, "artifacts", default={})
        for path, result in (artifacts.items() if isinstance(artifacts, dict) else []):
            outputs = _at(result, "outputs", default={})
            for name, o in (outputs.items() if isinstance(outputs, dict) else []):
                lines.append(f"    {path} {name}: max abs {_at(o, 'max_abs')}, max rel {_at(o, 'max_rel')}")
    empty = _at(m, "samples", "empty_outputs", default={})
    for name, how in (empty.items() if isinstance(empty, dict) else []):
        lines.append(f"  gate note     output {name!r}: {how}")
    prov = m.get("provenance")
    lines.append(f"  built on      {_at(prov, 'host')} via {_at(prov, 'transport')}"
                 f" image {_at(prov, 'image')} packager {_at(prov, 'packager_version')}")
    lines.append(f"  files         {len(m['files'])} checked against sha256")
    return lines


def _parse_inputs(values: list[str], manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """``--input NAME=FILE.npy`` values, each checked against the package's inputs from
    its header before the data is read: a header claiming 10^15 elements must not be
    allocated, and a FIFO must not be waited on."""
    inputs = {tensor["name"]: tensor for tensor in manifest["inputs"]}
    feeds = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise InputError(None, "--input", f"{value!r}: expected NAME=FILE.npy")
        key = f"--input {name}"
        if name not in inputs:
            raise InputError(None, key, f"the package has no input {name!r} (its inputs: {', '.join(inputs)})")
        path = Path(file)
        if not path.is_file():
            raise InputError(path, key, "file not found" if not path.exists() else "not a regular file")
        try:
            with open(path, "rb") as data:
                version = np.lib.format.read_magic(data)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(data)
                holds = path.stat().st_size - data.tell()
        except (OSError, ValueError) as exc:
            raise InputError(path, key, f"not a .npy array: {exc}") from None
        wanted = inputs[name]
        if dtype.hasobject or len(shape) != len(wanted["shape"]):
            raise InputError(path, key, f"holds {dtype}{list(shape)}; the package's input {name!r} is"
                                        f" {wanted['dtype']}{wanted['shape']}")
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if claimed != holds:
            raise InputError(path, key, f"its header says {dtype}{list(shape)} ({claimed} bytes) but it holds"
                                        f" {holds} bytes")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(path, key, f"cannot read: {exc}") from None
    return feeds


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime import PackageError, load
    from .storage import write_atomic

    out = Path(args.output)
    _check_output(out, "--output", folder=False)
    with tempfile.TemporaryDirectory(prefix="modelpack-run-") as tmp:
        feeds = _parse_inputs(args.input, _checked_package(args.package, into=Path(tmp)))
        try:
            session = load(tmp, threads=args.threads)
            outputs = session.run(feeds)
        except PackageError as exc:
            raise InputError(args.package, None, str(exc)) from None
        except Exception as exc:  # the engine's own error on these inputs: the run failed
            from .packager.causes import exception_cause

            print(f"modelpack: error: {args.package}: the engine failed on these inputs: {exception_cause(exc)}",
                  file=sys.stderr)
            return EXIT_FAILED
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda stream: np.savez(stream, **outputs))
    for name, value in outputs.items():
        dtype = "string" if value.dtype.kind == "U" else str(value.dtype)
        shown = f" = {value.tolist()}" if value.size <= 10 else ""  # labels, top-k, a few boxes
        _out(f"{name}: {dtype}{list(value.shape)}{shown}")
    _out(f"wrote {out}")
    return EXIT_OK


def _attestations(args: argparse.Namespace, run_id: str) -> Any:
    """The hook that attests each package before it is published, when asked to
    (``--attest``, or ``--sign-key``, which also signs): None otherwise, and the package
    stays exactly the reproducible payload."""
    if not (args.sign_key or args.attest):
        return None
    import time

    from .attest import RunFacts, SigningKey, attest
    from .runtime.checks import content_sha256

    key = SigningKey.load(args.sign_key, "--sign-key") if args.sign_key else None
    run = RunFacts(run_id, args.invocation, time.time())
    return lambda job, archive: attest(archive, json.loads(job.packager_job({}).to_json()),
                                       content_sha256(job.spec.path), run, key)


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign an existing package in place: every file, attestations included."""
    from .attest import SigningKey, rewrite, sign_folder
    from .runtime.signature import SIGNATURE

    key = SigningKey.load(args.key, "--key")
    _checked_package(args.package)
    rewrite(args.package, lambda folder: ((folder / SIGNATURE).unlink(missing_ok=True), sign_folder(folder, key)))
    _out(f"{args.package.name}: signed with key {key.key_id[:16]}")
    return EXIT_OK


def _signature_check(package: Path, public_key: Path) -> str | None:
    """None when ``package`` is signed by ``public_key``'s owner, else why not."""
    from .runtime.archive import extract
    from .runtime.signature import SignatureError, verify_signature

    if not public_key.is_file():
        raise InputError(public_key, "--public-key", "file not found")
    with tempfile.TemporaryDirectory(prefix="modelpack-signature-") as tmp:
        extract(package, Path(tmp))
        try:
            verify_signature(Path(tmp), public_key)
        except SignatureError as exc:
            return f"{package}: {exc}"
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    from .execute import verify_remotely
    from .inventory import eligible_hosts
    from .targets import get_target
    from .transports.base import TransportError

    manifest = _checked_package(args.package)
    _out(f"{args.package.name}: checksums of {len(manifest['files'])} files match the manifest")
    if args.public_key is not None:
        problem = _signature_check(args.package, args.public_key)
        if problem:
            print(f"modelpack: error: {problem}", file=sys.stderr)
            return EXIT_FAILED
        _out(f"{args.package.name}: signature matches every file and the key {args.public_key}")
    target = get_target(manifest["target"]["name"])
    inventory = _inventory(args.hosts)
    failures = []
    for host in eligible_hosts(inventory, target):
        transport = _transport(host)
        with tempfile.TemporaryDirectory(prefix="modelpack-verify-") as tmp:
            try:
                passed, message, _ = verify_remotely(
                    args.package.resolve(), target.environment, transport, Path(tmp), args.timeout,
                    {"org.modelpack.verify": uuid.uuid4().hex[:12]}, lambda line: None,
                )
            except TransportError as exc:
                failures.append(f"{host.name}: {exc}")
                continue
        if passed:
            _out(f"{args.package.name}: {message} on {host.name} (fresh workspace)")
            return EXIT_OK
        _out(f"{args.package.name}: self-test FAILED on {host.name}: {message}")
        return EXIT_FAILED
    _out(f"{args.package.name}: no host could run the self-test ({'; '.join(failures)})")
    return EXIT_FAILED


# -- OCI registries -------------------------------------------------------------------------
def _registry(args: argparse.Namespace, reference: Any) -> Any:
    """The registry a command names, with the credentials and TLS settings the user gave.
    The password comes from stdin or the environment, never from the command line (where
    other users and shell history would see it)."""
    from .registry import Access, Registry

    if args.ca_file is not None and not args.ca_file.is_file():
        raise InputError(args.ca_file, "--ca-file", "file not found")
    if args.password_stdin and args.username is None:
        raise InputError(None, "--password-stdin", "needs --username")
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else os.environ.get(
        "MODELPACK_REGISTRY_PASSWORD")
    return Registry(reference.registry, Access(plain_http=args.plain_http, ca_file=args.ca_file,
                                                username=args.username, password=password, timeout=args.timeout))


def _packages_in(dist: Path) -> list[Path]:
    if dist.is_dir():
        found = sorted(dist.glob("*.tar.gz"))
        if not found:
            raise InputError(dist, None, "holds no package (*.tar.gz)")
        return found
    if not dist.is_file():
        raise InputError(dist, None, "file not found")
    return [dist]


def cmd_publish(args: argparse.Namespace) -> int:
    """Every package in DIST, checked first (a bad one stops the command before anything
    is pushed), then pushed one by one; a registry failure stops at that package, and the
    ones before it are whole and tagged."""
    from .registry import Reference, RegistryError, publish_package

    namespace = Reference.parse(args.reference, "REFERENCE")
    if namespace.digest:
        raise InputError(None, "REFERENCE", "publish names a repository (and a tag), not a digest")
    packages = [(path, _checked_package(path)) for path in _packages_in(args.dist)]
    if args.public_key is not None:
        for path, _ in packages:
            problem = _signature_check(path, args.public_key)
            if problem:
                print(f"modelpack: error: {problem}; nothing was published", file=sys.stderr)
                return EXIT_FAILED
    done = 0
    try:
        registry = _registry(args, namespace)
        for path, manifest in packages:
            with tempfile.TemporaryDirectory(prefix="modelpack-publish-") as tmp:
                published = publish_package(registry, namespace, path, manifest, Path(tmp))
            where = f"{namespace.registry}/{published.repository}"
            how = "unchanged" if published.unchanged else "pushed"
            extras = f", referrers: {', '.join(published.referrers)}" if published.referrers else ""
            _out(f"{path.name}: {how} {where}:{' :'.join(published.tags)} @{published.digest}{extras}")
            done += 1
    except RegistryError as exc:
        print(f"modelpack: error: {exc} (published {done} of {len(packages)} before it; no tag names a partial"
              " artifact)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    """Fetch one package, check its blob digest, its checksums, that it is the package
    its annotations say, and (with --public-key) its signature, before it appears in
    --out under its own name."""
    from .collect import VerificationError, publish, staging_dir, verify_archive, zip_from_archive, zip_twin_name
    from .packager.job import package_filename
    from .registry import Reference, RegistryError, package_annotations, read_package_manifest
    from .targets import TARGETS

    reference = Reference.parse(args.reference, "REFERENCE")
    if reference.tag is None and reference.digest is None:
        raise InputError(None, "REFERENCE", f"oci://{reference} names no tag or digest; add :TAG or @sha256:...")
    out = Path(args.out)
    _check_output(out, "--out", folder=True)
    if args.public_key is not None and not args.public_key.is_file():
        raise InputError(args.public_key, "--public-key", "file not found")
    staging = None
    try:
        registry = _registry(args, reference)
        document, digest = read_package_manifest(registry, reference)
        staging = staging_dir(out)
        staged = staging / "package.tar.gz"
        registry.pull_blob(reference.repository, document["layers"][0], staged)
        try:
            manifest = verify_archive(staged)
        except VerificationError as exc:
            raise RegistryError(f"{reference}: the package is corrupt: {str(exc).removeprefix(staged.name + ': ')}")
        said = document.get("annotations") or {}
        wrong = [f"{k} {said.get(k)!r} (the package says {v!r})" for k, v in package_annotations(manifest).items()
                 if said.get(k) != v]
        if wrong:
            raise RegistryError(f"{reference}: the annotations do not match the package: {'; '.join(wrong)}")
        if args.public_key is not None:
            problem = _signature_check(staged, args.public_key)
            if problem:
                raise RegistryError(problem.replace(str(staged), str(reference)))
        target = manifest["target"]["name"]
        name = package_filename(manifest["name"], manifest["version"], target)
        files = [(staged, name)]
        if args.zip:
            if target not in TARGETS or TARGETS[target].os != "windows":
                raise InputError(None, "--zip", f"applies to windows-x86_64 packages; {reference} is {target}")
            files.insert(0, (staging / zip_twin_name(name), zip_twin_name(name)))
            zip_from_archive(staged, files[0][0])
        publish(files, out)
    except RegistryError as exc:
        print(f"modelpack: error: {exc}; nothing was written to {out}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    signed = ", signature verified" if args.public_key is not None else ""
    twin = f" (and {files[0][1]})" if args.zip else ""
    _out(f"{name}{twin}: pulled from {reference} @{digest}; checksums of {len(manifest['files'])} files match{signed}")
    return EXIT_OK


# -- CI matrix and init ------------------------------------------------------------------
def cmd_matrix(args: argparse.Namespace) -> int:
    import yaml

    from .plan import plan
    from .spec import load_spec

    jobs = plan([load_spec(p, args.allow_outside) for p in _spec_files(args.spec)], args.target, args.model)
    rows = [{"spec": str(j.spec.path), "name": j.spec.spec.name, "version": j.spec.spec.version,
             "target": j.target.name, "package": j.package_filename} for j in jobs]
    if args.format == "github":
        _out(json.dumps({"include": rows}))
    elif args.format == "gitlab":
        matrix = [{"SPEC": r["spec"], "TARGET": r["target"]} for r in rows]
        _out(yaml.safe_dump({"parallel": {"matrix": matrix}}, sort_keys=False).rstrip())
    else:
        _out(json.dumps(rows, indent=2))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from .scaffold import render
    from .storage import write_atomic
    from .spec import load_spec

    out = args.output or args.model.with_name("modelpack.yaml")
    if out.exists() and not args.force:
        raise InputError(out, None, "already exists; use --force to overwrite it")
    text = render(args.model, out.parent, _inventory(args.hosts))
    write_atomic(out, text)
    try:
        load_spec(out)
    except InputError as exc:
        _out(f"wrote {out}; it needs your attention before it builds: {exc}")
        return EXIT_FAILED
    _out(f"wrote {out}")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------
def _verbosity(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const=-1,
                       help="print only failures and the final lines")
    group.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const=1,
                       help="also stream the packagers' output")
    p.set_defaults(verbosity=0)


class _Parser(argparse.ArgumentParser):
    """Bad command-line input is one line and exit 2, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"modelpack: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    """A time limit: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def _connect_timeout(command: argparse.ArgumentParser, text: str) -> None:
    command.add_argument("--connect-timeout", type=_seconds, default=None, help=text)


def _allow_outside(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-outside", action="append", type=Path, default=[], metavar="FOLDER",
                         help="let specs name files under FOLDER too (by default a spec reaches only its own"
                              " folder; repeatable)")


def _registry_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP (no TLS)")
    command.add_argument("--ca-file", type=Path, metavar="CA.pem", help="trust this CA for the registry's TLS")
    command.add_argument("--username", default=os.environ.get("MODELPACK_REGISTRY_USERNAME"),
                         help="registry user (default: $MODELPACK_REGISTRY_USERNAME, else the Docker config's);"
                              " the password is read from $MODELPACK_REGISTRY_PASSWORD or --password-stdin")
    command.add_argument("--password-stdin", action="store_true", help="read the registry password from stdin")
    command.add_argument("--timeout", type=_seconds, default=60.0, help="time limit per registry request, seconds")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="modelpack", description="Package one ONNX model for every target platform.")
    p.add_argument("--version", action="version", version=f"modelpack {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="package models on matching build hosts")
    b.add_argument("spec", nargs="+", type=Path, help="modelpack.yaml files, or folders holding them")
    b.add_argument("--hosts", type=Path, help="inventory file (default: ./hosts.yaml, else built-in)")
    b.add_argument("--target", action="append", help="only these targets (glob; repeatable)")
    b.add_argument("--model", action="append", help="only these package names (glob; repeatable)")
    _allow_outside(b)
    b.add_argument("--sign-key", type=Path, metavar="KEY.pem",
                   help="sign every package with this elliptic-curve private key (adds provenance and an ML-BOM)")
    b.add_argument("--attest", action="store_true",
                   help="add SLSA provenance and a CycloneDX ML-BOM to every package, unsigned")
    b.add_argument("--out", default="dist", help="output folder (default: dist)")
    b.add_argument("--jobs", "-j", type=_count, help="at most this many jobs at once (default: all host slots)")
    b.add_argument("--no-cache", action="store_true", help="neither use nor fill the package cache")
    b.add_argument("--rebuild", action="store_true", help="build even when cached, and refresh the cache")
    b.add_argument("--cache-dir", type=Path, help="package cache (default: $MODELPACK_CACHE or ~/.cache/modelpack)")
    b.add_argument("--json", help="write the run summary to this file")
    b.add_argument("--timeout", type=_seconds, default=StageTimeouts.package,
                   help="packaging time limit per attempt, seconds")
    _connect_timeout(b, f"time limit for a host's first answer and to open a workspace there (container, SSH"
                        f" session), seconds (default: {FIRST_ANSWER:g} and {StageTimeouts.connect:g})")
    b.add_argument("--push-timeout", type=_seconds, default=StageTimeouts.push,
                   help="time limit to send the model and the packager to a host, seconds")
    b.add_argument("--pull-timeout", type=_seconds, default=StageTimeouts.pull,
                   help="time limit to fetch the package back, seconds")
    b.add_argument("--keep", action="store_true",
                   help="leave each attempt's work directory on SSH and local hosts (Docker containers are"
                        " always removed); `hosts clean` removes kept SSH ones once their lease expires")
    b.add_argument("--compare", type=Path, metavar="PREVIOUS_SUMMARY", help="flag regressions against a previous summary.json")
    b.add_argument("--fail-on-regression", action="store_true", help="exit 1 when --compare finds regressions")
    _verbosity(b)
    b.set_defaults(func=cmd_build)

    rp = sub.add_parser("report", help="render report.html from a summary.json")
    rp.add_argument("summary", type=Path)
    rp.add_argument("--compare", type=Path, metavar="PREVIOUS_SUMMARY")
    rp.add_argument("--out", type=Path, help="default: report.html next to the summary")
    rp.set_defaults(func=cmd_report)

    mx = sub.add_parser("matrix", help="print the job matrix for CI systems")
    mx.add_argument("spec", nargs="+", type=Path)
    mx.add_argument("--target", action="append", help="only these targets (glob; repeatable)")
    mx.add_argument("--model", action="append", help="only these package names (glob; repeatable)")
    _allow_outside(mx)
    mx.add_argument("--format", choices=["github", "gitlab", "json"], default="json")
    mx.set_defaults(func=cmd_matrix)

    it = sub.add_parser("init", help="write a commented modelpack.yaml for a model")
    it.add_argument("model", type=Path)
    it.add_argument("--output", type=Path, help="default: modelpack.yaml next to the model")
    it.add_argument("--hosts", type=Path)
    it.add_argument("--force", action="store_true", help="overwrite an existing spec")
    it.set_defaults(func=cmd_init)

    h = sub.add_parser("hosts", help="list, check, bootstrap or clean the build hosts")
    h.add_argument("action", choices=["list", "check", "bootstrap", "clean"],
                   help="bootstrap: install the pinned engines into a venv on SSH hosts;"
                        " clean: remove expired workspaces and stale files from hosts")
    h.add_argument("names", nargs="*", metavar="HOST",
                   help="only these hosts (default: every enabled host; for bootstrap, every enabled SSH host)")
    h.add_argument("--wheelhouse", type=Path, help="bootstrap: install these wheels instead of downloading the pins")
    h.add_argument("--hosts", type=Path)
    h.add_argument("--json", action="store_true")
    _connect_timeout(h, f"time limit for a host's first answer, seconds (default: {FIRST_ANSWER:g})")
    h.set_defaults(func=cmd_hosts)

    i = sub.add_parser("inspect", help="verify a package's checksums and show its manifest")
    i.add_argument("package", type=Path)
    i.add_argument("--json", action="store_true", help="print the manifest")
    i.add_argument("--html", action="store_true", help="print the package card as a self-contained HTML page")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run a package on this machine")
    r.add_argument("package", type=Path)
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    r.add_argument("--output", required=True, metavar="OUT.npz")
    r.add_argument("--threads", type=_count, help="CPU threads for the engine (default: the package's setting,"
                                                  " else the engine's own)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("verify", help="checksums + self-test on a host matching the package's target")
    v.add_argument("package", type=Path)
    v.add_argument("--hosts", type=Path)
    v.add_argument("--timeout", type=_seconds, default=600.0)
    v.add_argument("--public-key", type=Path, metavar="PUB.pem",
                   help="also require the package's signature to be this key's, over every file")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("sign", help="sign an existing package in place with a release key")
    s.add_argument("package", type=Path)
    s.add_argument("--key", type=Path, required=True, metavar="KEY.pem", help="elliptic-curve private key (PEM)")
    s.set_defaults(func=cmd_sign)

    pb = sub.add_parser("publish", help="push packages to an OCI registry, attestations attached as referrers")
    pb.add_argument("dist", type=Path, help="a package, or a folder of packages (its *.tar.gz)")
    pb.add_argument("reference", metavar="oci://REGISTRY/REPOSITORY[:TAG]",
                    help="each package goes to REPOSITORY/<name>:<version>-<target> (and :<TAG>-<target>)")
    pb.add_argument("--public-key", type=Path, metavar="PUB.pem",
                    help="publish only if every package is signed by this key's owner")
    _registry_options(pb)
    pb.set_defaults(func=cmd_publish)

    pl = sub.add_parser("pull", help="fetch a package from an OCI registry and verify it")
    pl.add_argument("reference", metavar="oci://REGISTRY/REPOSITORY:TAG")
    pl.add_argument("--out", default="dist", help="output folder (default: dist)")
    pl.add_argument("--public-key", type=Path, metavar="PUB.pem",
                    help="also require the package's signature to be this key's")
    pl.add_argument("--zip", action="store_true",
                    help="windows-x86_64: also write the package as a .zip (as the spec's zip: true does)")
    _registry_options(pl)
    pl.set_defaults(func=cmd_pull)
    return p


#: what a second signal during cleanup may leave behind, and how to remove it
LEFTOVERS = ("Build containers (label org.modelpack) or SSH workspaces may be left; `modelpack hosts clean`"
             " removes them, and the next build removes containers whose controller is gone.")


def interrupt_name(interrupt: KeyboardInterrupt) -> str:
    return f"cancelled by {interrupt.args[0]}" if isinstance(interrupt, Cancelled) else "interrupted"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.invocation = ["modelpack", *(sys.argv[1:] if argv is None else argv)]  # for the provenance
    try:
        with cancellable(LEFTOVERS):
            return args.func(args)
    except InputError as exc:
        print(f"modelpack: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as interrupt:
        return interrupt_exit_code(interrupt)
    except BrokenPipeError:
        # the reader went away (`modelpack matrix ... | head`): stop quietly. stdout now
        # points at /dev/null, or Python's flush at exit would print a traceback after all
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
