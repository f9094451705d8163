"""The model on onnxruntime: bundle, inference sessions, per-slot state. May import: model, cross-cutting."""
