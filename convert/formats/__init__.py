"""One reader/writer pair per file format; tensors travel as lazy TensorRefs. torchpickle is the
restricted unpickler both torch readers (zip and legacy, the latter read-only) share; identify names
the files that are no checkpoint at all."""
