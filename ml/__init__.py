"""Breast-ultrasound analysis: decoding, the network, explanations, training and evaluation.

Importing this package is cheap: TensorFlow is imported only by the modules that need it
(``ml.backbone``, ``ml.model``, ``ml.inference``, ``ml.train``...), never by ``ml.decode``.
"""
