"""Engines behind one interface (see :mod:`inference.engines.base`).

:func:`inference.router.open_engine` picks one from ``settings.engine_url``: a
:class:`inference.router.ModelRouter` of local engines (``local://auto|onnx|onnx-int8|torch|openvino``,
one per product with an active registry version, swapped when that version changes), the same
router with a zero-shot fallback (``zero-shot://grnr|inp``), or the Triton client
(``triton-grpc://host:port`` / ``triton-http://host:port``). The pipeline gets it from
:func:`inference.pipeline.build_pipeline`.
"""
