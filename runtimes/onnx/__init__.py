"""ONNX export of the PyTorch twin, and onnxruntime inference (graph optimisations, int8)."""
