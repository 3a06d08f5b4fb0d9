"""Zero-shot (training-free) anomaly maps for products that have no trained model yet.

* :mod:`inference.zero_shot.grnr` - global-regularised neighbourhood regression on one image;
* :mod:`inference.zero_shot.inp_distance` - distance to the INPs of a model trained on other products;
* :mod:`inference.zero_shot.threshold` - per-product rolling-quantile thresholds.

The engine wrapping them is :class:`inference.engines.zero_shot.ZeroShotEngine`.
"""
