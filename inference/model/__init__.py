"""INP-Former model: frozen backbones, the trainable head, and the anomaly-map math."""

from inference.model.inp_former import InpConfig, InpFormer

__all__ = ["InpConfig", "InpFormer"]
