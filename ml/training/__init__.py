"""Everything that makes a model: data, augmentation, fitting, calibration, evaluation.

A worker never imports this package: the runtime it needs (decode, preprocess, model,
explain, inference, render, weights) lives one level up in ``ml``.
"""
