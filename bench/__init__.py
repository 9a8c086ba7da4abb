"""flowstate's benchmark suite: ``python -m bench [--quick]`` (see bench/suite.py).

Not part of the installed library: it lives in the repository and imports flowstate like
any user would.
"""
