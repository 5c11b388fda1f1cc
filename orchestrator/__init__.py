"""modelpack: one ONNX model in, one verified package per target platform out.

This module must stay import-free: the packager and the runtime are shipped to build
hosts and devices that have only Python and the engines, and importing
``orchestrator.packager`` executes this file first.
"""

__version__ = "0.1.0"
