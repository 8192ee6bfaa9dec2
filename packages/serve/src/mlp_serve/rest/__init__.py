"""The REST front end: the Open Inference Protocol (KServe v2 / Triton) over FastAPI.

- :mod:`.app`: the ASGI app, its routes, auth dependencies and error answers;
- :mod:`.codec`: JSON and binary tensors to and from the protocol-neutral types;
- :mod:`.middleware`: request ids, access logging, the body size limit;
- :mod:`.convenience`: the people-facing endpoints (JSON rows, image uploads).
"""
