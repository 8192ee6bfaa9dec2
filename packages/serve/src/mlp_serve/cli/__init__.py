"""The ``mlp`` commands mlp-serve contributes (entry points ``mlp.commands``): ``serve``,
``export`` and ``predict``.

``mlp --help`` imports every command module, so each stays light: onnxruntime, FastAPI, gRPC,
torch and onnx are imported only when its command runs.
"""
