"""One module per Caffe layer type (file name = snake_case of the type string).

Modules here are imported automatically by :func:`minicaffe.registry.discover`.
"""
