"""Checkpoint conversion between naming schemes and formats.

The package is callable as the conversion itself, so that `maeconv.convert(src, dst)` works
while `maeconv.convert.pipeline` and the rest stay importable under the same name: the front door
promises a `convert` function, and this folder already holds that name.
"""
import sys
import types


class _ConvertPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """convert(src, dst=None, fmt=None, options=Options(), ...): see pipeline.convert."""
        from .pipeline import convert

        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _ConvertPackage
