"""Methods: one file per method or part, each registering itself by name."""

from ckl.methods.base import ApplyStats, Method, Part, StageContext, build_method, load_builtin

__all__ = ["ApplyStats", "Method", "Part", "StageContext", "build_method", "load_builtin"]
