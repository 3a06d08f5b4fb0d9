"""Engines behind one interface (see :mod:`inference.engines.base`).

``open_engine(settings)`` picks the implementation from ``settings.engine_url``:
  * ``local://auto`` (ONNX Runtime on CPU when available, else PyTorch), ``local://onnx``, ``local://torch``
  * ``triton-grpc://host:port`` / ``triton-http://host:port``
Local engines serve every product that has an active version in the model registry and reload
when a product's active version changes (hot swap).
"""
