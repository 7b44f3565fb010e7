"""Package list for setuptools: root/, core/ and plugins/ are installed as runink, runink.core and runink.plugins.

The static metadata is in pyproject.toml; this file only walks the three folders so a
new plugin sub-package needs no edit here.
"""

from setuptools import find_packages, setup


def packages_under(folder: str, import_name: str) -> list[str]:
    return [import_name] + [f"{import_name}.{pkg}" for pkg in find_packages(folder)]


setup(
    packages=[
        *packages_under("root", "runink"),
        *packages_under("core", "runink.core"),
        *packages_under("plugins", "runink.plugins"),
    ],
    package_data={"runink": ["py.typed"]},
)
