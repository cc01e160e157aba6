"""Packages of the distribution; everything else is in pyproject.toml.

The wheel carries the micro-benchmarks as ``valfusion.benchmarks``, built from the top-level
``benchmarks/`` folder: ``valfusion bench`` and ``python -m valfusion.benchmarks`` work after
``pip install``, and ``python -m benchmarks`` runs the same modules in a checkout (they
import each other relatively). ``packages.find`` in pyproject.toml cannot add a package that
lives outside the package's folder, hence this file. ``benchmarks/results/`` has no
``__init__.py`` and is not package data, so it stays out of the wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["valfusion", "valfusion.*"]), "valfusion.benchmarks"],
    package_dir={"valfusion.benchmarks": "benchmarks"},
)
