"""The host side of ``modelpack hosts bootstrap``: build a venv from pushed wheels.

Shipped with the SSH transport's host-side program (``transports/hostside.py``) only
when bootstrapping, and run in its namespace: each public function is an operation
there, and the import below is for reading and type-checking this file (the sender
drops it). Standard library only, Python 3.8 or later.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from ..transports.hostside import ENV_MARKER, Refused, _inside, _python, _remove, _workdir


def make_env(params, stdin):
    """Create the environment ``hash`` from wheels already placed in ``wheels`` (a
    workspace folder), unless it exists; then make it the current one. The one it
    replaces is kept (a build may still be running in it); older ones are removed."""
    envs = os.path.join(_workdir(params), "envs")
    os.makedirs(envs, exist_ok=True)
    env_hash = params["hash"]
    target = _inside(envs, env_hash)
    reused = os.path.isfile(os.path.join(target, ENV_MARKER))
    if not reused:
        if os.path.isdir(target):
            _remove(target)
        building = tempfile.mkdtemp(prefix=env_hash[:16] + ".", suffix=".building", dir=envs)
        os.rmdir(building)
        for argv in ([sys.executable, "-m", "venv", building],
                     [_python(building), "-m", "pip", "install", "--no-index", "--no-cache-dir", "--no-deps",
                      "--disable-pip-version-check", "--quiet"]
                     + sorted(os.path.join(params["wheels"], w) for w in os.listdir(params["wheels"]))):
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                if os.path.isdir(building):
                    _remove(building)
                raise Refused("%s failed: %s" % (os.path.basename(argv[0]) + " " + argv[2],
                                                 proc.stdout.decode("utf-8", "replace").strip()[-800:]))
        with open(os.path.join(building, "wheels.sha256"), "w") as out:  # for every package's BOM
            for wheel in sorted(os.listdir(params["wheels"])):
                with open(os.path.join(params["wheels"], wheel), "rb") as data:
                    out.write("%s  %s\n" % (hashlib.sha256(data.read()).hexdigest(), wheel))
        with open(os.path.join(building, ENV_MARKER), "w") as out:
            json.dump({"hash": env_hash, "created": time.time()}, out)
        # built under a temporary name and renamed: a half-made environment is never
        # current (pip's entry-point scripts keep the old path; only the interpreter is used)
        os.replace(building, target)
    current = os.path.join(envs, "current")
    previous = None
    if os.path.isfile(current):
        with open(current) as data:
            previous = data.read().strip()
    with open(current + ".tmp", "w") as out:
        out.write(env_hash)
    os.replace(current + ".tmp", current)
    kept = {env_hash, previous}
    for name in os.listdir(envs):
        if name not in kept and name != "current" and os.path.isfile(os.path.join(envs, name, ENV_MARKER)):
            _remove(os.path.join(envs, name))
    return {"reused": reused, "python": _python(target).replace("\\", "/")}

