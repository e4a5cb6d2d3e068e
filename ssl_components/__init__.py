"""The ML library of the pipeline: data, augmentation, backbones, methods, training, evaluation.

Free of Prefect and MLflow on purpose, so each piece can be used and tested on its own.
"""
