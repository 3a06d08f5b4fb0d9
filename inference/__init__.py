"""inference: the INP-Former network, engines (ONNX Runtime, PyTorch, Triton, zero-shot), consumers."""
