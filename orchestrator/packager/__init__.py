"""The packager: runs ON the build host and turns a job file into a package.

It imports only the standard library, NumPy, ONNX, the engines and
``orchestrator.runtime``; nothing from the controller (no docker, paramiko, rich or
pydantic), because a build host has only Python and the engines installed.
"""
