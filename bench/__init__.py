"""ahi_torch's benchmark suite: ``python -m bench [--quick] [--smoke]`` (see ``bench/__main__.py``)."""
