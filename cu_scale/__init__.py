"""cu-scale: temporal sentence grounding from partial labels with Contrast-Unity, on Ray."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from cu_scale import Grounder`: the Python API (`cu_scale.ops.predict.Grounder`), imported when asked
    for, so that `import cu_scale` stays light."""
    if name == "Grounder":
        from cu_scale.ops.predict import Grounder

        return Grounder
    raise AttributeError(f"module 'cu_scale' has no attribute {name!r}")
