"""Exported ONNX graphs under onnxruntime, with its graph optimisations on."""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import MaeconvError
from ..runners import Runner
from ..tasks import read_metadata


def session_options(threads: int = 0, level: str = "all", spinning: bool = True):
    """ORT_ENABLE_ALL fuses LayerNorm, erf-GELU, MatMul + bias and folds constants at load.
    Without `spinning` idle pool threads sleep at once instead of busy-waiting for the next call:
    slightly slower alone, much fairer beside other work on the same cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.intra_op_num_threads = threads  # 0: one per core
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRunner(Runner):
    def __init__(self, info, session, name: str):
        super().__init__(info, name)
        self.session = session

    @classmethod
    def open(cls, path: str | os.PathLike, threads: int = 0, level: str = "all",
             spinning: bool = True) -> "OnnxRunner":
        import onnxruntime as ort

        path = Path(path)
        try:
            session = ort.InferenceSession(str(path), session_options(threads, level, spinning),
                                           providers=["CPUExecutionProvider"])
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MaeconvError(f"{path}: not a readable ONNX model ({first})") from None
        meta = session.get_modelmeta().custom_metadata_map
        info = read_metadata(meta, str(path))
        precision = meta.get("maeconv.precision", "fp32")
        return cls(info, session, f"onnxruntime {precision}")

    def __call__(self, inputs):
        feed = dict(zip(self.info.task.inputs, self._ordered(inputs)))
        return self._named(self.session.run(list(self.info.task.outputs), feed))
