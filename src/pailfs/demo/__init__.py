"""`pailfs demo`: the read-write separation pattern, end to end, on MNIST-format digits.

data.py builds and reads the data set (MNIST IDX `.gz`), model.py is the numpy
classifier, runner.py runs the two training jobs and report.py shows the result.
"""
