"""Execution engines for stages that scale past one process.

The local engine lives beside each stage (threads feeding one model); the modules
here are optional and imported only when asked for:

* :mod:`latentscope.engines.ray_engine` runs ``encode`` (and ``score``) on a Ray
  cluster with Ray Data (``pip install latentscope[ray]``).
"""
