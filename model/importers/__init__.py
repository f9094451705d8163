"""Importers: ONNX and PyTorch recurrent models into this project's model directories. May import: export and below."""
