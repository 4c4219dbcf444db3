"""One reader/writer pair per file format; tensors travel as lazy TensorRefs."""
