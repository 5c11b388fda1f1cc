"""The host side of ``modelpack hosts bootstrap``: build a venv from pushed wheels.

Shipped with the SSH transport's host-side program (``transports/hostside.py``) only
when bootstrapping, and run in its namespace: each public function is an operation
there, and the import below is for reading and type-checking this file (the sender
drops it). Standard library only, Python 3.8 or later.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ..transports.hostside import ENV_MARKER, Refused, _inside, _path_file, _python, _remove, _workdir


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
        wheels = sorted(os.path.join(params["wheels"], w) for w in os.listdir(params["wheels"]))
        try:
            steps, installed = _environment_steps(building, wheels)
            for argv in steps:
                proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise Refused("%s failed: %s" % (" ".join(os.path.basename(a) for a in argv[:3]),
                                                     proc.stdout.decode("utf-8", "replace").strip()[-800:]))
        except BaseException:
            if os.path.isdir(building):
                _remove(building)
            raise
        with open(os.path.join(building, "wheels.sha256"), "w") as out:  # for every package's BOM
            for wheel in installed:
                with open(wheel, "rb") as data:
                    out.write("%s  %s\n" % (hashlib.sha256(data.read()).hexdigest(), os.path.basename(wheel)))
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


def _environment_steps(building, wheels):
    """The commands that make an environment at ``building`` with ``wheels`` installed,
    and the wheels they install.

    Usually a venv and its pip. Windows' embeddable distribution has neither venv nor
    ensurepip, and its ``._pth`` file fixes sys.path, ignoring PYTHONPATH and the working
    directory that the packager and its worker processes rely on. The distribution (a
    dozen files, relocatable) is copied instead, without its ``._pth``: the copy then
    finds its standard library in ``pythonXY.zip`` beside it and ``Lib\\site-packages``
    through ``site``, like any installed Python. pip, run from its own wheel (the
    controller sends one for such a host), installs the rest there with ``--target``
    (pip on Windows will not install itself unless run as ``-m pip``, and builds never
    run pip)."""
    install = ["install", "--no-index", "--no-cache-dir", "--no-deps", "--disable-pip-version-check", "--quiet"]
    path_file = _path_file()
    if path_file is None:
        return [[sys.executable, "-m", "venv", building], [_python(building), "-m", "pip"] + install + wheels], wheels
    pip = [w for w in wheels if os.path.basename(w).lower().startswith("pip-")]
    if not pip:
        raise Refused("this Python is an embeddable distribution (%s) and no pip wheel was sent" % path_file)
    source = os.path.dirname(path_file)
    os.makedirs(building)
    for name in os.listdir(source):
        if os.path.isfile(os.path.join(source, name)) and not name.endswith("._pth"):
            shutil.copy2(os.path.join(source, name), os.path.join(building, name))
    site_packages = os.path.join(building, "Lib", "site-packages")
    os.makedirs(site_packages)
    rest = [w for w in wheels if w not in pip]
    return [[_python(building), os.path.join(pip[0], "pip")] + install + ["--target", site_packages] + rest], rest

