"""Breast-ultrasound analysis: decoding, the network, explanations; training in ``ml.training``.

The modules here are the runtime a worker loads (decode, preprocess, backbone, model,
explain, ood, inference, render, weights_io); ``ml.training`` makes and evaluates models and
is never imported by a worker. Importing this package is cheap: TensorFlow is imported only
by the modules that need it, never by ``ml.decode``.
"""
