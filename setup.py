# The package is declared in pyproject.toml; this shim keeps `python setup.py ...` and older tools working.
from setuptools import setup

setup()
