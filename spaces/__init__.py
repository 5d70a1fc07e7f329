"""Search spaces: YAML files (`default`, `smoke`) and the loader that turns one into a typed spec.

    from spaces import load_space
    spec = load_space("smoke")            # or a path: load_space("my/space.yaml")
    spec.train_config({"num_virtual_tokens": 8, "init": "random", "learning_rate": 0.03})

Spaces describe values only; `search/` converts them into Ray Tune / Optuna objects. Nothing
here imports ray, optuna or torch, so a bad space fails fast, before `ray.init()`.
"""

from spaces.distribution import DistKind, Distribution
from spaces.loader import SHIPPED_SPACES, load_space, parse_space
from spaces.spec import Budget, Resources, SpaceSpec

__all__ = [
    "SHIPPED_SPACES",
    "Budget",
    "DistKind",
    "Distribution",
    "Resources",
    "SpaceSpec",
    "load_space",
    "parse_space",
]
