"""seqpred's model: NumPy recurrent networks with exact BPTT, their training, experiments and ONNX export.

Floors, top to bottom (``tests/test_layering.py`` enforces them; a package imports only floors below its own):
``cli`` -> ``export``, ``experiments`` -> ``train`` -> ``network`` -> ``layer``, ``config`` -> ``layer_depth`` ->
``layout``, ``cells`` -> ``data``, ``nonlin`` -> ``errors``. Nothing in ``model`` imports ``service``.
"""
