"""Sample data for the demo, the benchmarks and the tests: synthetic DICOM series and the demo run.

>>> from ahi_torch.sample.synthetic import SeriesSpec, write_series
>>> from ahi_torch.sample.demo import run_demo
"""
