"""kloop: a Kubernetes operator that runs agent loops (maker, checkers, memory, budgets)."""

__version__ = "0.1.0"
